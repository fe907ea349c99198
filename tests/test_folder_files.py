"""The folder format's names and its rule for "the same run"."""

from huggingface_hub.utils import filter_repo_objects

from tl_space.folder.files import (NOT_PUSHED, REPORT_PLOTS, STUDY_FILE, STUDY_FILES, STUDY_PLOTS, differing_settings,
                                   is_model_folder)
from tl_space.settings import REPORTING_SETTINGS, RUN_SETTINGS, TrainSettings


def test_settings_that_only_say_where_a_run_reports_do_not_make_another_run():
    published = TrainSettings().published()
    elsewhere = {**published, "output_dir": "other", "cache_dir": "/x", "push_to_hub": True, "compile": "no"}
    assert differing_settings(published, elsewhere) == []
    assert differing_settings(published, {**published, "epochs": 9, "seed": 1}) == ["epochs", "seed"]
    older = {key: value for key, value in published.items() if key != "probe_solver"}  # a run that predates it
    assert differing_settings(older, published) == []
    assert differing_settings(older, {**published, "probe_solver": "lbfgs"}) == ["probe_solver"]


def test_every_setting_is_either_a_run_setting_or_a_reporting_one():
    assert set(RUN_SETTINGS) | set(REPORTING_SETTINGS) == set(TrainSettings().to_dict())
    assert not set(RUN_SETTINGS) & set(REPORTING_SETTINGS)
    assert {"strategy", "model", "dataset", "epochs", "lr", "seed"} <= set(RUN_SETTINGS)


def test_checkpoints_are_never_pushed_and_the_study_files_are_its_record_card_and_plots():
    files = ["config.json", "checkpoint/progress.json", "checkpoint.old/model.safetensors",
             "runs/lp-ft-all-seed42/checkpoint/optimizer.bin", "runs/lp-ft-all-seed42/metrics.json", *REPORT_PLOTS]
    kept = list(filter_repo_objects(files, ignore_patterns=NOT_PUSHED))
    assert kept == ["config.json", "runs/lp-ft-all-seed42/metrics.json", *REPORT_PLOTS]
    assert STUDY_FILES == [STUDY_FILE, "README.md", *STUDY_PLOTS]


def test_a_model_folder_has_its_config_and_safetensors_weights():
    assert is_model_folder({"config.json", "model.safetensors", "README.md"})
    assert not is_model_folder({"config.json", "pytorch_model.bin"})
    assert not is_model_folder({STUDY_FILE, "README.md"})
