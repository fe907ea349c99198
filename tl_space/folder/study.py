"""study.json: a study's settings, one row per finished run, its summary, findings and best run; the format's only
writer and reader, written whole, checked (and upgraded) when read."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tl_space import atomic
from tl_space.folder.files import STUDY_FILE
from tl_space.folder.metrics import StoppedBy, stopped_by as stopped_by_of
from tl_space.strategies import strategy_named

# 3: StudyRow's minutes and cold_wall_seconds. 2: format_version itself; version 1 (none) has version 2's rows.
FORMAT_VERSION = 3
ALL_SHOTS = "all"
Shots = int | Literal["all"]  # training images per class, or every training image


def shots_order(shots: Shots) -> float:
    """Sorts shot sizes smallest first, all last."""
    return float("inf") if shots == ALL_SHOTS else float(shots)


@dataclass(frozen=True)
class StudyRow:
    """One finished run of a study, as study.json lists it."""

    run: str  # its folder, relative to the study folder
    strategy: str
    shots: Shots
    seed: int
    minutes: float | None  # its training budget in minutes; None: the study's epochs budget
    model: str
    image_size: int
    stopped_by: str
    budget_bound: bool  # still climbing when its budget ended: its best epoch was its last, patience did not stop it
    train_images: int
    images_per_class: float
    test_accuracy: float
    best_epoch: int
    best_stage: str | None
    epochs: int
    wall_seconds: float
    cold_wall_seconds: float  # wall_seconds with the features a cache gave it charged at what computing them took
    training_seconds: float
    trainable_parameters: int
    curve: list[dict]  # per epoch: epoch, val_accuracy, seconds of training so far

    def to_json(self) -> dict:
        return asdict(self)


def study_row(run: str, strategy: str, shots: Shots, seed: int, minutes: float | None, metrics: dict) -> StudyRow:
    """The row of a finished run, from its metrics.json (as read_metrics gives it)."""
    elapsed, curve = 0.0, []
    history = metrics["history"]
    for entry in history:
        elapsed += entry["seconds"]
        curve.append({"epoch": entry["epoch"], "val_accuracy": entry["val_accuracy"], "seconds": round(elapsed, 2)})
    data, best_epoch = metrics["data"], metrics["test"]["best_epoch"]
    stopped = stopped_by_of(metrics)
    return StudyRow(
        run=run, strategy=strategy, shots=shots, seed=seed, minutes=minutes, model=metrics["settings"]["model"],
        image_size=metrics["preprocessing"]["image_size"], stopped_by=str(metrics.get("stopped_by")),
        budget_bound=bool(history) and stopped in (StoppedBy.EPOCHS, StoppedBy.TIME_BUDGET)
        and best_epoch == history[-1]["epoch"],
        train_images=data["train_images"], images_per_class=data["train_images"] / len(data["class_names"]),
        test_accuracy=metrics["test"]["accuracy"], best_epoch=best_epoch,
        best_stage=next((entry["stage"] for entry in history if entry["epoch"] == best_epoch), None),
        epochs=len(history), wall_seconds=round(metrics["timing"]["total_seconds"], 2),
        cold_wall_seconds=round(metrics["timing"]["total_seconds"]
                                + metrics["timing"].get("feature_cache_saved_seconds", 0.0), 2),
        training_seconds=round(metrics["timing"]["training_seconds"], 2),
        trainable_parameters=metrics["trainable_parameters"], curve=curve)


def best_run(rows: list[dict]) -> str:
    """The run a study serves as its model: the most accurate at the largest shot size (of any budget)."""
    largest = max((row["shots"] for row in rows), key=shots_order)
    return max((row for row in rows if row["shots"] == largest), key=lambda row: row["test_accuracy"])["run"]


def write_study(folder: Path, study: dict, training: dict, planned_runs: int, rows: list[StudyRow],
                skipped: list[str], summary: list[dict], findings: list[str]) -> dict:
    """study.json, replaced whole (a reader, the app or a push, sees the old record or the new one, never half);
    returns the record written."""
    row_values = [row.to_json() for row in rows]
    record = {"format_version": FORMAT_VERSION, "study": study, "training": training, "planned_runs": planned_runs,
              "rows": row_values, "skipped": skipped, "summary": summary, "findings": findings,
              "best_run": best_run(row_values) if row_values else None}
    atomic.write_text(Path(folder) / STUDY_FILE, json.dumps(record, indent=2))
    return record


ROW_FIELDS = {"run": str, "test_accuracy": (int, float), "images_per_class": (int, float), "wall_seconds": (int, float),
              "cold_wall_seconds": (int, float), "epochs": int, "trainable_parameters": int, "curve": list}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_row(row: object) -> bool:
    """A row the Study tab can show: a known strategy, a shot count, and every field it reads of the right type."""
    return (isinstance(row, dict) and strategy_named(row.get("strategy")) is not None
            and (row.get("shots") == ALL_SHOTS or (isinstance(row.get("shots"), int) and row["shots"] > 0))
            and (row.get("minutes") is None or (_is_number(row["minutes"]) and 0 < row["minutes"] < 1e6))
            and all(isinstance(row.get(key), kinds) and not isinstance(row.get(key), bool)
                    for key, kinds in ROW_FIELDS.items()))


def upgrade_study(study: dict) -> dict:
    """The one compatibility shim: version 1 (no format_version) has version 2's fields; versions 1 and 2 ran every
    row at the one budget their settings name, and recorded no cache's savings."""
    if study.get("format_version", 1) < 3:
        settings = study["study"]
        minutes = settings.get("minutes") if settings.get("budget") == "minutes" else None
        minutes = minutes if _is_number(minutes) else None
        study = {**study, "rows": [{"minutes": minutes, "cold_wall_seconds": row.get("wall_seconds"), **row}
                                   if isinstance(row, dict) else row for row in study["rows"]]}
    return {**study, "format_version": FORMAT_VERSION}


def load_study(folder: Path | None) -> dict | None:
    """study.json of a study folder, its rows checked (others dropped with a log line); None when there is none or
    it cannot be shown."""
    path = None if folder is None else Path(folder) / STUDY_FILE
    if path is None or not path.is_file():
        return None
    log = logging.getLogger("tl_space.study")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(study, dict) or not isinstance(study.get("training"), dict) or not isinstance(
                study.get("study"), dict) or not isinstance(study.get("rows"), list):
            raise ValueError("it lacks training, study or rows")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("not showing the study: %s is unreadable (%s)", STUDY_FILE, error)
        return None
    study = upgrade_study(study)
    rows = [row for row in study["rows"] if _valid_row(row)]
    if len(rows) < len(study["rows"]):
        log.warning("skipped %d malformed rows of %s", len(study["rows"]) - len(rows), STUDY_FILE)
    return {**study, "rows": rows}


def served_run(folder: Path) -> str | None:
    """The best_run a study folder names (a relative folder name, not yet checked to exist); None when its study.json
    is missing, unreadable or names none."""
    study = load_study(folder)
    value = None if study is None else study.get("best_run")
    return value if isinstance(value, str) and value else None
