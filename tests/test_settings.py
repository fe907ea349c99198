"""The command line: one option per settings field, with its default."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tl_space.errors import UserError
from tl_space.settings import (CPU_DEFAULTS, GPU_DEFAULTS, NESTEROV_LR_PER_IMAGE, NESTEROV_WEIGHT_DECAY, TrainSettings,
                               check_settings, describe_defaults, parse_settings, with_machine_defaults,
                               with_optimizer_defaults, with_recipe)

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_option_with_its_default():
    parser_help = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                                 check=True, env={**os.environ, "COLUMNS": "300"}).stdout
    for option in ("--dataset", "--model", "--pretrained-file", "--strategy", "--unfreeze-stages", "--epochs",
                   "--batch-size", "--lr", "--weight-decay", "--image-size", "--seed", "--train-fraction",
                   "--shots-per-class", "--val-size", "--max-train-samples", "--max-eval-samples", "--output-dir",
                   "--image-column", "--label-column", "--report-to", "--max-misclassified"):
        assert option in parser_help
    assert "(default: uoft-cs/cifar10)" in parser_help and "the machine's default" in parser_help
    assert parse_settings([]) == TrainSettings()


def test_unset_options_take_the_machines_recipe_and_set_ones_are_kept():
    on_cpu, picked = with_machine_defaults(TrainSettings(), on_gpu=False)
    assert picked == CPU_DEFAULTS and on_cpu.model == "tf_efficientnet_lite2"
    assert (on_cpu.strategy, on_cpu.image_size, on_cpu.epochs, on_cpu.max_train_minutes) == ("finetune", 112, 10, 57.0)
    on_gpu, picked = with_machine_defaults(TrainSettings(), on_gpu=True)
    assert picked == GPU_DEFAULTS and (on_gpu.model, on_gpu.strategy, on_gpu.epochs) == ("resnet18.a1_in1k", "finetune", 5)
    assert on_gpu.image_size is None and on_gpu.max_train_minutes is None  # the model's own size, no time budget
    # A model of the user's own keeps its own size; epochs of the user's own bring no time budget.
    chosen, picked = with_machine_defaults(parse_settings(["--model", "resnet50", "--epochs", "3"]), on_gpu=False)
    assert (chosen.model, chosen.image_size, chosen.epochs, chosen.max_train_minutes) == ("resnet50", None, 3, None)
    assert set(picked) == {"strategy", "batch_size"}
    assert with_machine_defaults(chosen, on_gpu=True) == (chosen, {})  # resolved once: nothing left to pick
    line = describe_defaults(picked, on_gpu=False)
    assert "--strategy finetune --batch-size 32" in line and "within an hour" in line


def test_modes_are_typed_once_and_a_wrong_one_is_named_with_its_choices():
    import pytest

    from tl_space.errors import UserError
    from tl_space.settings import FlipTTA, HeadInit, ProbeSolver

    settings = parse_settings(["--head-init", "class-means", "--probe-solver", "lbfgs", "--flip-tta", "off"])
    assert settings.head_init is HeadInit.CLASS_MEANS and settings.probe_solver is ProbeSolver.LBFGS
    assert settings.flip_tta is FlipTTA.OFF
    assert settings.to_dict()["head_init"] == "class-means" and type(settings.to_dict()["head_init"]) is str
    with pytest.raises(UserError, match="--probe-solver 'sgd' is not one of adamw, lbfgs"):
        parse_settings(["--probe-solver", "sgd"])
    with pytest.raises(UserError, match="--mixed-precision 'fp8' is not one of auto, no, fp16, bf16"):
        TrainSettings(mixed_precision="fp8")  # from code too
    result = subprocess.run([sys.executable, "train.py", "--compile", "always"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --compile 'always' is not one of auto, yes, no" in result.stderr


def test_nesterov_takes_airbenchs_lr_for_the_batch_and_its_weight_decay_where_unset():
    settings, picked = with_optimizer_defaults(parse_settings(["--optimizer", "nesterov", "--batch-size", "512"]))
    assert picked == {"lr": pytest.approx(NESTEROV_LR_PER_IMAGE * 512), "weight_decay": NESTEROV_WEIGHT_DECAY}
    assert settings.lr == pytest.approx(0.75, abs=0.01)  # airbench's 1.5 at its batch of 1024, per image
    settings, picked = with_optimizer_defaults(parse_settings(["--optimizer", "nesterov", "--batch-size", "64",
                                                               "--lr", "0.1", "--weight-decay", "0.001"]))
    assert picked == {} and (settings.lr, settings.weight_decay) == (0.1, 0.001)
    assert with_optimizer_defaults(parse_settings(["--batch-size", "64"]))[1] == {}  # AdamW: as it was


def test_a_weight_decay_of_adamws_scale_with_nesterov_is_refused_by_name():
    with pytest.raises(UserError, match="--weight-decay 0.02 with --optimizer nesterov"):
        check_settings(parse_settings(["--optimizer", "nesterov", "--weight-decay", "0.02", "--strategy", "scratch"]))
    with pytest.raises(UserError, match="--lr-schedule 'linear' is not one of cosine, triangle"):
        parse_settings(["--lr-schedule", "linear"])


def test_a_recipes_learning_rate_scales_with_the_users_batch_size():
    """As timm's --lr-base-size: the speedrun recipe's rate is airbench's per image, so another batch scales it."""
    settings, picked = with_recipe(parse_settings(["--recipe", "speedrun", "--batch-size", "512"]))
    assert settings.batch_size == 512 and "batch_size" not in picked
    assert settings.lr == pytest.approx(NESTEROV_LR_PER_IMAGE * 512) == pytest.approx(0.75)
    assert with_recipe(parse_settings(["--recipe", "speedrun"]))[0].lr == 0.375  # the recipe's own batch: as written
    assert with_recipe(parse_settings(["--recipe", "speedrun", "--batch-size", "512", "--lr", "0.1"]))[0].lr == 0.1


def test_an_option_typed_on_the_command_line_wins_over_the_recipe_even_at_its_default():
    """As timm's config files: a recipe sets what the command line left unset. --label-smoothing 0, --no-lookahead
    and --mixed-precision auto are what the user asked for, though each equals the option's default."""
    argv = ["--recipe", "speedrun", "--label-smoothing", "0", "--no-lookahead", "--mixed-precision", "auto"]
    settings, picked = with_recipe(parse_settings(argv))
    assert (settings.label_smoothing, settings.lookahead, settings.mixed_precision) == (0.0, False, "auto")
    assert {"label_smoothing", "lookahead", "mixed_precision"}.isdisjoint(picked)
    assert settings.optimizer == "nesterov" and settings.lr_schedule == "triangle"  # the rest still from the recipe
    assert "typed_options" not in settings.to_dict() and "typed_options" not in settings.published()  # no option
    assert with_recipe(parse_settings(["--recipe", "speedrun"]))[0].lookahead is True
    assert parse_settings(["--lookahead"]).lookahead is True and parse_settings([]).lookahead is False
    # The same for --optimizer nesterov's weight decay: AdamW's 0.05, typed, is refused by name, not replaced.
    settings, picked = with_optimizer_defaults(parse_settings(["--optimizer", "nesterov", "--weight-decay", "0.05"]))
    assert settings.weight_decay == 0.05 and "weight_decay" not in picked
    with pytest.raises(UserError, match="--weight-decay 0.05 with --optimizer nesterov"):
        check_settings(dataclasses.replace(settings, strategy="scratch"))
    # Settings built in code have no command line: an option at its default is unset there, as before.
    assert with_recipe(TrainSettings(recipe="speedrun", label_smoothing=0.0))[0].label_smoothing == 0.2
