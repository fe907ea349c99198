"""metrics.json: what a run measured, how it was set up, and the check a reader makes before showing it.

docs/model-folder.md describes every field.
"""

from __future__ import annotations

from tl_space.errors import UserError

# Fields every reader of a folder (the app, the study, the card) may rely on, with their types.
REQUIRED_FIELDS = {"test.accuracy": (int, float), "test.loss": (int, float), "test.num_images": int,
                   "test.best_epoch": int, "test.most_confused": list, "test.per_class_accuracy": dict,
                   "settings.strategy": str, "settings.dataset": str, "settings.model": str, "data.train_images": int,
                   "history": list, "preprocessing.image_size": int}
OPTIONAL_SECTIONS = ("calibration", "flip_tta", "model", "timing")


def metrics_record(*, history: list[dict], stopped_by: str, test: dict, settings: dict, model: dict,
                   calibration: dict, flip_tta: dict | None, preprocessing: dict, data: dict, trainable_parameters: int,
                   total_parameters: int, timing: dict, hardware: dict) -> dict:
    """metrics.json's content, its sections in the order the file lists them."""
    return {"history": history, "stopped_by": stopped_by, "test": test, "settings": settings, "model": model,
            "calibration": calibration, "flip_tta": flip_tta, "preprocessing": preprocessing, "data": data,
            "trainable_parameters": trainable_parameters, "total_parameters": total_parameters, "timing": timing,
            "hardware": hardware}


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
    """Divides the logits for calibrated probabilities; 1 for folders written before calibration existed."""
    return float((metrics.get("calibration") or {}).get("temperature", 1.0))


def flip_tta_enabled(metrics: dict) -> bool:
    """Whether predictions average the image and its mirror image: only where training measured a gain."""
    return bool((metrics.get("flip_tta") or {}).get("enabled", False))


def base_model(metrics: dict) -> str | None:
    """The Hub id of the pretrained weights the run started from, None from scratch (or not recorded)."""
    value = (metrics.get("model") or {}).get("base_model")
    return value if isinstance(value, str) else None
