"""Temperature scaling, expected calibration error and the reliability diagram, on made-up and real logits."""

import json

import pytest
import timm
import torch
from PIL import Image

from conftest import make_dataset_folder
from support.runs import tiny_settings
from tl_space import data
from tl_space.training.calibration import expected_calibration_error, fit_temperature, reliability_bins
from tl_space.app.served import load_served_model
from tl_space.images import image_tensor
from tl_space.training.run import run
from tl_space.transforms import to_model_input


def test_ece_by_hand():
    # Two bins used: 0.9 confident (2 images, 1 right) and 0.6 confident (2 images, both right).
    probabilities = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert [entry["count"] for entry in reliability_bins(probabilities, labels, bins=10)] == [2, 2]


def test_fitted_temperature_undoes_overconfidence():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 10, generator=generator) * 2
    labels = torch.multinomial(true_logits.softmax(dim=1), 1, generator=generator).flatten()
    temperature = fit_temperature(true_logits * 3, labels)  # a model three times too sure of itself
    assert temperature == pytest.approx(3, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1, rel=0.1)


@pytest.fixture(scope="module")
def overconfident(pretrained_file, tmp_path_factory):
    """A tiny model fine-tuned long and hard on few images: sure of itself beyond its accuracy."""
    dataset = make_dataset_folder(tmp_path_factory.mktemp("calibration-data"), train_per_class=20, test_per_class=60)
    folder = tmp_path_factory.mktemp("calibration") / "model"
    run(tiny_settings(dataset, folder, pretrained_file, strategy="finetune", epochs=12, lr=3e-3, val_size=60))
    return dataset, folder


@pytest.mark.slow
def test_temperature_from_one_half_of_the_test_fixture_lowers_ece_on_the_other(overconfident):
    dataset, folder = overconfident
    loaded = load_served_model(str(folder))
    dataset_dict, image_column, label_column, _ = data.open_dataset(str(dataset))
    test = data.decode_images(dataset_dict["test"], image_column, label_column, 32)
    with torch.inference_mode():
        logits = loaded.model(to_model_input(test.images, loaded.preprocessing))
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    fit, held_out = order[: len(order) // 2], order[len(order) // 2:]
    temperature = fit_temperature(logits[fit], test.labels[fit])
    before = expected_calibration_error(logits[held_out].softmax(dim=1), test.labels[held_out])
    after = expected_calibration_error((logits[held_out] / temperature).softmax(dim=1), test.labels[held_out])
    assert after < before, (temperature, before, after)
    assert torch.equal(logits.argmax(dim=1), (logits / temperature).argmax(dim=1))  # accuracy unchanged


@pytest.mark.slow
def test_the_model_folder_records_calibration_and_the_app_uses_it(overconfident, tmp_path):
    _, folder = overconfident
    metrics = json.loads((folder / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["temperature"] > 0 and calibration["fitted_on"] == "validation split"
    assert calibration["test_ece_after"] <= calibration["test_ece_before"] + 0.02
    assert sum(entry["count"] for entry in calibration["reliability_after"]) == metrics["test"]["num_images"]
    with Image.open(folder / "reliability.png") as diagram:
        assert diagram.width > 600
    assert f"{calibration['temperature']:.3f}" in (folder / "README.md").read_text()

    loaded = load_served_model(str(folder))
    assert loaded.temperature == calibration["temperature"]
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    with torch.inference_mode():
        logits = loaded.model(to_model_input(image_tensor(image, 32), loaded.preprocessing))[0]
    expected = (logits / loaded.temperature).softmax(dim=0)
    assert list(loaded.class_probabilities(image).values()) == pytest.approx(expected.tolist(), abs=1e-6)

    # Where the folder enables flip test-time augmentation, the app averages the logits with the mirror image's.
    loaded.metrics = {**loaded.metrics, "flip_tta": {**metrics["flip_tta"], "enabled": True}}
    with torch.inference_mode():
        both = loaded.model(to_model_input(torch.cat([image_tensor(image, 32), image_tensor(image, 32).flip(-1)]),
                                           loaded.preprocessing))
    expected = (both.mean(dim=0) / loaded.temperature).softmax(dim=0)
    assert list(loaded.class_probabilities(image).values()) == pytest.approx(expected.tolist(), abs=1e-6)

    # A folder written before calibration existed loads, with probabilities left as they were.
    del metrics["calibration"]
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "config.json"):
        (old / name).write_bytes((folder / name).read_bytes())
    (old / "metrics.json").write_text(json.dumps(metrics))
    assert load_served_model(str(old)).temperature == 1.0 and not load_served_model(str(old)).flip_tta
    assert isinstance(timm.create_model(f"local-dir:{old}", pretrained=True), torch.nn.Module)


def test_cross_fitted_calibration_scores_each_fold_with_a_temperature_fitted_without_it():
    from tl_space.training.calibration import cross_fitted_report, fit_temperature

    torch.manual_seed(0)
    labels = torch.arange(6).repeat(10)
    logits = torch.randn(60, 6) * 4 + torch.nn.functional.one_hot(labels, 6) * 3
    fold_of = torch.arange(60) % 5
    report = cross_fitted_report(logits, labels, fold_of)
    assert report["temperature"] == pytest.approx(fit_temperature(logits, labels))
    scaled = torch.empty_like(logits)
    for fold in range(5):
        held = fold_of == fold
        scaled[held] = logits[held] / fit_temperature(logits[~held], labels[~held])
    assert report["test_nll_after"] == pytest.approx(float(torch.nn.functional.cross_entropy(scaled, labels)), abs=1e-5)
    few = cross_fitted_report(logits[:12], labels[:12], fold_of[:12])
    assert few["temperature"] == 1.0 and "fewer than" in few["skipped"]
