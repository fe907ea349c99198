"""The fields of a model folder that change what the app computes, each with its type and range: checked before the
folder is served, since the folder is anyone's (docs/model-folder.md lists the same rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import timm

from tl_space.errors import UserError

MAX_INPUT_SIZE = 512  # a 2048-px input costs a GB and seconds per request on a Space's 2 vCPU
MIN_INPUT_SIZE = 8
MISSING = object()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and len(value) == 3 and all(check(v) for v in value)


def _input_size(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 3 and value[0] == 3
            and all(isinstance(side, int) and not isinstance(side, bool) and MIN_INPUT_SIZE <= side <= MAX_INPUT_SIZE
                    for side in value[1:]))


def _timm_name(value: Any) -> bool:
    return isinstance(value, str) and timm.is_model(value)


def _get(section: Callable[[dict, dict], Any], *keys: str) -> Callable[[dict, dict], Any]:
    def get(config: dict, metrics: dict) -> Any:
        value = section(config, metrics)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return MISSING
            value = value[key]
        return value
    return get


def _config(config: dict, metrics: dict) -> dict:
    return config


def _metrics(config: dict, metrics: dict) -> dict:
    return metrics


@dataclass(frozen=True)
class FieldRule:
    file: str
    field: str
    rule: str
    value: Callable[[dict, dict], Any]  # (pretrained_cfg, metrics) -> the value, or MISSING
    holds: Callable[[Any], bool]


# pretrained_cfg is config.json's, as timm reads it (its data config comes from there); absent optional fields take
# timm's or the app's defaults.
FIELD_RULES = [
    FieldRule("config.json", "pretrained_cfg.architecture", "a model name timm knows", _get(_config, "architecture"), _timm_name),
    FieldRule("config.json", "pretrained_cfg.mean", "3 finite numbers", _get(_config, "mean"), _triple(_finite)),
    FieldRule("config.json", "pretrained_cfg.std", "3 finite numbers > 0", _get(_config, "std"),
              _triple(lambda v: _finite(v) and v > 0)),
    FieldRule("config.json", "pretrained_cfg.input_size",
              f"[3, H, W] with H and W whole numbers from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}",
              _get(_config, "input_size"), _input_size),
    FieldRule("config.json", "pretrained_cfg.interpolation", "a string", _get(_config, "interpolation"),
              lambda v: isinstance(v, str)),
    FieldRule("metrics.json", "calibration.temperature", "a finite number > 0", _get(_metrics, "calibration", "temperature"),
              lambda v: _finite(v) and v > 0),
    FieldRule("metrics.json", "flip_tta.enabled", "true or false", _get(_metrics, "flip_tta", "enabled"),
              lambda v: isinstance(v, bool)),
]


def check_served_fields(pretrained_cfg: dict, metrics: dict, name: str) -> None:
    """A UserError naming the first field of FIELD_RULES whose value breaks its rule."""
    for rule in FIELD_RULES:
        value = rule.value(pretrained_cfg, metrics)
        if value is not MISSING and not rule.holds(value):
            raise UserError(f"the {rule.file} of model {name!r} holds {rule.field} = {str(value)[:60]!r}, which "
                            f"must be {rule.rule}")
