"""A killed run resumes where its last epoch ended; a non-finite loss stops it with the last good checkpoint kept."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support.runs import ROOT, tiny_settings, train_cli
from tl_space import atomic
from tl_space.folder.files import CHECKPOINT_DIR
from tl_space.training import checkpoint
from tl_space.errors import UserError
from tl_space.settings import SETTING_DEFAULTS
from tl_space.training.run import run

LP_FT = dict(strategy="lp-ft", probe_epochs=3, epochs=6, lr=3e-3)


def _cli_args(dataset: Path, pretrained_file: Path, output_dir: Path, **options) -> list[str]:
    """The command line a user types for these settings: the options away from their defaults (a typed default is
    the user's choice, which --optimizer nesterov's weight decay would refuse)."""
    settings = tiny_settings(dataset, output_dir, pretrained_file, **(options or LP_FT))
    args = []
    for name, value in settings.to_dict().items():
        if value is not None and value != SETTING_DEFAULTS[name]:
            args += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def _kill_after_epoch(args: list[str], output_dir: Path, epochs: int) -> None:
    """Start train.py and kill -9 it once its checkpoint holds `epochs` epochs: mid-way through the next one."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress_dir = output_dir / CHECKPOINT_DIR
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            progress = checkpoint.read_progress(progress_dir)
            if progress is not None and len(progress["history"]) >= epochs:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result_with_each_epoch_once(tiny_dataset, pretrained_file, tmp_path):
    reference_dir = tmp_path / "uninterrupted"
    run(tiny_settings(tiny_dataset, reference_dir, pretrained_file, **LP_FT))
    reference = json.loads((reference_dir / "metrics.json").read_text())

    output_dir = tmp_path / "killed"
    args = _cli_args(tiny_dataset, pretrained_file, output_dir)
    _kill_after_epoch(args, output_dir, epochs=2)  # in the linear-probe stage
    assert not (output_dir / "metrics.json").exists()
    again = train_cli(*args)  # without --resume: refused, nothing overwritten
    assert again.returncode == 2 and "--resume" in again.stderr and "after epoch" in again.stderr
    _kill_after_epoch([*args, "--resume"], output_dir, epochs=5)  # in the fine-tuning stage
    finished = train_cli(*args, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming after epoch" in finished.stdout + finished.stderr

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == list(range(1, 10))
    assert [entry["stage"] for entry in metrics["history"]] == ["linear-probe"] * 3 + ["finetune"] * 6
    for resumed, uninterrupted in zip(metrics["history"], reference["history"]):
        assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-4, abs=1e-6)
        assert resumed["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-4, abs=1e-6)
    assert metrics["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"]
    assert metrics["test"]["best_epoch"] == reference["test"]["best_epoch"]
    assert not (output_dir / CHECKPOINT_DIR).exists()  # a finished run keeps no checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(strategy="finetune", epochs=4, lr=3e-3, label_smoothing=0.1, mixup=0.8, cutmix=1.0, random_erasing=0.25,
         ema_decay=0.9),
    # airbench's optimiser: Nesterov momentum, the triangular schedule, lookahead's average
    dict(strategy="finetune", epochs=4, lr=0.02, optimizer="nesterov", lr_schedule="triangle", lookahead=True),
], ids=["regularisers", "nesterov-lookahead"])
def test_a_killed_run_with_every_regulariser_resumes_to_the_same_result(tiny_dataset, pretrained_file, tmp_path,
                                                                        options):
    reference_dir = tmp_path / "uninterrupted"
    run(tiny_settings(tiny_dataset, reference_dir, pretrained_file, **options))
    reference = json.loads((reference_dir / "metrics.json").read_text())
    output_dir = tmp_path / "killed"
    args = _cli_args(tiny_dataset, pretrained_file, output_dir, **options)
    _kill_after_epoch(args, output_dir, epochs=2)
    finished = train_cli(*args, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 4
    for resumed, uninterrupted in zip(metrics["history"], reference["history"]):  # the same batches, mixes, average
        assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-4, abs=1e-6)
        assert resumed["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-4, abs=1e-6)
    assert metrics["test"]["confusion_matrix"] == reference["test"]["confusion_matrix"]


@pytest.mark.slow
def test_a_kill_between_the_model_folder_renames_resumes_from_the_last_epoch(tiny_dataset, pretrained_file, tmp_path,
                                                                            monkeypatch, capsys):
    output_dir = tmp_path / "run"
    settings = tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=3)

    real_replace_folder = atomic.replace_folder

    def killed_swap(staging, target, previous=None):  # the run folder renamed aside, then the process dies
        if target != output_dir.resolve():  # the per-epoch checkpoints swap in as usual
            return real_replace_folder(staging, target, previous)
        target.rename(atomic.previous_path(target))
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic, "replace_folder", killed_swap)
    with pytest.raises(KeyboardInterrupt):
        run(settings)
    monkeypatch.undo()
    assert not output_dir.exists() and atomic.previous_path(output_dir).is_dir()
    capsys.readouterr()
    run(dataclasses.replace(settings, resume=True))
    out = capsys.readouterr()
    assert "restored the run folder from an interrupted save" in out.err
    assert "resuming after epoch 3" in out.out + out.err  # every epoch done: straight to the evaluation
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2, 3]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no staging or previous folder left


@pytest.mark.slow
def test_resume_refuses_other_settings(tiny_dataset, pretrained_file, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    _stop_at_epoch(monkeypatch, 2)
    with pytest.raises(UserError):
        run(tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=3))
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"holds a different run \(epochs: 3 -> 4\); --resume needs"):
        run(tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=4, resume=True))
    # --overwrite starts again, and the old checkpoint cannot be resumed by mistake afterwards.
    run(tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=1, overwrite=True))
    assert not (output_dir / CHECKPOINT_DIR).exists()


def _stop_at_epoch(monkeypatch, epoch: int, steps_before: int = 0) -> None:
    """Make the loss NaN from the first step of `epoch` (+ steps_before): a diverging run."""
    import tl_space.training.regularisation as training  # where the training loss is taken

    real_cross_entropy = training.F.cross_entropy
    calls = {"steps": 0}
    steps_per_epoch = 7  # 210 training images of the tiny dataset in batches of 32

    def cross_entropy(logits, *args, **kwargs):
        loss = real_cross_entropy(logits, *args, **kwargs)
        if not logits.requires_grad:  # validation and test losses are not training steps
            return loss
        calls["steps"] += 1
        return loss * float("nan") if calls["steps"] > (epoch - 1) * steps_per_epoch + steps_before else loss
    monkeypatch.setattr(training.F, "cross_entropy", cross_entropy)


@pytest.mark.slow
def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(
        tiny_dataset, pretrained_file, tmp_path, monkeypatch):
    output_dir = tmp_path / "diverged"
    settings = tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=4)
    _stop_at_epoch(monkeypatch, 3, steps_before=2)
    with pytest.raises(UserError, match=r"loss became nan in epoch 3, step 3 of 7; the last good checkpoint "
                                        r"\(epoch 2\) is kept in .*checkpoint. To go on, rerun with --resume and a lower --lr"):
        run(settings)
    progress = checkpoint.read_progress(output_dir / CHECKPOINT_DIR)
    assert [entry["epoch"] for entry in progress["history"]] == [1, 2]
    assert all(torch.isfinite(tensor).all() for tensor in
               checkpoint.best_model_state(output_dir / CHECKPOINT_DIR).values())
    monkeypatch.undo()
    run(tiny_settings(tiny_dataset, output_dir, pretrained_file, strategy="finetune", epochs=4, lr=5e-5, resume=True))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2, 3, 4]
    assert [entry["lr"] for entry in metrics["history"]] == [1e-4, 1e-4, 5e-5, 5e-5]


def test_a_kill_between_the_checkpoint_renames_leaves_the_previous_one(tmp_path):
    directory = tmp_path / "checkpoint"
    old = tmp_path / "checkpoint.old"
    partial = tmp_path / "checkpoint.partial"
    old.mkdir()
    (old / checkpoint.PROGRESS_FILE).write_text(json.dumps({"history": [{"epoch": 1}]}))
    partial.mkdir()  # a newer save that never got its progress file: not a checkpoint
    assert checkpoint.find_checkpoint(directory) == old
    assert checkpoint.read_progress(directory)["history"] == [{"epoch": 1}]
    shutil.copytree(old, directory)
    (directory / checkpoint.PROGRESS_FILE).write_text(json.dumps({"history": [{"epoch": 1}, {"epoch": 2}]}))
    assert checkpoint.find_checkpoint(directory) == directory
    checkpoint.discard_checkpoint(directory)
    assert not any(tmp_path.iterdir())
