"""training/run.py's plan: every option resolved once into the plain values the run's steps take, before any work."""

import json

import pytest
import torch
from accelerate import Accelerator

from conftest import CLASS_NAMES
from support.runs import tiny_settings
from tl_space.errors import UserError
from tl_space.settings import HeadInit, ProbeSolver, TrainSettings
from tl_space.strategies import STRATEGIES
from tl_space.training.run import check_output_dir, plan_run, planned_sizes, resolve


def test_the_plan_holds_every_value_the_run_reads(tiny_dataset, pretrained_file, tmp_path):
    settings = tiny_settings(tiny_dataset, tmp_path / "out", pretrained_file, strategy="lp-ft", head_init="class-means",
                             probe_solver="lbfgs", flip_tta="off", shots_per_class=5, label_smoothing=0.1)
    plan = plan_run(settings, Accelerator(cpu=True))
    assert plan.strategy is STRATEGIES["lp-ft"] and [stage.name for stage in plan.stages] == ["linear-probe", "finetune"]
    assert plan.head_init is HeadInit.CLASS_MEANS and plan.probe_solver is ProbeSolver.LBFGS
    assert not plan.measure_flip_tta and plan.regularisation.label_smoothing == 0.1
    assert plan.data.shots_per_class == 5 and plan.output_dir == tmp_path / "out" and plan.hub_model_id is None
    assert plan.published_settings == settings.published()  # computed once, as the folder records it
    assert json.loads(json.dumps(plan.published_settings))["head_init"] == "class-means"
    assert plan.threads >= 1 and plan.eval_batch_size == 32 and plan.tracker_config is None


def test_class_means_always_imprints_and_never_trains(tiny_dataset, pretrained_file, tmp_path):
    plan = resolve(tiny_settings(tiny_dataset, tmp_path, pretrained_file, strategy="class-means"), torch.device("cpu"))
    assert plan.stages == [] and plan.head_init is HeadInit.CLASS_MEANS


def test_the_planned_sizes_are_the_runs_splits_from_the_labels_alone(tiny_dataset, pretrained_file, tmp_path):
    plan = resolve(tiny_settings(tiny_dataset, tmp_path, pretrained_file, shots_per_class=3), torch.device("cpu"))
    opened = plan.data.open()
    assert opened.class_names == CLASS_NAMES
    assert planned_sizes(opened, plan.data) == (3 * len(CLASS_NAMES), 30, 12 * len(CLASS_NAMES))


def test_an_output_dir_holding_another_run_is_refused_naming_the_difference(tiny_dataset, pretrained_file, tmp_path):
    folder = tmp_path / "previous"
    folder.mkdir()
    previous = tiny_settings(tiny_dataset, folder, pretrained_file).published()
    (folder / "metrics.json").write_text(json.dumps({
        "settings": previous, "test": {"accuracy": 0.5, "loss": 1.0, "num_images": 1, "best_epoch": 1,
                                       "most_confused": [], "per_class_accuracy": {}},
        "data": {"train_images": 1}, "history": [], "preprocessing": {"image_size": 32}}))
    same = check_output_dir(folder, previous, overwrite=False, resume=False)
    assert same == folder
    other = tiny_settings(tiny_dataset, folder, pretrained_file, epochs=5).published()
    with pytest.raises(UserError, match="holds a different run \\(epochs: 2 -> 5\\)"):
        check_output_dir(folder, other, overwrite=False, resume=False)
    (folder / "metrics.json").write_text("[]")
    with pytest.raises(UserError, match="metrics.json of 'previous' holds a list"):
        check_output_dir(folder, previous, overwrite=False, resume=False)


def test_settings_that_can_never_be_right_stop_the_plan():
    with pytest.raises(UserError, match="--head-init class-means needs the frozen features of a probe"):
        plan_run(TrainSettings(strategy="finetune", head_init="class-means", epochs=1, model="test_resnet",
                               batch_size=8), Accelerator(cpu=True))
