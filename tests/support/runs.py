"""Helpers shared by the tests: the tiny run's settings, train.py as a user runs it, a study's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tl_space.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = "test_resnet"


def tiny_settings(dataset: Path, output_dir: Path, pretrained_file: Path, **overrides) -> TrainSettings:
    """A run of timm's test_resnet at 32 px on the tiny dataset: seconds on a CPU."""
    values = dict(dataset=str(dataset), model=TINY_MODEL, strategy="finetune", pretrained_file=str(pretrained_file),
                  epochs=2, probe_epochs=2, batch_size=32, image_size=32, val_size=30, output_dir=str(output_dir),
                  mixed_precision="no", cache_dir="none")
    values.update(overrides)
    return TrainSettings(**values)


def train_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python train.py ARGS` offline, its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def read_study(folder: Path) -> dict:
    return json.loads((Path(folder) / "study.json").read_text())
