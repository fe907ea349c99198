"""metrics.json: what a run measured and how it was set up; its only writer, its only reader, and the check a reader
makes before showing it. docs/model-folder.md describes every field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tl_space import atomic
from tl_space.errors import UserError
from tl_space.folder.files import METRICS_FILE, read_json

# 2: format_version itself; stopped_by, calibration and flip_tta always present. Folders without format_version
# (version 1) are read through upgrade_metrics.
FORMAT_VERSION = 2
# Fields every reader of a folder (the app, the study, the card) may rely on, with their types.
REQUIRED_FIELDS = {"test.accuracy": (int, float), "test.loss": (int, float), "test.num_images": int,
                   "test.best_epoch": int, "test.most_confused": list, "test.per_class_accuracy": dict,
                   "settings.strategy": str, "settings.dataset": str, "settings.model": str, "data.train_images": int,
                   "history": list, "preprocessing.image_size": int}
OPTIONAL_SECTIONS = ("calibration", "flip_tta", "model", "timing")


class StoppedBy(StrEnum):
    """What ended a run's training."""

    EPOCHS = "epochs"  # every epoch ran
    TIME_BUDGET = "time budget"
    PATIENCE = "patience"
    NO_TRAINING = "no training"  # nothing trains (class-means, a taught head)


@dataclass(frozen=True)
class EpochRecord:
    """One entry of a run's history: an epoch of a stage (or, for an L-BFGS probe, one L2 strength)."""

    epoch: int
    stage: str
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    train_images_per_second: float
    lr: float | None  # None: a head fitted by L-BFGS
    train_images: int | None = None  # None: an entry of a checkpoint written before it was recorded
    l2: float | None = None  # the L-BFGS fit's L2 strength

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        if self.l2 is None:
            del values["l2"]
        return values

    @property
    def train_seconds(self) -> float:
        """The epoch's seconds of training, validation left out."""
        return (self.train_images or 0) / self.train_images_per_second if self.train_images_per_second else 0.0

    @classmethod
    def from_json(cls, values: dict) -> EpochRecord:
        """An entry of our own checkpoint's history (a resumed run)."""
        return cls(**{name: values.get(name) for name in (field.name for field in dataclasses.fields(cls))})

    def logged(self) -> dict[str, float]:
        """The numbers a tracker plots."""
        return {name: value for name, value in self.to_json().items() if isinstance(value, (int, float))}


@dataclass(frozen=True)
class MetricsRecord:
    """metrics.json's content, its sections in the order the file lists them."""

    history: list[EpochRecord]
    stopped_by: StoppedBy
    test: dict
    settings: dict
    model: dict
    calibration: dict
    flip_tta: dict | None
    preprocessing: dict
    data: dict
    trainable_parameters: int
    total_parameters: int
    timing: dict
    hardware: dict

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "history": [entry.to_json() for entry in self.history],
                "stopped_by": str(self.stopped_by),
                **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                   if field.name not in ("history", "stopped_by")}}


def write_metrics(folder: Path, record: MetricsRecord) -> Path:
    return atomic.write_text(Path(folder) / METRICS_FILE, json.dumps(record.to_json(), indent=2))


def read_metrics(folder: Path, name: str) -> dict:
    """A folder's metrics.json, upgraded to FORMAT_VERSION and checked (check_metrics); {} when it has none."""
    return check_metrics(upgrade_metrics(read_json(Path(folder) / METRICS_FILE, {}, name)), name)


def upgrade_metrics(metrics: dict) -> dict:
    """The one compatibility shim: a version-1 folder (before format_version) as version 2 reads it. Its runs
    predate stopped_by (so every epoch ran), calibration (temperature 1) and flip test-time augmentation (off)."""
    if not metrics or isinstance(metrics.get("format_version"), int) and metrics["format_version"] >= FORMAT_VERSION:
        return metrics
    return {"format_version": FORMAT_VERSION, "stopped_by": StoppedBy.EPOCHS.value, "calibration": None,
            "flip_tta": None, "model": None, **{key: value for key, value in metrics.items() if key != "format_version"}}


def check_metrics(metrics: dict, name: str) -> dict:
    """metrics.json as read, once it has every required field, of the right type; else a UserError naming the field.
    An empty dict (a folder without metrics.json) passes: it has no report to show."""
    if not metrics:
        return metrics
    for dotted, kinds in REQUIRED_FIELDS.items():
        value = metrics
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise UserError(f"the metrics.json of model {name!r} lacks {dotted} or holds the wrong type there")
    for key in OPTIONAL_SECTIONS:
        if metrics.get(key) is not None and not isinstance(metrics[key], dict):
            raise UserError(f"the metrics.json of model {name!r} holds the wrong type at {key}")
    return metrics


def temperature(metrics: dict) -> float:
    """Divides the logits for calibrated probabilities; 1 where the run was not calibrated."""
    return float((metrics.get("calibration") or {}).get("temperature", 1.0))


def flip_tta_enabled(metrics: dict) -> bool:
    """Whether predictions average the image and its mirror image: only where training measured a gain."""
    return bool((metrics.get("flip_tta") or {}).get("enabled", False))


def base_model(metrics: dict) -> str | None:
    """The Hub id of the pretrained weights the run started from, None from scratch (or not recorded)."""
    value = (metrics.get("model") or {}).get("base_model")
    return value if isinstance(value, str) else None


def stopped_by(metrics: dict) -> StoppedBy | None:
    """What ended the run's training; None for a value this version does not know."""
    try:
        return StoppedBy(metrics.get("stopped_by"))
    except ValueError:
        return None
