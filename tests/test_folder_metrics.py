"""metrics.json's schema: what readers may rely on, checked before anything is shown."""

import copy

import pytest

from tl_space.errors import UserError
from tl_space.folder.metrics import REQUIRED_FIELDS, base_model, check_metrics, flip_tta_enabled, temperature

VALID = {"test": {"accuracy": 0.9, "loss": 0.3, "num_images": 100, "best_epoch": 2, "most_confused": [],
                  "per_class_accuracy": {"a": 0.9}},
         "settings": {"strategy": "finetune", "dataset": "uoft-cs/cifar10", "model": "resnet18.a1_in1k"},
         "data": {"train_images": 1000}, "history": [], "preprocessing": {"image_size": 32},
         "calibration": {"temperature": 1.5}, "flip_tta": {"enabled": True}, "model": {"base_model": "timm/resnet18"}}


def test_a_complete_record_passes_and_is_read_by_its_accessors():
    assert check_metrics(copy.deepcopy(VALID), "m") == VALID
    assert temperature(VALID) == 1.5 and flip_tta_enabled(VALID) and base_model(VALID) == "timm/resnet18"


def test_a_folder_without_metrics_passes_with_neutral_defaults():
    assert check_metrics({}, "m") == {}
    assert temperature({}) == 1.0 and not flip_tta_enabled({}) and base_model({}) is None


@pytest.mark.parametrize("dotted", list(REQUIRED_FIELDS))
def test_a_missing_or_mistyped_field_is_named(dotted):
    metrics = copy.deepcopy(VALID)
    *parents, last = dotted.split(".")
    holder = metrics
    for key in parents:
        holder = holder[key]
    holder[last] = True  # a bool is no number, list or dict either
    with pytest.raises(UserError, match=f"lacks {dotted} or holds the wrong type"):
        check_metrics(metrics, "m")


def test_an_optional_section_of_the_wrong_type_is_refused():
    with pytest.raises(UserError, match="wrong type at calibration"):
        check_metrics({**VALID, "calibration": [1.5]}, "m")


def test_a_version_one_record_reads_as_version_two_and_a_written_one_round_trips(tmp_path):
    from tl_space.folder.metrics import (FORMAT_VERSION, EpochRecord, MetricsRecord, StoppedBy, read_metrics,
                                         stopped_by, upgrade_metrics)

    old = {key: value for key, value in VALID.items() if key not in ("calibration", "flip_tta")}
    upgraded = upgrade_metrics(copy.deepcopy(old))
    assert upgraded["format_version"] == FORMAT_VERSION and stopped_by(upgraded) is StoppedBy.EPOCHS
    assert temperature(upgraded) == 1.0 and not flip_tta_enabled(upgraded)
    record = MetricsRecord(
        history=[EpochRecord(1, "finetune", 1.0, 0.5, 1.1, 0.4, 2.0, 30.0, 1e-4)], stopped_by=StoppedBy.PATIENCE,
        test=VALID["test"], settings=VALID["settings"], model=VALID["model"], calibration=VALID["calibration"],
        flip_tta=None, preprocessing=VALID["preprocessing"], data=VALID["data"], trainable_parameters=1,
        total_parameters=2, timing={}, hardware={})
    from tl_space.folder.metrics import write_metrics
    write_metrics(tmp_path, record)
    read = read_metrics(tmp_path, "m")
    assert read == record.to_json() and read["stopped_by"] == "patience" and read["history"][0]["lr"] == 1e-4
    assert read_metrics(tmp_path / "none", "m") == {}
