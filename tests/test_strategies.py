"""The strategies table: what each strategy trains, in which stages, at which learning rate, with which BatchNorm."""

import pytest

from tl_space.settings import CPU_DEFAULTS, GPU_DEFAULTS, build_parser, parse_settings
from tl_space.strategies import HEAD_LR, NAMES, PROBE_STAGE, STRATEGIES, keeps_batchnorm_statistics, stages, strategy_named


def _stages(name: str, lr: float | None = None) -> list[tuple[str, bool, int, float]]:
    return [(stage.name, stage.on_features, stage.epochs, stage.lr) for stage in stages(STRATEGIES[name], 5, 3, lr)]


def test_each_strategy_trains_its_stages_at_its_learning_rate():
    assert _stages("scratch") == [("scratch", False, 5, 1e-3)]
    assert _stages("linear-probe") == [(PROBE_STAGE, True, 5, HEAD_LR)]
    assert _stages("partial") == [("partial", False, 5, 3e-4)]
    assert _stages("finetune") == [("finetune", False, 5, 1e-4)]
    assert _stages("lp-ft") == [(PROBE_STAGE, True, 3, HEAD_LR), ("finetune", False, 5, 1e-4)]
    assert _stages("class-means") == []


def test_lr_sets_the_last_stage_only():
    assert _stages("lp-ft", lr=5e-5) == [(PROBE_STAGE, True, 3, HEAD_LR), ("finetune", False, 5, 5e-5)]
    assert _stages("linear-probe", lr=0.01) == [(PROBE_STAGE, True, 5, 0.01)]


def test_only_scratch_starts_from_random_weights_and_only_the_probe_keeps_the_backbone_frozen():
    assert [name for name in NAMES if not STRATEGIES[name].pretrained] == ["scratch"]
    assert [name for name in NAMES if STRATEGIES[name].frozen_backbone] == ["linear-probe", "class-means"]
    assert [name for name in NAMES if not STRATEGIES[name].trains_at_all] == ["class-means"]
    assert {STRATEGIES[name].trains for name in NAMES} == {"all", "head", "last stages"}


def test_batchnorm_option_resolves_by_strategy():
    assert not keeps_batchnorm_statistics(STRATEGIES["scratch"], "auto")
    assert all(keeps_batchnorm_statistics(STRATEGIES[name], "auto") for name in NAMES if name != "scratch")
    assert not keeps_batchnorm_statistics(STRATEGIES["finetune"], parse_settings(["--batchnorm", "batch"]).batchnorm)
    assert keeps_batchnorm_statistics(STRATEGIES["scratch"], "pretrained")
    assert keeps_batchnorm_statistics(STRATEGIES["linear-probe"], "batch")  # a frozen backbone


@pytest.mark.parametrize("value", ["Scratch", "", None, 3, ["finetune"]])
def test_names_read_from_a_folder_that_are_no_strategy_give_none(value):
    assert strategy_named(value) is None


def test_the_command_line_offers_exactly_the_table():
    strategy_option = next(action for action in build_parser()._actions if action.dest == "strategy")
    assert tuple(strategy_option.choices) == NAMES
    assert {defaults["strategy"] for defaults in (CPU_DEFAULTS, GPU_DEFAULTS)} <= set(NAMES)
    assert all(STRATEGIES[name].description in strategy_option.help for name in NAMES)


def test_the_predicates_the_report_asks_name_each_strategy_by_what_it_does():
    assert [name for name in NAMES if STRATEGIES[name].fits_probe] == ["linear-probe"]
    assert [name for name in NAMES if STRATEGIES[name].fine_tunes_everything] == ["finetune", "lp-ft"]
    assert [name for name in NAMES if STRATEGIES[name].fine_tunes_from_probe] == ["lp-ft"]
