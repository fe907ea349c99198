"""study.json: its rows, its best run, its version, and what a reader does with a file someone else wrote."""

import json

from tl_space.folder.study import (ALL_SHOTS, FORMAT_VERSION, best_run, load_study, served_run, shots_order, study_row,
                                   write_study)


def metrics(accuracy: float, epochs: int = 3, best_epoch: int = 3, stopped_by: str = "epochs") -> dict:
    return {"history": [{"epoch": epoch, "stage": "finetune", "val_accuracy": 0.1 * epoch, "seconds": 2.0}
                        for epoch in range(1, epochs + 1)],
            "stopped_by": stopped_by, "settings": {"model": "test_resnet"}, "preprocessing": {"image_size": 32},
            "data": {"train_images": 60, "class_names": ["a", "b", "c"]},
            "test": {"accuracy": accuracy, "best_epoch": best_epoch},
            "timing": {"total_seconds": 10.0, "training_seconds": 6.0}, "trainable_parameters": 99}


def test_a_row_says_how_the_run_went():
    row = study_row("runs/finetune-all-seed0", "finetune", ALL_SHOTS, 0, None, metrics(0.8))
    assert row.images_per_class == 20 and row.epochs == 3 and row.best_stage == "finetune"
    assert row.budget_bound  # its best epoch was its last: more steps would likely help
    assert [point["seconds"] for point in row.curve] == [2.0, 4.0, 6.0]
    assert not study_row("r", "finetune", 5, 0, None, metrics(0.8, best_epoch=2)).budget_bound
    assert not study_row("r", "finetune", 5, 0, None, metrics(0.8, stopped_by="patience")).budget_bound


def test_the_best_run_is_the_most_accurate_with_the_most_images():
    rows = [{"run": "few", "shots": 5, "test_accuracy": 0.99}, {"run": "all-a", "shots": ALL_SHOTS, "test_accuracy": 0.8},
            {"run": "all-b", "shots": ALL_SHOTS, "test_accuracy": 0.9}]
    assert best_run(rows) == "all-b"
    assert sorted([ALL_SHOTS, 10, 1], key=shots_order) == [1, 10, ALL_SHOTS]


def test_a_written_study_reads_back_with_its_version_and_serves_its_best_run(tmp_path):
    rows = [study_row("runs/a", "finetune", ALL_SHOTS, 0, None, metrics(0.7)), study_row("runs/b", "lp-ft", ALL_SHOTS, 0,
                                                                                          None, metrics(0.9))]
    write_study(tmp_path, {"budget": "epochs"}, {"model": "test_resnet"}, 2, rows, [], [], [])
    study = load_study(tmp_path)
    assert study["format_version"] == FORMAT_VERSION and [row["run"] for row in study["rows"]] == ["runs/a", "runs/b"]
    assert served_run(tmp_path) == "runs/b"


def test_a_version_one_file_is_upgraded_and_malformed_rows_are_dropped(tmp_path):
    good = study_row("runs/a", "finetune", 5, 0, None, metrics(0.7)).to_json()
    record = {"study": {}, "training": {}, "rows": [good, {**good, "strategy": "magic"}, {**good, "shots": "some"}],
              "best_run": "runs/a"}  # no format_version: written before it existed
    (tmp_path / "study.json").write_text(json.dumps(record))
    study = load_study(tmp_path)
    assert study["format_version"] == FORMAT_VERSION and study["rows"] == [good]


def test_a_version_two_file_gets_the_budget_its_settings_name_and_bad_budgets_are_dropped(tmp_path):
    old = study_row("runs/a", "finetune", 5, 0, None, metrics(0.7)).to_json()
    del old["minutes"], old["cold_wall_seconds"]  # version 2 had neither
    record = {"format_version": 2, "study": {"budget": "minutes", "minutes": 2.5}, "training": {}, "rows": [old]}
    (tmp_path / "study.json").write_text(json.dumps(record))
    [row] = load_study(tmp_path)["rows"]
    assert row["minutes"] == 2.5 and row["cold_wall_seconds"] == old["wall_seconds"]
    new = study_row("runs/b", "finetune", 5, 0, 15.0, metrics(0.7)).to_json()
    record = {"format_version": FORMAT_VERSION, "study": {}, "training": {},
              "rows": [new, {**new, "minutes": "15"}, {**new, "minutes": -1}, {**new, "minutes": True}]}
    (tmp_path / "study.json").write_text(json.dumps(record))
    assert load_study(tmp_path)["rows"] == [new]


def test_a_row_charges_the_features_a_cache_gave_it_at_what_they_cost():
    cached = metrics(0.7)
    cached["timing"]["feature_cache_saved_seconds"] = 150.0
    row = study_row("runs/a", "linear-probe", ALL_SHOTS, 0, 5.0, cached)
    assert (row.minutes, row.wall_seconds, row.cold_wall_seconds) == (5.0, 10.0, 160.0)


def test_a_study_that_names_no_run_serves_none(tmp_path):
    assert served_run(tmp_path) is None  # no study.json
    (tmp_path / "study.json").write_text(json.dumps({"study": {}, "training": {}, "rows": [], "best_run": ["x"]}))
    assert served_run(tmp_path) is None  # not a folder name
    (tmp_path / "study.json").write_text("{not json")
    assert served_run(tmp_path) is None
