"""study.json: a study's settings, one row per finished run, its summary and findings; written whole, checked when read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tl_space import atomic
from tl_space.folder.files import STUDY_FILE
from tl_space.strategies import strategy_named


def write_study_record(folder: Path, record: dict) -> Path:
    """study.json, replaced whole: a reader (the app, a push) sees the old record or the new one, never half."""
    return atomic.write_text(Path(folder) / STUDY_FILE, json.dumps(record, indent=2))


ROW_FIELDS = {"run": str, "test_accuracy": (int, float), "images_per_class": (int, float), "wall_seconds": (int, float),
              "epochs": int, "trainable_parameters": int, "curve": list}


def _valid_row(row: object) -> bool:
    """A row the Study tab can show: a known strategy, a shot count, and every field it reads of the right type."""
    return (isinstance(row, dict) and strategy_named(row.get("strategy")) is not None
            and (row.get("shots") == "all" or (isinstance(row.get("shots"), int) and row["shots"] > 0))
            and all(isinstance(row.get(key), kinds) and not isinstance(row.get(key), bool)
                    for key, kinds in ROW_FIELDS.items()))


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
    rows = [row for row in study["rows"] if _valid_row(row)]
    if len(rows) < len(study["rows"]):
        log.warning("skipped %d malformed rows of %s", len(study["rows"]) - len(rows), STUDY_FILE)
    return {**study, "rows": rows}
