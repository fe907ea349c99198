"""The served model: every forward pass of the app through one object, its lock, its calibration; checked on a real
timm model in a folder written by the folder package, alone and with mixed requests at once."""

import subprocess
import sys
import threading

import pytest
import torch
from PIL import Image

from conftest import CLASS_NAMES, colour_images
from support.runs import ROOT
from tl_space.app.explain import DISPLAY_SIZE
from tl_space.app.served import load_served_model, top_classes
from tl_space.errors import UserError
from tl_space.transforms import images_to_model_input


@pytest.fixture(scope="module")
def served(quick_folder):
    return load_served_model(str(quick_folder))


@pytest.fixture(scope="module")
def images():
    return colour_images(2, 16, seed=12)[0]


def test_probabilities_are_the_models_logits_calibrated(served, images):
    with torch.inference_mode():
        logits = served.model(images_to_model_input(images, served.preprocessing))
    expected = (logits / served.temperature).softmax(dim=1)
    assert torch.allclose(served.probabilities(images), expected, atol=1e-6)
    one = served.class_probabilities(images[0])
    assert list(one) == CLASS_NAMES and sum(one.values()) == pytest.approx(1.0)
    assert top_classes(one, 2) == sorted(one, key=one.get, reverse=True)[:2]


def test_flip_test_time_augmentation_averages_the_mirror_images_logits(served, images):
    mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images]
    with torch.inference_mode():
        logits = (served.model(images_to_model_input(images, served.preprocessing))
                  + served.model(images_to_model_input(mirrored, served.preprocessing))) / 2
    served.metrics["flip_tta"] = {"enabled": True}
    try:
        assert torch.allclose(served.probabilities(images), (logits / served.temperature).softmax(dim=1), atol=1e-5)
    finally:
        served.metrics["flip_tta"] = None


def test_heatmaps_are_shown_large_and_only_for_the_models_classes(served, images):
    overlays = served.heatmaps(images[0], CLASS_NAMES[:2])
    assert [overlay.size for overlay in overlays] == [(DISPLAY_SIZE, DISPLAY_SIZE)] * 2
    with pytest.raises(UserError, match="Pick one of the model's classes, not 'dog'"):
        served.heatmaps(images[0], ["dog"])


def test_a_head_worn_for_a_while_is_taken_off_even_after_an_error(served, images):
    own_head = served.model.get_classifier()
    features = served.features(images)
    weight, bias = torch.randn(2, features.shape[1]), torch.zeros(2)
    with served.with_head(weight, bias, ["x", "y"]) as view:
        assert view.label_names == ["x", "y"] and len(view.heatmaps(images[0], ["y"])) == 1
        assert served.model.get_classifier() is not own_head
    assert served.model.get_classifier() is own_head
    with pytest.raises(RuntimeError):
        with served.with_head(weight, bias, ["x", "y"]):
            raise RuntimeError("a request failed half-way")
    assert served.model.get_classifier() is own_head and served.label_names == CLASS_NAMES
    copy = served.copy_with_head(weight, bias)
    assert copy.get_classifier().out_features == 2 and served.model.get_classifier() is own_head


def test_mixed_requests_at_once_answer_as_each_does_alone(served, images):
    features = served.features(images)
    weight, bias = torch.randn(3, features.shape[1]), torch.zeros(3)

    def taught_heatmap():
        with served.with_head(weight, bias, ["p", "q", "r"]) as view:
            return view.heatmaps(images[1], ["q"])[0]
    calls = {"probabilities": lambda: served.probabilities(images), "features": lambda: served.features(images),
             "heatmap": lambda: served.heatmaps(images[0], [CLASS_NAMES[0]])[0], "taught heatmap": taught_heatmap}
    alone = {name: call() for name, call in calls.items()}
    answers, failures = [], []

    def worker(name):
        try:
            answers.append((name, calls[name]()))
        except Exception as error:  # noqa: BLE001 - collected, then asserted
            failures.append(error)
    threads = [threading.Thread(target=worker, args=(name,)) for name in list(calls) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(answers) == 16
    for name, answer in answers:
        if isinstance(answer, torch.Tensor):
            assert torch.allclose(answer, alone[name], atol=1e-5), name
        else:  # an image: the same pixels
            assert answer.tobytes() == alone[name].tobytes(), name


def test_the_page_lays_out_every_tab_and_names_its_endpoints(served):
    from tl_space.app.ui import build_demo

    config = build_demo(served).config
    endpoints = {dependency.get("api_name") for dependency in config["dependencies"]}
    assert {"classify", "explain", "feature_maps", "filter_mistakes", "teach", "classify_taught",
            "classify_many"} <= endpoints
    labels = {component.get("props", {}).get("label") for component in config["components"]}
    assert {"Top 5", "Misclassified test images", "Try the taught model"} <= labels


def test_the_server_does_not_import_the_dataset_or_training_code():
    code = ("import sys; import tl_space.app.ui, tl_space.app.compare, tl_space.app.served; "
            "print(sorted(name for name in ('datasets', 'tl_space.data', 'tl_space.training.run') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_compared_runs_disagree_where_one_is_right_and_another_wrong(quick_folder, tmp_path):
    import json
    import shutil

    from safetensors.torch import save_file

    from tl_space.app.compare import SAMPLE_FILE, disagreements, load_comparison
    from tl_space.images import image_tensor

    folder = tmp_path / "compare"
    shutil.copytree(quick_folder, folder / "a")
    shutil.copytree(quick_folder, folder / "b")
    other = load_served_model(str(folder / "b"))
    weights = {name: tensor.clone() for name, tensor in other.model.state_dict().items()}
    weights["fc.bias"] += torch.linspace(-3, 3, len(CLASS_NAMES))  # b leans towards the last classes
    save_file(weights, str(folder / "b" / "model.safetensors"))
    images, labels = colour_images(3, 16, seed=13)
    save_file({"images": torch.cat([image_tensor(image, 16) for image in images]), "labels": torch.tensor(labels)},
              str(folder / SAMPLE_FILE), metadata={"class_names": json.dumps(CLASS_NAMES)})
    comparison = load_comparison(str(folder))
    assert comparison.names == ["a", "b"] and len(comparison.sample.labels) == 18
    predicted = [run.predicted_classes(comparison.sample.images) for run in comparison.runs]
    right = [prediction == comparison.sample.labels for prediction in predicted]
    expected = int((right[0] ^ right[1]).sum())
    items = disagreements(comparison)
    assert len(items) == expected > 0
    assert all(caption.count("✓") == 1 and caption.count("✗") == 1 for _, caption in items)


def test_a_bundle_copies_the_runs_in_fp16_where_harmless_with_a_stratified_sample(quick_folder, tiny_dataset, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from tl_space.app.bundle import bundle
    from tl_space.app.compare import load_comparison
    from tl_space.errors import UserError

    runs = tmp_path / "runs"
    for name in ("one", "two"):
        shutil.copytree(quick_folder, runs / name)
    (runs / "one" / "checkpoint").mkdir()  # resume state: not served, not bundled
    bundle([runs / "one", runs / "two"], str(tiny_dataset), tmp_path / "compare", count=12)
    comparison = load_comparison(str(tmp_path / "compare"))
    assert comparison.names == ["one", "two"] and torch.bincount(comparison.sample.labels).tolist() == [2] * 6
    assert not (tmp_path / "compare" / "one" / "checkpoint").exists()
    weights = load_file(str(tmp_path / "compare" / "one" / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} <= {torch.float16, torch.float32}
    with pytest.raises(UserError, match="exists"):
        bundle([runs / "one", runs / "two"], str(tiny_dataset), tmp_path / "compare", count=12)
