"""Every file name of a model folder and of a study folder, and which earlier run a folder holds.

A model folder: timm's config.json and model.safetensors, metrics.json, misclassified.json with misclassified/*.png,
three plots and the model card (README.md); logs/ with --report-to; checkpoint/ while a run is unfinished. A study folder: study.json, four
plots, README.md, and one model folder per run under runs/.
"""

from __future__ import annotations

import json
from pathlib import Path

from tl_space.errors import UserError
from tl_space.settings import RUN_SETTINGS, SETTING_DEFAULTS

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.bin")  # never opened
METRICS_FILE = "metrics.json"
MISCLASSIFIED_FILE = "misclassified.json"
MISCLASSIFIED_DIR = "misclassified"
CARD_FILE = "README.md"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"  # the trackers' files (--report-to): TensorBoard's event files, where the Hub's tab finds them
CURVES_PLOT, CONFUSION_PLOT, RELIABILITY_PLOT = "curves.png", "confusion_matrix.png", "reliability.png"
REPORT_PLOTS = {CURVES_PLOT: "Loss and accuracy per epoch", CONFUSION_PLOT: "Confusion matrix",
                RELIABILITY_PLOT: "Reliability: accuracy vs confidence, before and after calibration"}

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
SHOTS_PLOT, EPOCH_PLOT, TIME_PLOT = "accuracy_vs_shots.png", "accuracy_vs_epoch.png", "accuracy_vs_time.png"
PARETO_PLOT = "accuracy_for_the_time.png"
STUDY_PLOTS = {PARETO_PLOT: "Test accuracy vs wall minutes, every recipe, and the front of the best for the time",
               SHOTS_PLOT: "Test accuracy vs training images per class",
               EPOCH_PLOT: "Validation accuracy per epoch, each strategy, each shot size (its largest budget)",
               TIME_PLOT: "Accuracy vs wall time (each strategy's largest budget)"}
# A study folder without its runs: what the app fetches of a study repo besides the run it serves.
STUDY_FILES = [STUDY_FILE, CARD_FILE, *STUDY_PLOTS]

# An unfinished (or killed, then finished elsewhere) run's resume state is not part of what is published.
NOT_PUSHED = [f"{CHECKPOINT_DIR}/*", f"{CHECKPOINT_DIR}.*/*", f"*/{CHECKPOINT_DIR}/*", f"*/{CHECKPOINT_DIR}.*/*",
              f".{CHECKPOINT_DIR}.*/*", f"*/.{CHECKPOINT_DIR}.*/*"]


def display_name(source: str) -> str:
    """How a model or study is named to visitors: a Hub id as given, a local folder by its name only."""
    path = Path(source).expanduser()
    return path.name if path.is_dir() else source


def is_model_folder(names: set[str]) -> bool:
    """Whether a folder holding these file names is a model folder (else maybe a study folder)."""
    return CONFIG_FILE in names and WEIGHTS_FILE in names


def differing_settings(previous: dict, current: dict) -> list[str]:
    """Names of the run settings (those that change what a run computes) in which two published settings differ; a
    setting the previous run predates counts as its default."""
    return sorted(key for key in current
                  if key in RUN_SETTINGS and previous.get(key, SETTING_DEFAULTS.get(key)) != current[key])


def read_json(path: Path, default, name: str):
    """A JSON file of a folder, default when it is missing; a UserError naming the file when it is unreadable."""
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path.name} of {name!r} is not readable JSON ({type(error).__name__})") from error
    if not isinstance(value, type(default)):
        raise UserError(f"{path.name} of {name!r} holds a {type(value).__name__}, not a {type(default).__name__}")
    return value
