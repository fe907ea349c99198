"""Study mode on tiny data: the table, the findings, the plots, resume, the Hub, and the Study tab of the real app."""

import dataclasses
import json
import shutil
import urllib.request
from collections import Counter

import huggingface_hub
import pytest
from gradio_client import Client, handle_file
from huggingface_hub.utils import filter_repo_objects

from conftest import CLASS_NAMES, colour_images, study_arguments
from support.hub import FakeHub, plain_hub_cache_copy
from support.runs import read_study
from tl_space import hub
from tl_space.folder.files import CHECKPOINT_DIR
from tl_space.app.served import load_served_model
from tl_space.study import run as study
from tl_space.training import checkpoint
from tl_space.errors import UserError
from tl_space.settings import RECIPES, check_settings, native_bf16
from support.local_app import running_app
from tl_space.app.ui import build_demo

STRATEGIES = ("linear-probe", "finetune")
ROW_FIELDS = {"run", "strategy", "shots", "seed", "test_accuracy", "best_epoch", "wall_seconds", "training_seconds",
              "trainable_parameters", "train_images", "images_per_class", "epochs", "curve"}


@pytest.mark.slow
def test_a_row_per_run_and_every_run_is_a_model_folder(tiny_study):
    record = read_study(tiny_study)
    rows = record["rows"]
    expected = [(strategy, shots, seed) for strategy in STRATEGIES for shots, seed in ((2, 42), (2, 43), ("all", 42))]
    assert Counter((row["strategy"], row["shots"], row["seed"]) for row in rows) == Counter(expected)
    assert record["planned_runs"] == len(rows) == 6
    for row in rows:
        assert ROW_FIELDS <= set(row)
        run_dir = tiny_study / row["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["test_accuracy"] == metrics["test"]["accuracy"] and row["best_epoch"] == metrics["test"]["best_epoch"]
        assert row["epochs"] == len(metrics["history"]) == 2  # the same budget for every strategy
        assert metrics["settings"]["split_seed"] == 42  # one validation/test split for every seed
        assert row["train_images"] == (2 * len(CLASS_NAMES) if row["shots"] == 2 else metrics["data"]["train_images"])
        assert metrics["settings"]["min_epoch_images"] == 48
        assert not (run_dir / CHECKPOINT_DIR).exists()
        assert load_served_model(str(run_dir)).label_names == CLASS_NAMES
    by_run = {(row["strategy"], row["shots"], row["seed"]): row for row in rows}
    assert by_run["linear-probe", "all", 42]["trainable_parameters"] < by_run["finetune", "all", 42]["trainable_parameters"]


@pytest.mark.slow
def test_an_interrupted_study_keeps_finished_runs_and_resumes_the_killed_one(tiny_dataset, pretrained_file, tmp_path,
                                                                          monkeypatch):
    folder = tmp_path / "study"
    arguments = study_arguments(tiny_dataset, pretrained_file, folder)
    saves = []
    real_save = checkpoint.save_checkpoint

    def killed_after_fifth_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 5:  # two runs of 2 epochs done, then epoch 1 of the third saved
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_after_fifth_epoch)
    with pytest.raises(KeyboardInterrupt):
        study.main(arguments)
    monkeypatch.undo()
    assert len(read_study(folder)["rows"]) == 2
    finished = {path: path.stat().st_mtime_ns for path in folder.glob("runs/*/model.safetensors")}
    assert len(finished) == 2
    killed = folder / "runs" / "finetune-2shot-seed42"
    assert checkpoint.find_checkpoint(killed / CHECKPOINT_DIR) is not None

    started = []
    real_run = study.run

    def recording_run(settings, **kwargs):
        started.append((settings.output_dir, settings.resume))
        return real_run(settings, **kwargs)

    monkeypatch.setattr(study, "run", recording_run)
    assert study.main(arguments) == 0
    assert started[0] == (str(killed), True) and len(started) == 4 and not any(resume for _, resume in started[1:])
    assert {path: path.stat().st_mtime_ns for path in finished} == finished
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert len(read_study(folder)["rows"]) == 6
    started.clear()
    assert study.main(arguments) == 0 and started == []  # all done: nothing runs again


@pytest.mark.parametrize("option, value, message", [
    ("--strategies", "linear-probe,magic", "magic"),
    ("--shots-per-class", "2,ten", "'ten' is neither a positive whole number nor 'all'"),
    ("--shots-per-class", "1000", "leaves nothing to run: 1000 images per class: the smallest class has"),
    ("--budget", "forever", "invalid choice"),
    ("--recipe", "speedrun", "a study's runs take theirs from --strategies"),
])
def test_bad_study_options_stop_with_a_clear_message(tiny_dataset, pretrained_file, tmp_path, capsys, option, value,
                                                     message):
    arguments = study_arguments(tiny_dataset, pretrained_file, tmp_path / "study") + [option, value]  # the last wins
    try:
        code = study.main(arguments)
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "study" / "runs").exists()


def test_a_minutes_budget_reaches_every_run():
    settings = study.StudySettings(budget="minutes", minutes="2.5", output_dir="studies/x")
    [planned] = study.plan_runs(dataclasses.replace(settings, strategies="scratch", shots_per_class="5", seeds=1), 50)[0]
    run_settings = study.run_settings(settings, dataclasses.replace(planned, seed=43))
    assert run_settings.max_train_minutes == 2.5 and run_settings.seed == 43 and run_settings.split_seed == 42
    assert run_settings.output_dir.endswith("studies/x/runs/scratch-5shot-2.5min-seed43")
    [planned] = study.plan_runs(study.StudySettings(strategies="scratch", shots_per_class="all"), 50)[0]
    assert study.run_settings(study.StudySettings(), planned).max_train_minutes is None
    assert planned.name == "runs/scratch-all-seed42"  # an epochs budget: the names of earlier studies


def test_a_budget_sweep_runs_all_images_at_every_budget_and_few_shots_at_the_small_ones():
    settings = study.StudySettings(strategies="scratch,lp-ft", shots_per_class="10,all", seeds=2, budget="minutes",
                                   minutes="15,1,5", few_shot_minutes=5)
    runs, _ = study.plan_runs(settings, smallest_class=50)
    assert [run.minutes for run in runs] == sorted(run.minutes for run in runs)  # the quick answers first
    assert Counter((run.minutes, run.shots) for run in runs) == {
        (1.0, 10): 4, (1.0, "all"): 2, (5.0, 10): 4, (5.0, "all"): 2, (15.0, "all"): 2}
    assert len({run.name for run in runs}) == len(runs)
    assert "runs/lp-ft-all-15min-seed42" in {run.name for run in runs}


@pytest.mark.parametrize("minutes", ["0", "1,x", "", "nan", "-5"])
def test_a_bad_minutes_list_is_refused_naming_it(minutes):
    with pytest.raises(UserError, match="--minutes"):
        study.check_study(study.StudySettings(budget="minutes", minutes=minutes))


def test_the_scratch_recipe_sets_the_scratch_runs_and_the_others_keep_fp32():
    settings = study.parse_study_settings(["--scratch-recipe", "speedrun", "--budget", "minutes", "--minutes", "5",
                                           "--epochs", "100", "--model", "test_resnet", "--image-size", "64",
                                           "--batch-size", "32", "--lr", "0.01"])  # for the transfer runs
    scratch = study.run_settings(settings, study.PlannedRun("scratch", "all", 42, 5.0))
    recipe = RECIPES["speedrun"]
    assert (scratch.model, scratch.image_size, scratch.batch_size, scratch.lr, scratch.label_smoothing) == (
        recipe["model"], recipe["image_size"], recipe["batch_size"], recipe["lr"], recipe["label_smoothing"])
    assert scratch.epochs == 100 and scratch.max_train_minutes == 5.0  # the study's budget, not the recipe's
    assert (scratch.optimizer, scratch.lr_schedule, scratch.lookahead, scratch.weight_decay) == (
        recipe["optimizer"], recipe["lr_schedule"], True, recipe["weight_decay"])  # airbench's optimiser
    assert scratch.pretrained_file is None and scratch.recipe is None
    transfer = study.run_settings(settings, study.PlannedRun("lp-ft", "all", 42, 5.0))
    assert (transfer.model, transfer.image_size, transfer.batch_size, transfer.lr, transfer.label_smoothing) == (
        "test_resnet", 64, 32, 0.01, 0)
    assert (transfer.optimizer, transfer.lr_schedule, transfer.lookahead) == ("adamw", "cosine", False)
    if native_bf16():  # one shared bf16 accelerator, under which the transfer runs turn autocast off
        assert (scratch.mixed_precision, transfer.mixed_precision) == ("bf16", "no")
    with pytest.raises(UserError, match="--scratch-recipe"):
        study.check_study(dataclasses.replace(settings, scratch_recipe="magic"))


@pytest.mark.slow
def test_study_id_adds_the_study_tab_to_any_model(tiny_study):
    model = tiny_study / read_study(tiny_study)["best_run"]
    config = build_demo(load_served_model(str(model), str(tiny_study))).config
    labels = [component["props"].get("label") for component in config["components"]]
    assert "Study" in labels
    assert "Study" not in [component["props"].get("label") for component in
                           build_demo(load_served_model(str(model))).config["components"]]


@pytest.mark.slow
def test_the_app_serves_a_studys_best_run_with_its_study_tab(tiny_study, tmp_path):
    record = read_study(tiny_study)
    image_path = tmp_path / "red.png"
    colour_images(1, 16, seed=3)[0][0].save(image_path)
    with running_app(str(tiny_study), tmp_path) as (url, _):
        page = json.dumps(json.loads(urllib.request.urlopen(url + "config", timeout=30).read()), ensure_ascii=False)
        assert all(sentence in page for sentence in record["findings"])
        assert f"The Classify tab serves `{record['best_run']}`" in page
        label, _ = Client(url, verbose=False).predict(handle_file(str(image_path)), api_name="/classify")
        assert label["label"] in CLASS_NAMES and len(label["confidences"]) == 5


@pytest.mark.slow
def test_the_study_folder_pushes_as_one_repo_without_checkpoints(tiny_study, tmp_path, monkeypatch, logged_in):
    folder = tmp_path / "study"
    shutil.copytree(tiny_study, folder)
    leftover = folder / "runs" / "finetune-all-seed42" / CHECKPOINT_DIR / "progress.json"
    leftover.parent.mkdir()
    leftover.write_text("{}")
    fake = FakeHub().install(monkeypatch)
    assert hub.main(["push", str(folder), "--hub-model-id", "me/colours-study"]) == 0
    [upload] = fake.named("upload_folder")
    files = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    uploaded = set(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert {"study.json", "README.md", "accuracy_vs_shots.png", "runs/finetune-all-seed42/model.safetensors"} <= uploaded
    assert str(leftover.relative_to(folder)) not in uploaded and len(uploaded) == len(files) - 1


@pytest.mark.slow
def test_a_study_repo_from_the_hub_cache_serves_its_best_run(tiny_study, tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    plain_hub_cache_copy(tiny_study, cache, "me/colours-study")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = load_served_model("me/colours-study")
    best_run = read_study(tiny_study)["best_run"]
    assert loaded.folder.is_relative_to(cache) and loaded.folder.as_posix().endswith(best_run)
    assert loaded.study_folder == loaded.folder.parent.parent and loaded.label_names == CLASS_NAMES
    assert loaded.metrics == json.loads((tiny_study / best_run / "metrics.json").read_text())


def test_options_for_training_on_images_reach_only_the_strategies_that_train_on_images():
    arguments = ["--mixup", "0.8", "--label-smoothing", "0.1", "--freeze-depthwise", "--ema-decay", "0.99"]
    settings = study.parse_study_settings(arguments)
    probe = study.run_settings(settings, study.PlannedRun("linear-probe", 5, 42))
    assert (probe.mixup, probe.label_smoothing, probe.freeze_depthwise, probe.ema_decay) == (0.0, 0.0, False, 0.0)
    check_settings(probe)  # a study with them still runs its probes
    finetune = study.run_settings(settings, study.PlannedRun("lp-ft", 5, 42))
    assert (finetune.mixup, finetune.label_smoothing, finetune.freeze_depthwise, finetune.ema_decay) == (
        0.8, 0.1, True, 0.99)


def test_the_plan_repeats_small_shot_sizes_and_skips_what_the_data_cannot_give():
    settings = study.StudySettings(strategies="scratch,linear-probe", shots_per_class="1,5,all,100,5", seeds=3,
                                   repeat_up_to=5)
    assert study.parse_shots(settings.shots_per_class) == [1, 5, 100, "all"]
    runs, skipped = study.plan_runs(settings, smallest_class=50)
    assert [(run.strategy, run.shots) for run in runs].count(("scratch", 1)) == 3
    assert [(run.strategy, run.shots) for run in runs].count(("linear-probe", "all")) == 1
    assert skipped == ["100 images per class: the smallest class has 50 for training"]
    assert {run.name for run in runs} >= {"runs/scratch-1shot-seed42", "runs/linear-probe-all-seed42"}
    assert study.run_settings(settings, runs[-1]).shots_per_class is None  # all: no subset
