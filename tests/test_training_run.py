"""train.py end to end on a tiny real dataset and timm's test_resnet: the model folder is the contract."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from PIL import Image

from support.runs import ROOT, tiny_settings, train_cli
from conftest import CLASS_NAMES, TINY_MODEL, add_validation_split, make_dataset_folder, make_image_folder
from tl_space import data
from tl_space.markdown import text
from tl_space.strategies import NAMES, STRATEGIES as STRATEGY_TABLE

STRATEGIES = [name for name in NAMES if STRATEGY_TABLE[name].trains_at_all]  # the five that train
from tl_space.training.evaluation import classification_metrics
from tl_space.app.served import load_served_model
from tl_space.settings import TrainSettings
from tl_space.errors import UserError
from tl_space.training.run import run
from tl_space.transforms import preprocessing_for, to_model_input

pytestmark = pytest.mark.slow  # end to end: train.py's code, or the app on a port

@pytest.fixture(scope="module", params=STRATEGIES)
def trained(request, tiny_dataset, pretrained_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / request.param
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy=request.param))
    return folder


def test_model_folder_holds_every_file(trained):
    names = {path.name for path in trained.iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json", "misclassified.json", "misclassified",
            "curves.png", "confusion_matrix.png", "README.md"} <= names
    for plot in ("curves.png", "confusion_matrix.png"):
        with Image.open(trained / plot) as image:
            assert image.width > 300 and image.height > 200
    assert not list(trained.parent.glob(".*partial"))  # the staging folder was swapped in


def test_metrics_are_complete_and_consistent(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    strategy = metrics["settings"]["strategy"]
    expected_epochs = 4 if strategy == "lp-ft" else 2
    assert [entry["epoch"] for entry in metrics["history"]] == list(range(1, expected_epochs + 1))
    for entry in metrics["history"]:
        assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"} <= set(entry)
        assert 0 <= entry["train_accuracy"] <= 1 and 0 <= entry["val_accuracy"] <= 1
    test = metrics["test"]
    matrix = torch.tensor(test["confusion_matrix"])
    test_size = 12 * len(CLASS_NAMES)
    assert matrix.sum() == test["num_images"] == test_size
    assert matrix.diagonal().sum().item() / test_size == pytest.approx(test["accuracy"])
    assert set(test["per_class_accuracy"]) == set(CLASS_NAMES)
    assert metrics["settings"]["strategy"] == strategy and metrics["settings"]["epochs"] == 2
    timing = metrics["timing"]
    # The run's rate is its last stage's, over the images it trained on: lp-ft's probe fits on cached features
    # would swell it, and so would a budget-cut last epoch counted whole.
    last_stage = [entry for entry in metrics["history"] if entry["stage"] == metrics["history"][-1]["stage"]]
    assert all(entry["train_images"] > 0 for entry in metrics["history"])
    rates = [entry["train_images_per_second"] for entry in last_stage]
    assert min(rates) * 0.999 <= timing["train_images_per_second"] <= max(rates) * 1.001
    assert 0 < timing["data_seconds"] + timing["training_seconds"] + timing["evaluation_seconds"] < timing["total_seconds"]
    best_val = max(entry["val_accuracy"] for entry in metrics["history"])
    assert metrics["history"][test["best_epoch"] - 1]["val_accuracy"] == best_val
    # Which CPU: a run's speed (and bf16's gain) differs between machines of one name
    assert metrics["hardware"]["cpu"].endswith(tuple(f"bf16: {kind}" for kind in ("AMX", "AVX-512 BF16", "native",
                                                                                 "emulated")))


def test_an_lp_ft_card_names_each_stages_learning_rate(trained):
    if json.loads((trained / "metrics.json").read_text())["settings"]["strategy"] != "lp-ft":
        pytest.skip("one stage, one learning rate")
    assert "| learning rate | linear-probe: 0.001, finetune: 0.0001 |" in (trained / "README.md").read_text()


def test_trainable_parameters_follow_the_strategy(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    head = 96 * len(CLASS_NAMES) + len(CLASS_NAMES)
    total = metrics["total_parameters"]
    expected = {"linear-probe": head, "scratch": total, "finetune": total, "lp-ft": total}
    strategy = metrics["settings"]["strategy"]
    if strategy == "partial":
        assert head < metrics["trainable_parameters"] < total
    else:
        assert metrics["trainable_parameters"] == expected[strategy]


def test_batchnorm_statistics_stay_pretrained_unless_trained_from_scratch(trained, pretrained_file):
    from safetensors.torch import load_file
    strategy = json.loads((trained / "metrics.json").read_text())["settings"]["strategy"]
    saved, pretrained = load_file(str(trained / "model.safetensors")), load_file(str(pretrained_file))
    statistics = [key for key in pretrained if key.endswith(("running_mean", "running_var"))]
    assert statistics
    kept = [torch.equal(saved[key], pretrained[key]) for key in statistics]
    assert not any(kept) if strategy == "scratch" else all(kept)


def _test_images(dataset: Path) -> data.LabelledImages:
    dataset_dict, image_column, label_column, _ = data.open_dataset(str(dataset))
    return data.decode_images(dataset_dict["test"], image_column, label_column, size=32)


def test_local_dir_reload_predicts_what_training_measured(trained, tiny_dataset):
    model = timm.create_model(f"local-dir:{trained}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == CLASS_NAMES
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    assert preprocessing.image_size == 32
    test = _test_images(tiny_dataset)
    with torch.inference_mode():
        logits = model(to_model_input(test.images, preprocessing))
    recorded = json.loads((trained / "metrics.json").read_text())
    metrics = recorded["test"]
    reloaded = classification_metrics(logits, test.labels, CLASS_NAMES)
    assert reloaded["confusion_matrix"] == metrics["confusion_matrix"]
    assert reloaded["loss"] == pytest.approx(metrics["loss"], rel=1e-4)
    with torch.inference_mode():
        mirrored = model(to_model_input(test.images.flip(-1), preprocessing))
    flip_tta = recorded["flip_tta"]
    averaged_accuracy = float(((logits + mirrored) / 2).argmax(dim=1).eq(test.labels).double().mean())
    assert flip_tta["test_accuracy"] == pytest.approx(averaged_accuracy, abs=1e-6)
    assert flip_tta["gain"] == pytest.approx(averaged_accuracy - metrics["accuracy"], abs=1e-6)
    assert flip_tta["enabled"] == (flip_tta["gain"] >= flip_tta["min_gain"])
    # Mistakes carry the calibrated probabilities the app shows.
    probabilities = (logits / recorded["calibration"]["temperature"]).softmax(dim=1)
    for record in json.loads((trained / "misclassified.json").read_text()):
        assert (trained / record["file"]).is_file()
        assert CLASS_NAMES[int(test.labels[record["index"]])] == record["true_label"]
        assert probabilities[record["index"]].max().item() == pytest.approx(record["confidence"], abs=1e-4)


def test_few_shot_run_trains_on_the_asked_counts(tiny_dataset, pretrained_file, tmp_path):
    folder = tmp_path / "few"
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="linear-probe", shots_per_class=5, flip_tta="off"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["flip_tta"] is None and not load_served_model(str(folder)).flip_tta  # --flip-tta off: not measured
    assert metrics["data"]["train_images_per_class"] == {name: 5 for name in CLASS_NAMES}
    assert metrics["data"]["val_images"] == 30 and metrics["data"]["train_images"] == 5 * len(CLASS_NAMES)


def test_a_time_budget_stops_training_early_with_the_schedule_run_out(tiny_dataset, pretrained_file, tmp_path):
    folder = tmp_path / "budget"
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="finetune", epochs=10_000, max_train_minutes=0.05))
    history = json.loads((folder / "metrics.json").read_text())["history"]
    spent = sum(entry["seconds"] for entry in history)
    assert 1 <= len(history) < 10_000
    assert 3 <= spent <= 3 + 2 * max(entry["seconds"] for entry in history) + 1  # stops in the epoch that spends it


def test_rerun_with_same_settings_replaces_the_folder(tiny_dataset, pretrained_file, tmp_path):
    settings = tiny_settings(tiny_dataset, tmp_path / "again", pretrained_file, strategy="linear-probe", epochs=1)
    run(settings)
    (tmp_path / "again" / "stale.txt").write_text("old")
    run(settings)
    assert not (tmp_path / "again" / "stale.txt").exists()


def test_bad_options_stop_before_training_with_one_clear_sentence(tiny_dataset, pretrained_file, tmp_path):
    common = ["--model", TINY_MODEL, "--pretrained-file", str(pretrained_file), "--image-size", "32",
              "--cache-dir", str(tmp_path / "cache"),
              "--val-size", "30", "--epochs", "1"]
    previous = tmp_path / "previous"
    run(tiny_settings(tiny_dataset, previous, pretrained_file, strategy="linear-probe", epochs=1))
    cases = [
        (["--dataset", str(tmp_path / "missing"), *common], "--dataset '"),
        (["--dataset", str(tiny_dataset), "--label-column", "fine_label", *common], "--label-column: 'fine_label'"),
        (["--dataset", str(tiny_dataset), *common, "--model", "resnet_nope"], "--model 'resnet_nope'"),
        (["--dataset", str(tiny_dataset), *common, "--shots-per-class", "500"], "--shots-per-class 500"),
        (["--dataset", str(tiny_dataset), *common, "--strategy", "linear-probe", "--lr", "0.5",
          "--output-dir", str(previous)], "lr: None -> 0.5"),
        (["--dataset", str(tiny_dataset), *common, "--train-fraction", "1.5"], "--train-fraction 1.5"),
        (["--dataset", str(tiny_dataset), *common, "--strategy", "linear-probe", "--mixup", "0.8"],
         "--mixup act on training with images; --strategy linear-probe trains only a head"),
        (["--dataset", str(tiny_dataset), *common, "--label-smoothing", "1"], "--label-smoothing 1.0 must be in [0, 1)"),
        (["--dataset", str(tiny_dataset), *common, "--strategy", "finetune", "--freeze-depthwise"],
         "--freeze-depthwise: ResNet has no depthwise convolutions"),
    ]
    for args, expected in cases:
        result = train_cli(*args, "--output-dir", str(tmp_path / "out")) if "--output-dir" not in args else train_cli(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and expected in error_lines[0], result.stderr[-2000:]
        assert not (tmp_path / "out").exists()
    unknown_strategy = train_cli("--strategy", "frozen")
    assert unknown_strategy.returncode == 2 and "invalid choice: 'frozen'" in unknown_strategy.stderr


def test_two_processes_give_the_same_test_metrics_as_one(tiny_dataset, pretrained_file, tmp_path):
    """Linear probe has no augmentation: 2 processes x 16 images per step must match 1 x 32, each image once."""
    common = ["--dataset", str(tiny_dataset), "--model", TINY_MODEL, "--pretrained-file", str(pretrained_file),
              "--strategy", "linear-probe", "--epochs", "4", "--lr", "0.05", "--image-size", "32", "--val-size", "30",
              "--max-train-samples", "96", "--mixed-precision", "no", "--cache-dir", "none"]
    single = train_cli(*common, "--batch-size", "32", "--output-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # `--multi_gpu` is accelerate's torchrun launcher; with no GPU the processes join a CPU (gloo) group.
    double = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             str(ROOT / "train.py"), *common, "--batch-size", "16", "--output-dir", str(tmp_path / "two")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["hardware"]["processes"] == 2
    assert two["test"]["num_images"] == one["test"]["num_images"] == 12 * len(CLASS_NAMES)
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    assert one["test"]["accuracy"] > 0.5  # it learned: a probe stuck on one class would make this test vacuous
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)
    for entry_one, entry_two in zip(one["history"], two["history"]):
        assert entry_two["val_accuracy"] == entry_one["val_accuracy"]
        assert entry_two["train_loss"] == pytest.approx(entry_one["train_loss"], rel=1e-4)


def test_the_model_folder_holds_no_path_of_the_training_machine(tiny_dataset, pretrained_file, tmp_path):
    output_dir = tmp_path / "absolute" / "run"
    run(tiny_settings(tiny_dataset.resolve(), output_dir.resolve(), pretrained_file.resolve(), epochs=1,
                      cache_dir=str(tmp_path / "cache"), dataset_id="someone/colours"))
    for file in output_dir.rglob("*"):
        if file.suffix in (".json", ".md"):
            text = file.read_text()
            assert str(tmp_path) not in text and "/tmp" not in text, file.name
    settings = json.loads((output_dir / "metrics.json").read_text())["settings"]
    assert (settings["dataset"], settings["pretrained_file"], settings["output_dir"], settings["cache_dir"]) == (
        "someone/colours", pretrained_file.name, "run", None)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.datasets == ["someone/colours"]
    assert card.data.eval_results[0].dataset_type == "someone/colours"


def test_a_dataset_in_the_hub_cache_is_named_by_its_hub_id(tiny_dataset, tmp_path):
    snapshot = tmp_path / "hub" / "datasets--uoft-cs--cifar10" / "snapshots" / "0123abc"
    shutil.copytree(tiny_dataset, snapshot)
    settings = TrainSettings(dataset=str(snapshot))
    assert settings.published()["dataset"] == "uoft-cs/cifar10"
    assert TrainSettings(dataset=str(tiny_dataset)).published()["dataset"] == tiny_dataset.name
    assert TrainSettings(dataset="uoft-cs/cifar10").published()["dataset"] == "uoft-cs/cifar10"


def test_class_means_trains_nothing_and_its_head_is_the_normalised_class_means(tiny_dataset, pretrained_file, tmp_path):
    folder = run(tiny_settings(tiny_dataset, tmp_path / "means", pretrained_file, strategy="class-means"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["history"] == [] and metrics["stopped_by"] == "no training" and metrics["test"]["best_epoch"] == 0
    assert metrics["test"]["accuracy"] > 2 / len(CLASS_NAMES)  # well above chance on the colours
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    pretrained = timm.create_model(TINY_MODEL, pretrained=True, num_classes=len(CLASS_NAMES),
                                   pretrained_cfg_overlay={"file": str(pretrained_file)}).eval()
    weights = model.get_classifier().weight.detach()
    cosines = torch.nn.functional.normalize(weights, dim=1) @ torch.nn.functional.normalize(weights, dim=1).T
    assert torch.allclose(cosines.diagonal(), torch.ones(len(CLASS_NAMES)), atol=1e-5)
    assert torch.equal(model.get_classifier().bias.detach(), torch.zeros(len(CLASS_NAMES)))
    for key, value in pretrained.state_dict().items():  # the backbone is the pretrained one, untouched
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key


def test_head_init_class_means_starts_the_probe_where_the_zero_head_ends_up(tiny_dataset, pretrained_file, tmp_path):
    first_epoch = {}
    for head_init in ("zero", "class-means"):
        folder = run(tiny_settings(tiny_dataset, tmp_path / head_init, pretrained_file, strategy="linear-probe",
                                   epochs=1, lr=1e-6, head_init=head_init))
        first_epoch[head_init] = json.loads((folder / "metrics.json").read_text())["history"][0]["val_accuracy"]
    # With a learning rate too small to move the head, the zero head stays at chance; the imprinted one classifies.
    assert first_epoch["zero"] <= 1.5 / len(CLASS_NAMES) < 0.6 <= first_epoch["class-means"]


def test_patience_stops_a_stage_that_no_longer_improves(tiny_dataset, pretrained_file, tmp_path):
    folder = run(tiny_settings(tiny_dataset, tmp_path / "patient", pretrained_file, strategy="linear-probe",
                               epochs=30, lr=1e-7, patience=2))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["stopped_by"] == "patience" and len(metrics["history"]) < 30
    best = metrics["test"]["best_epoch"]
    assert len(metrics["history"]) == best + 2  # two epochs without a better validation accuracy, then the stop


def test_patience_counts_within_a_stage_so_a_plateaued_probe_leaves_fine_tuning_its_epochs(tiny_dataset,
                                                                                          pretrained_file, tmp_path):
    folder = run(tiny_settings(tiny_dataset, tmp_path / "lp-ft", pretrained_file, strategy="lp-ft", probe_epochs=8,
                               epochs=5, lr=1e-9, patience=2))
    history = json.loads((folder / "metrics.json").read_text())["history"]
    probe = [entry for entry in history if entry["stage"] == "linear-probe"]
    best_probe_epoch = max(probe, key=lambda entry: entry["val_accuracy"])["epoch"]
    assert best_probe_epoch < len(probe)  # the probe plateaued before its last epoch...
    # ...and fine-tuning, too slow to improve, still ran its own two epochs before patience stopped it
    assert [entry["stage"] for entry in history[len(probe):]] == ["finetune", "finetune"]


def test_lbfgs_fits_the_probe_head_at_each_l2_strength_and_keeps_the_best_on_validation(tiny_dataset, pretrained_file,
                                                                                       tmp_path):
    from tl_space.training.loop import L2_GRID
    accuracy = {}
    for solver in ("adamw", "lbfgs"):
        folder = run(tiny_settings(tiny_dataset, tmp_path / solver, pretrained_file, strategy="linear-probe",
                                   epochs=10, lr=0.03, probe_solver=solver))
        metrics = json.loads((folder / "metrics.json").read_text())
        accuracy[solver] = metrics["test"]["accuracy"]
    history = metrics["history"]
    assert [entry["l2"] for entry in history] == list(L2_GRID) and metrics["settings"]["probe_solver"] == "lbfgs"
    best = max(history, key=lambda entry: entry["val_accuracy"])
    assert metrics["test"]["best_epoch"] == best["epoch"]
    assert accuracy["lbfgs"] > 2 / len(CLASS_NAMES) and accuracy["lbfgs"] >= accuracy["adamw"] - 0.1
    folder = run(tiny_settings(tiny_dataset, tmp_path / "lp-ft", pretrained_file, strategy="lp-ft", epochs=1,
                               probe_solver="lbfgs"))  # then fine-tuning goes on from the fitted head
    stages = [entry["stage"] for entry in json.loads((folder / "metrics.json").read_text())["history"]]
    assert stages == ["linear-probe"] * len(L2_GRID) + ["finetune"]


def test_unset_options_take_the_cpus_defaults_and_the_run_says_so(tiny_dataset, pretrained_file, tmp_path, capsys):
    folder = run(tiny_settings(tiny_dataset, tmp_path / "defaults", pretrained_file, strategy=None, batch_size=None,
                               epochs=1))
    assert "unset options take this CPU's defaults: --strategy finetune --batch-size 32" in capsys.readouterr().out
    settings = json.loads((folder / "metrics.json").read_text())["settings"]
    assert (settings["strategy"], settings["batch_size"], settings["max_train_minutes"]) == ("finetune", 32, None)


def test_class_means_needs_a_probe(tiny_dataset, pretrained_file, tmp_path):
    from tl_space.errors import UserError
    with pytest.raises(UserError, match="--head-init class-means needs the frozen features of a probe"):
        run(tiny_settings(tiny_dataset, tmp_path / "x", pretrained_file, strategy="finetune", head_init="class-means"))


def test_a_cpu_run_uses_every_core_whatever_accelerate_set_and_threads_overrides_it(tiny_dataset, pretrained_file,
                                                                                     tmp_path, monkeypatch, capsys):
    from tl_space.training.run import cpu_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what `accelerate launch` sets for a CPU run without a config
    torch.set_num_threads(1)
    previous = torch.get_num_threads()
    try:
        run(tiny_settings(tiny_dataset, tmp_path / "cores", pretrained_file, strategy="linear-probe", epochs=1))
        assert torch.get_num_threads() == cpu_threads(1) == len(os.sched_getaffinity(0))
        assert f"CPU: {cpu_threads(1)} thread(s) per process, 1 process(es); --threads changes it" in capsys.readouterr().out
        run(tiny_settings(tiny_dataset, tmp_path / "one", pretrained_file, strategy="linear-probe", epochs=1, threads=1))
        assert torch.get_num_threads() == 1
        assert cpu_threads(4) == max(1, len(os.sched_getaffinity(0)) // 4)
    finally:
        torch.set_num_threads(max(previous, cpu_threads(1)))


def test_the_run_estimates_its_whole_wall_time_before_any_long_work(tiny_dataset, pretrained_file, tmp_path, capsys,
                                                                     monkeypatch):
    decoded_after = []
    decode_splits = data.decode_splits

    def recording(*args, **kwargs):  # what the run had printed when the whole dataset's decoding began
        decoded_after.append(capsys.readouterr().out)
        return decode_splits(*args, **kwargs)
    monkeypatch.setattr(data, "decode_splits", recording)
    run(tiny_settings(tiny_dataset, tmp_path / "estimate", pretrained_file, strategy="lp-ft", epochs=1,
                      max_train_minutes=0.001))
    estimate = next(line for line in decoded_after[0].splitlines() if line.startswith("estimated wall time on this cpu"))
    for part in ("decoding: 312 images", "features: 312 images", "linear-probe: 2 epoch(s)", "finetune: 1 epoch(s)",
                 "final evaluation: 174 images"):  # 240 train + 72 test decoded; 30 validation + 2 x 72 test evaluated
        assert part in estimate, estimate
    assert "budget ends training sooner" in estimate


def test_a_vision_transformer_trains_at_another_size_and_the_app_serves_it(tiny_dataset, tmp_path):
    from safetensors.torch import save_file

    from tl_space.images import open_image

    weights = tmp_path / "test_vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(weights))
    folder = run(tiny_settings(tiny_dataset, tmp_path / "vit", weights, model="test_vit", strategy="finetune",
                               epochs=1, image_size=32))
    assert json.loads((folder / "metrics.json").read_text())["preprocessing"]["image_size"] == 32
    loaded = load_served_model(str(folder))
    image_path = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 10, 10)).save(image_path)
    assert set(loaded.class_probabilities(open_image(image_path))) == set(CLASS_NAMES)


def test_freeze_depthwise_keeps_the_pretrained_depthwise_weights_and_trains_the_rest(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    pretrained = timm.create_model("test_efficientnet")
    weights = tmp_path / "test_efficientnet.safetensors"
    save_file({name: value.contiguous() for name, value in pretrained.state_dict().items()}, str(weights))
    output_dir = tmp_path / "frozen-depthwise"
    run(tiny_settings(tiny_dataset, output_dir, weights, model="test_efficientnet", strategy="finetune",
                      freeze_depthwise=True, lr=1e-2))
    trained = load_file(str(output_dir / "model.safetensors"))
    depthwise = {name + ".weight" for name, module in pretrained.named_modules()
                 if isinstance(module, torch.nn.Conv2d) and module.groups == module.in_channels > 1}
    assert depthwise
    for name, value in pretrained.state_dict().items():
        if name in depthwise:
            torch.testing.assert_close(trained[name], value, rtol=0, atol=0)
        elif name.endswith(".weight") and "conv" in name:
            assert not torch.equal(trained[name], value), name
    metrics = json.loads((output_dir / "metrics.json").read_text())
    frozen = sum(pretrained.get_parameter(name).numel() for name in depthwise)
    assert metrics["trainable_parameters"] == metrics["total_parameters"] - frozen


def test_progressive_resizing_trains_small_images_first_and_validates_at_the_full_size(tiny_dataset, pretrained_file,
                                                                                       tmp_path, monkeypatch):
    from tl_space.training import batches
    sizes, augmented = [], []  # (a training batch, its size) per model input made

    real_crop = batches.random_crop_flip

    def cropping(images, generator=None):
        augmented.append(True)
        return real_crop(images, generator)

    def recording(images, preprocessing):
        sizes.append((bool(augmented and augmented.pop()), preprocessing.image_size))
        return to_model_input(images, preprocessing)
    monkeypatch.setattr(batches, "random_crop_flip", cropping)
    monkeypatch.setattr(batches, "to_model_input", recording)
    run(tiny_settings(tiny_dataset, tmp_path / "progressive", pretrained_file, image_size=64, progressive_resize=32,
                      epochs=4))
    trained = [size for training, size in sizes if training]
    assert len(trained) == 4 * 7  # 210 training images in batches of 32, 4 epochs
    assert trained[0] == 32 and trained[-1] == 64 and sorted(trained) == trained and 48 in trained
    assert {size for training, size in sizes if not training} == {64}  # the estimate, validation and test
    with pytest.raises(UserError, match="--progressive-resize 64 must be smaller than the image size it grows to, 64"):
        run(tiny_settings(tiny_dataset, tmp_path / "too-big", pretrained_file, image_size=64, progressive_resize=64))


def test_epoch_counters_count_each_stages_own_epochs(tiny_dataset, pretrained_file, tmp_path, capsys):
    run(tiny_settings(tiny_dataset, tmp_path / "counters", pretrained_file, strategy="lp-ft", epochs=1, probe_epochs=2))
    captured = capsys.readouterr()
    assert "finetune epoch 1/1" in captured.err and "finetune epoch 3/" not in captured.err
    assert "linear-probe epoch 2/2" in captured.err
    assert "epoch 3 (finetune 1/1)" in captured.out


def test_a_datasets_validation_split_is_validated_on_and_named_in_metrics_and_card(pretrained_file, tmp_path, capsys):
    dataset = add_validation_split(make_dataset_folder(tmp_path / "with-val", train_per_class=10, test_per_class=4))
    folder = run(tiny_settings(dataset, tmp_path / "run", pretrained_file, val_size=None, epochs=1))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["data"]["train_images"] == 60 and metrics["data"]["val_images"] == 30  # nothing held out of train
    assert metrics["data"]["validation_source"] == "the dataset's 'validation' split (30 images)"
    assert "validation: the dataset's 'validation' split (30 images)" in capsys.readouterr().out
    card = (folder / "README.md").read_text()
    assert f"| validation images | {text(metrics['data']['validation_source'])} |" in card
    with pytest.raises(UserError, match=r"--val-size 30 holds images out of train, but the dataset has its own "
                                        r"'validation' split"):
        run(tiny_settings(dataset, tmp_path / "both", pretrained_file, epochs=1))


def test_a_folder_of_class_folders_trains_end_to_end_on_the_cpu_defaults(pretrained_file, tmp_path, capsys):
    """AutoTrain's layout, 24 images per class and no test folder; every option but the model left to the machine."""
    dataset = make_image_folder(tmp_path / "classes", per_class=24)
    folder = run(TrainSettings(dataset=str(dataset), model=TINY_MODEL, pretrained_file=str(pretrained_file),
                               image_size=32, output_dir=str(tmp_path / "run"), cache_dir="none"))
    metrics = json.loads((folder / "metrics.json").read_text())
    data_record = metrics["data"]
    # datasets' train_test_split rounds the test share up: 29 of 144; then 10% of the other 115 validate.
    assert data_record["test_images"] == 29 and data_record["carved_test_fraction"] == 0.2
    assert data_record["val_images"] == 11 and data_record["train_images"] == 104
    assert min(data_record["train_images_per_class"].values()) >= 16  # stratified: every class keeps its share
    assert data_record["test_source"].startswith("29 images, 20% of 'train' carved out (stratified, seed 42)")
    assert metrics["calibration"]["temperature"] == 1.0 and "11 validation images" in metrics["calibration"]["skipped"]
    assert metrics["settings"]["strategy"] == "finetune" and metrics["test"]["accuracy"] > 1 / 6
    card = (folder / "README.md").read_text()
    assert f"| test images | {text(data_record['test_source'])} |" in card
    assert f"| calibration | {text(metrics['calibration']['skipped'])} |" in card
    # Each setting under its own label.
    assert "| batch size | 32 |" in card and "| weight decay | 0.05 |" in card
    assert "| learning rate | finetune: 0.0001 |" in card


def test_tensorboard_logs_survive_the_final_folder_swap_with_one_scalar_per_epoch(tiny_dataset, pretrained_file,
                                                                                   tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run(tiny_settings(tiny_dataset, tmp_path / "tracked", pretrained_file, strategy="lp-ft", epochs=2,
                               report_to="tensorboard"))
    events = sorted((folder / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))
    # accelerate's TensorBoardTracker: logs/<run name>/, the hyperparameters in a subfolder of their own
    accumulator = EventAccumulator(str(folder / "logs" / "tracked")).Reload()
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert [event.step for event in accumulator.Scalars("val_accuracy")] == list(range(1, len(history) + 1))
    assert [round(event.value, 5) for event in accumulator.Scalars("val_accuracy")] == [
        round(entry["val_accuracy"], 5) for entry in history]
    assert len(accumulator.Scalars("test_accuracy")) == 1


def test_a_tracker_that_is_not_installed_stops_the_run_before_any_work(tiny_dataset, pretrained_file, tmp_path):
    from accelerate.tracking import get_available_trackers

    missing = next(name for name in ("wandb", "trackio", "aim", "swanlab")
                   if name not in {tracker.value for tracker in get_available_trackers()})
    with pytest.raises(UserError, match=rf"--report-to '{missing}' needs {missing}, which is not installed here; "
                                        rf"run `pip install {missing}`"):
        run(tiny_settings(tiny_dataset, tmp_path / "untracked", pretrained_file, report_to=missing))
    assert not (tmp_path / "untracked").exists()
    with pytest.raises(UserError, match=r"'tensorbored'\] not among accelerate's trackers"):
        run(tiny_settings(tiny_dataset, tmp_path / "untracked", pretrained_file, report_to="tensorbored"))
