"""Run settings: one dataclass, filled from the command line, written into the model folder."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import torch

from tl_space import strategies
from tl_space.caches import default_cache_dir
from tl_space.errors import UserError



class MixedPrecision(StrEnum):
    AUTO, NO, FP16, BF16 = "auto", "no", "fp16", "bf16"


class CompileMode(StrEnum):
    AUTO, YES, NO = "auto", "yes", "no"


class FlipTTA(StrEnum):
    AUTO, OFF = "auto", "off"


class BatchNormChoice(StrEnum):
    AUTO = "auto"
    PRETRAINED, BATCH = strategies.BatchNormRule.PRETRAINED.value, strategies.BatchNormRule.BATCH.value


class HeadInit(StrEnum):
    ZERO, CLASS_MEANS = "zero", strategies.CLASS_MEANS


class ProbeSolver(StrEnum):
    ADAMW, LBFGS = "adamw", "lbfgs"


class Optimizer(StrEnum):
    ADAMW, NESTEROV = "adamw", "nesterov"


class LRSchedule(StrEnum):
    COSINE, TRIANGLE = "cosine", "triangle"

# --optimizer nesterov without --lr: airbench's learning rate for a summed loss, 11.5 / (1024 (1 + 1 / (1 - 0.85))),
# per image of the batch, as this loop's mean loss needs it (0.375 at batch 256). Its weight decay, 0.0153 per 1024
# images against that lr, is the L2 of PyTorch's SGD 0.0153 / 11.5 at any batch size.
NESTEROV_LR_PER_IMAGE = 11.5 / (1024 * (1 + 1 / (1 - 0.85)))
NESTEROV_WEIGHT_DECAY = 0.0153 / 11.5
# SGD's weight decay is an L2 term scaled by the learning rate and amplified by momentum: above this it shrinks the
# weights by percents per step (AdamW's default, 0.05, is a decoupled decay of another scale).
NESTEROV_MAX_WEIGHT_DECAY = 0.01

# Measured by bench/bench_features.py on a 2-core CPU: batches of 32 run lite0 2-3x faster than 128, and
# torch.compile adds 1.5x or more after 20-45 s of compiling, which 10,000 images repay.
CPU_EVAL_BATCH_SIZE = 32
COMPILE_MIN_IMAGES = 10_000
# What options the user leaves unset become, by machine. A GPU: a full fine-tune of ResNet-18 at its pretrained
# size. A CPU: the best transfer recipe measured within an hour on a 2-core CPU, its training bounded by minutes,
# so a faster CPU trains more epochs, not longer than an hour. The evidence, with its figures and commands, is
# docs/results.md, "A newcomer's first run on this CPU" (2-core AMD EPYC, two seeds each where they decide):
#   Lite2 finetune, 112 px, 57 min budget: 4.6-4.9 epochs fit, 92.76% and 92.71% test in 58.8 min of wall time
#   lite0 finetune, 112 px, 60 min budget: 6.3 epochs, 92.30% in 61.3 min (one seed)
#   lite0 lp-ft, 112 px, 60 min budget: 91.72% in 64.9 min (its frozen features add 3.8 min)
GPU_DEFAULTS = {"model": "resnet18.a1_in1k", "strategy": strategies.FINETUNE, "batch_size": 128, "epochs": 5}
CPU_DEFAULTS = {"model": "tf_efficientnet_lite2", "image_size": 112, "strategy": strategies.FINETUNE, "batch_size": 32,
                "epochs": 10, "max_train_minutes": 57.0}
CPU_DEFAULTS_REASON = ("the best transfer recipe measured within an hour on a 2-core CPU, docs/results.md; "
                       "a GPU's defaults are a full fine-tune of resnet18.a1_in1k at 224 px for 5 epochs")


# Named recipes (--recipe): the options each sets where the command line leaves them unset.
# speedrun: airbench94's design for CIFAR-10 from scratch (tl_space/speedrun_net.py), in this project's loop, whose
# recipe parts are its own options: Nesterov SGD with BatchNorm's shifts at 64x the learning rate, airbench's
# triangular schedule, label smoothing 0.2, lookahead, flip and translate on the device, flip test-time augmentation.
# Its bf16 (2.3x the images/s of fp32 on a CPU with AMX, bench/bench_backbone_step.py) applies only where bf16 is
# native: elsewhere a CPU emulates it, slower than fp32.
RECIPES = {
    "speedrun": {"strategy": strategies.SCRATCH, "model": "tl_speedrun_cnn", "image_size": 32, "batch_size": 256,
                 "epochs": 10, "optimizer": Optimizer.NESTEROV, "lr": round(NESTEROV_LR_PER_IMAGE * 256, 4),
                 "weight_decay": NESTEROV_WEIGHT_DECAY, "lr_schedule": LRSchedule.TRIANGLE, "label_smoothing": 0.2,
                 "lookahead": True, "mixed_precision": "bf16"},
}

# Options for the stages that train on images (all default off); a strategy that trains only a head takes none.
IMAGE_TRAINING_OPTIONS = ("label_smoothing", "mixup", "cutmix", "random_erasing", "ema_decay", "lookahead",
                          "freeze_depthwise", "progressive_resize")


def dataset_hub_id(dataset: str, dataset_id: str | None = None) -> str | None:
    """The Hub id of a dataset: --dataset-id, else --dataset itself when it is no local folder, else the id of the
    Hub cache folder it lies in (.../datasets--OWNER--NAME/snapshots/...); None for any other local folder."""
    if dataset_id:
        return dataset_id
    path = Path(dataset).expanduser()
    if not path.exists():
        return dataset
    for part in path.resolve().parts:
        if part.startswith("datasets--") and part.count("--") == 2:
            return part.removeprefix("datasets--").replace("--", "/")
    return None


def with_machine_defaults(settings: TrainSettings, on_gpu: bool) -> tuple[TrainSettings, dict]:
    """The settings with every unset recipe option set to this machine's default, and the options it set. The image
    size comes with the default model only, the time budget with the default epochs only."""
    picked = {}
    for name, value in (GPU_DEFAULTS if on_gpu else CPU_DEFAULTS).items():
        user_chose = getattr(settings, name) is not None or (
            name == "image_size" and settings.model is not None) or (
            name == "max_train_minutes" and settings.epochs is not None)
        if not user_chose:
            picked[name] = value
    return dataclasses.replace(settings, **picked), picked


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a GPU, or a CPU with AVX-512 BF16 or AMX (oneDNN's test)."""
    return torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def with_recipe(settings: TrainSettings) -> tuple[TrainSettings, dict]:
    """The settings with --recipe's options set where the command line left them unset, and those."""
    if settings.recipe is None:
        return settings, {}
    if settings.recipe not in RECIPES:
        raise UserError(f"--recipe {settings.recipe!r} is not one of {', '.join(RECIPES)}")
    recipe = recipe_options(settings.recipe)
    picked = {name: value for name, value in recipe.items() if left_unset(settings, name)}
    if "lr" in picked and "batch_size" not in picked:  # the recipe's rate is for its batch: scaled linearly, as timm's
        picked["lr"] = round(recipe["lr"] * settings.batch_size / recipe["batch_size"], 6)  # --lr-base-size does
    return dataclasses.replace(settings, **picked), picked


def left_unset(settings: TrainSettings, name: str) -> bool:
    """Whether an option is left for a recipe to set: at its default and not typed on the command line (where
    `--label-smoothing 0` is the user's choice, as in timm's config files; settings built in code have none)."""
    return name not in settings.typed_options and getattr(settings, name) == SETTING_DEFAULTS[name]


def with_optimizer_defaults(settings: TrainSettings) -> tuple[TrainSettings, dict]:
    """With --optimizer nesterov: airbench's learning rate for the batch size where --lr is unset, and its weight
    decay where --weight-decay is left at AdamW's default; and the options it set."""
    if settings.optimizer != Optimizer.NESTEROV:
        return settings, {}
    picked = {}
    if settings.lr is None and settings.batch_size is not None:
        picked["lr"] = NESTEROV_LR_PER_IMAGE * settings.batch_size
    if left_unset(settings, "weight_decay"):
        picked["weight_decay"] = NESTEROV_WEIGHT_DECAY
    return dataclasses.replace(settings, **picked), picked


def recipe_options(recipe: str) -> dict:
    """The options a named recipe sets on this machine."""
    if recipe not in RECIPES:
        raise UserError(f"recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    return {name: value for name, value in RECIPES[recipe].items()
            if not (name == "mixed_precision" and value == MixedPrecision.BF16 and not native_bf16())}


def as_flags(options: dict) -> str:
    """Options as the command line gives them: --name value, floats in their shortest form."""
    return " ".join(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float)
                    else f"--{name.replace('_', '-')} {value}" for name, value in options.items())


def describe_defaults(picked: dict, on_gpu: bool) -> str:
    """One line saying which options took the machine's defaults, and why."""
    why = "a full fine-tune" if on_gpu else CPU_DEFAULTS_REASON
    return (f"unset options take this {'GPU' if on_gpu else 'CPU'}'s defaults: {as_flags(picked)} ({why}); "
            "set any to change it")


def is_option(settings_field: dataclasses.Field) -> bool:
    """Whether a settings field is a command-line option (made by option or mode_option), not a record kept beside."""
    return "help" in settings_field.metadata


def option(default, help: str, run: bool = True, **argparse_kwargs):
    """A settings field with its --help text; run=False for an option that says where or how a run reports or is
    published, not what it computes (a rerun that differs only there is the same run)."""
    return field(default=default, metadata={"help": help, "run": run, **argparse_kwargs})


def mode_option(default: StrEnum, help: str, run: bool = True):
    """A settings field that takes one of an Enum's values: checked (and typed) once, in __post_init__."""
    return field(default=default, metadata={"help": help, "run": run, "mode": type(default),
                                            "metavar": "{" + ",".join(type(default)) + "}"})


def as_mode(mode: type[StrEnum], value: object, name: str) -> StrEnum:
    """value as a member of mode, or a UserError naming the option and what it takes."""
    try:
        return mode(value)
    except ValueError:
        raise UserError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(mode)}") from None


@dataclass
class TrainSettings:
    """Every knob of a training run, with defaults that work."""

    dataset: str = option("uoft-cs/cifar10", "Hub dataset id, or a local folder in the same layout (parquet files or save_to_disk)")
    dataset_id: str | None = option(None, "Hub id of the dataset a local --dataset folder copies (e.g. uoft-cs/cifar10), "
                                     "named in the model folder and card instead of the local folder's name", run=False)
    image_column: str | None = option(None, "image column; if unset, found from the features (img, image, ...)")
    label_column: str | None = option(None, "label column; if unset, found from the features (label, fine_label, ...)")
    train_split: str = option("train", "split to train (and, without a validation split, hold validation images out of)")
    validation_split: str | None = option(None, "split validated on after every epoch; if unset, the dataset's "
                                          "validation, valid or val split, else --val-size images held out of train")
    test_split: str = option("test", "split evaluated once, at the end; a dataset without a test split (a folder of "
                             "class folders) has 20%% of train carved out, stratified and seeded by --split-seed")
    model: str | None = option(None, "any timm model name; its ImageNet weights come from the Hub unless "
                                     "--pretrained-file; if unset, the machine's default (below)")
    pretrained_file: str | None = option(None, "local timm-format weights file (.safetensors) for the backbone")
    recipe: str | None = option(None, "a named recipe: " + ", ".join(RECIPES) + " (speedrun: airbench's network and "
                                "recipe for CIFAR-10 from scratch); it sets the options not typed on the command line, its learning rate "
                                "scaled to --batch-size")
    strategy: str | None = option(None, "what is trained: " + "; ".join(
        f"{s.name}: {s.description}" for s in strategies.STRATEGIES.values())
        + "; if unset, the machine's default (below)", choices=strategies.NAMES)
    unfreeze_stages: int = option(1, "with --strategy partial: how many of the last stages train, besides the head")
    epochs: int | None = option(None, "training epochs (for lp-ft: of the fine-tuning stage); if unset, the "
                                      "machine's default (below)")
    probe_epochs: int = option(10, "with --strategy lp-ft: epochs of the linear-probe stage")
    batch_size: int | None = option(None, "images per batch and process; if unset, the machine's default (below)")
    eval_batch_size: int | None = option(None, "images per batch for features and evaluation; if unset, "
                                          f"{CPU_EVAL_BATCH_SIZE} on a CPU (small batches stay in its caches), --batch-size on a GPU", run=False)
    compile: CompileMode = mode_option(CompileMode.AUTO, "torch.compile the frozen backbone for feature extraction; "
                                       f"auto: on a CPU, for at least {COMPILE_MIN_IMAGES} images, where it pays for "
                                       "its start-up", run=False)
    batchnorm: BatchNormChoice = mode_option(BatchNormChoice.AUTO, "BatchNorm while training: pretrained: normalise with the backbone's ImageNet "
                             "statistics, kept fixed (scale and shift still train), so the features a probe head "
                             "learned stay put when fine-tuning starts; batch: by each batch's statistics, updating "
                             "the running ones (PyTorch's train mode); auto: batch for scratch, else pretrained")
    head_init: HeadInit = mode_option(HeadInit.ZERO, "how a new head on pretrained features starts: zero (uniform predictions) or "
                                    "class-means: each class's weights the normalised mean of its training images' "
                                    "frozen features (weight imprinting, Qi et al. 2018); class-means needs the "
                                    "frozen features of linear-probe or lp-ft")
    probe_solver: ProbeSolver = mode_option(ProbeSolver.ADAMW, "how a head learns on cached features (linear-probe, lp-ft's first stage): "
                                        "adamw: epochs of minibatch steps; lbfgs: multinomial logistic regression by "
                                        "full-batch L-BFGS at each L2 strength of a grid, the one with the best "
                                        "validation accuracy kept (seconds on cached features)")
    patience: int | None = option(None, "stop a stage once validation accuracy has not improved for this many epochs; "
                                        "if unset, every epoch runs")
    lr: float | None = option(None, "peak learning rate (for lp-ft: of the fine-tuning stage); if unset, with AdamW "
                               + ", ".join(f"{s.lr} for {s.name}" for s in strategies.STRATEGIES.values())
                               + f" ({strategies.HEAD_LR} for lp-ft's probe stage), with nesterov airbench's "
                               f"{NESTEROV_LR_PER_IMAGE:.3g} x --batch-size")
    weight_decay: float = option(0.05, "AdamW's decoupled weight decay; with --optimizer nesterov, SGD's L2 term "
                                       f"(airbench: {NESTEROV_WEIGHT_DECAY:.2g}, at most {NESTEROV_MAX_WEIGHT_DECAY})")
    optimizer: Optimizer = mode_option(Optimizer.ADAMW, "training on images: adamw, or nesterov: airbench's SGD with "
                                       "Nesterov momentum 0.85, BatchNorm's parameters at 64x the learning rate (a "
                                       "head on cached features always learns with AdamW)")
    lr_schedule: LRSchedule = mode_option(LRSchedule.COSINE, "cosine: 5%% linear warm-up, then cosine decay to 0; "
                                          "triangle (airbench): linear from 0.2x up to the peak at 23%%, then down "
                                          "to 0.07x; either over the stage's epochs or its time budget")
    label_smoothing: float = option(0.0, "training on images: the share of each target spread over all classes "
                                         "(0.1 is common); 0: off")
    mixup: float = option(0.0, "training on images: mixup's alpha, mixing each batch with its reverse by a factor "
                               "drawn from Beta(alpha, alpha) (timm's Mixup; 0.8 in timm's recipes); 0: off")
    cutmix: float = option(0.0, "training on images: CutMix's alpha, pasting a rectangle of the reversed batch (with "
                                "--mixup, either one per batch at equal odds; 1.0 in timm's recipes); 0: off")
    random_erasing: float = option(0.0, "training on images: the probability that an image gets a rectangle of "
                                        "random noise (timm's RandomErasing; 0.25 in timm's recipes); 0: off")
    ema_decay: float = option(0.0, "training on images: validate, keep and write an exponential moving average of "
                                   "the weights with this decay per step (timm's ModelEmaV3, warmed up), e.g. 0.999; "
                                   "0: the weights themselves")
    lookahead: bool = option(False, "training on images: airbench's lookahead: every 5 steps the weights and their "
                                    "running average both become the average, moved toward the weights by a share "
                                    "that shrinks as training goes (1 - 0.95^5 (progress)^3)")
    progressive_resize: int | None = option(None, "training on images: start at this image size and grow it to "
                                                  "--image-size by three quarters of each stage, in steps of 16 px "
                                                  "(early steps cost less), e.g. 64 with --image-size 96; if unset, off")
    freeze_depthwise: bool = option(False, "training on images: the depthwise convolutions' weights stay as "
                                           "pretrained (their weight gradient is a slow kernel on CPUs)")
    image_size: int | None = option(None, "side of the square input the model sees; if unset, the machine's "
                                          "default with its default model, else the model's pretrained size")
    max_train_minutes: float | None = option(None, "time budget: stop training after this many minutes (validation "
                                              "included; --epochs is then the most it may run) and let the learning "
                                              "rate follow the time spent; if unset, the machine's default when "
                                              "--epochs is unset too, else none")
    seed: int = option(42, "seed for splits, subsets, initialisation and augmentation")
    split_seed: int | None = option(None, "seed of the validation hold-out (and of --max-eval-samples); if unset, "
                                     "--seed. Runs that differ only in --seed then share validation and test images")
    train_fraction: float | None = option(None, "few-shot: keep this fraction of each class's training images, e.g. 0.1")
    shots_per_class: int | None = option(None, "few-shot: keep exactly this many training images per class, e.g. 50")
    val_size: int | None = option(None, "without a validation split: images held out of train for per-epoch validation, stratified; if unset, 10%% of it, at most 5000")
    min_epoch_images: int = option(0, "few-shot: an epoch goes over a small training set again and again until it has "
                                      "shown this many images, so tiny subsets get steps, not just validations; "
                                      "0: each image once per epoch")
    max_train_samples: int | None = option(None, "quick runs: use at most this many training images (stratified)")
    max_eval_samples: int | None = option(None, "quick runs: use at most this many validation and test images each")
    flip_tta: FlipTTA = mode_option(FlipTTA.AUTO, "after training, measure flip test-time augmentation on the test split (reported "
                                   "separately) and let the app use it where it gained at least half a point; "
                                   "off: skip it (saves a pass over the test split)", run=False)
    max_misclassified: int = option(64, "most confident test mistakes saved to misclassified/")
    threads: int | None = option(None, "CPU threads per process; if unset, on a CPU this machine's cores divided among "
                                       "its processes (`accelerate launch` alone would leave one)", run=False)
    mixed_precision: MixedPrecision = mode_option(MixedPrecision.AUTO, "auto: bf16 on a GPU that has it, else what "
                                                  "accelerate launch was told, else fp32")
    report_to: str | None = option(None, "accelerate trackers for per-epoch metrics, comma-separated: tensorboard, wandb, trackio, "
                                   "mlflow, ... or all; their local files are kept in the model folder's logs/", run=False)
    cache_dir: str = option(default_cache_dir(), "where reruns find what earlier runs computed: the decoded images "
                                                  "(images/) and, for linear-probe and lp-ft, the frozen backbone's "
                                                  "features (features/); none: off", run=False)
    output_dir: str = option("runs/cifar10", "where the model folder is written", run=False)
    overwrite: bool = option(False, "replace an --output-dir that holds a different run", run=False)
    resume: bool = option(False, "continue the run in --output-dir from its last saved epoch (saved after every epoch)", run=False)
    push_to_hub: bool = option(False, "upload the model folder to the Hugging Face Hub after training "
                                       "(the token is checked before training starts)", run=False)
    hub_model_id: str | None = option(None, "OWNER/NAME of the model repo to push to; required with --push-to-hub (no default)", run=False)
    private: bool = option(False, "with --push-to-hub: create the repo private", run=False)
    # The options typed on the command line, even at their defaults: a recipe leaves them alone (no --option itself).
    typed_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for settings_field in dataclasses.fields(self):  # the one check of every mode, from argparse or from code
            if "mode" in settings_field.metadata:
                setattr(self, settings_field.name, as_mode(settings_field.metadata["mode"],
                                                           getattr(self, settings_field.name), settings_field.name))

    def to_dict(self) -> dict:
        """The options' plain values: each mode as its string."""
        values = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if is_option(f)]
        return {name: value.value if isinstance(value, StrEnum) else value for name, value in values}

    def published(self) -> dict:
        """The settings as a model folder records them, with no path of this machine: the dataset by its Hub id
        (or a local folder's name), local weights and model folders by their names, where the run wrote by its
        folder's name, and no cache folder."""
        values = self.to_dict()
        values["dataset"] = dataset_hub_id(self.dataset, self.dataset_id) or Path(self.dataset).name
        if self.pretrained_file is not None:
            values["pretrained_file"] = Path(self.pretrained_file).name
        if self.model and self.model.startswith("local-dir:"):
            values["model"] = "local-dir:" + Path(self.model.removeprefix("local-dir:")).name
        values["output_dir"] = Path(self.output_dir).name
        values["cache_dir"] = None
        return values


# The settings that change what a run computes; the others say where or how it reports.
RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainSettings) if is_option(f) and f.metadata["run"])
REPORTING_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainSettings) if is_option(f) and not f.metadata["run"])
# Settings newer than a run folder read as their defaults there: each new one defaults to what runs did before it.
SETTING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainSettings) if f.default is not dataclasses.MISSING}


def _argument_type(annotation: str):
    """The callable argparse converts a value with, from the field's (string) annotation."""
    for name, convert in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return convert
    return str


def add_arguments(parser: argparse.ArgumentParser, settings_class: type, exclude: typing.Collection[str] = (),
                  defaults: bool = True) -> None:
    """One --option per field of a settings dataclass (but those in exclude), with its help and (with defaults) its
    default; a bool as --option and --no-option."""
    for settings_field in dataclasses.fields(settings_class):
        if settings_field.name in exclude or not is_option(settings_field):
            continue
        flag = "--" + settings_field.name.replace("_", "-")
        extra = {k: v for k, v in settings_field.metadata.items() if k not in ("help", "run", "mode")}
        if defaults:
            extra["default"] = settings_field.default
        if settings_field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=settings_field.metadata["help"],
                                **extra)
            continue
        parser.add_argument(flag, type=_argument_type(settings_field.type), help=settings_field.metadata["help"], **extra)


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with one --option per TrainSettings field, its default shown; without defaults, one whose
    namespace holds only the options typed."""
    parser = argparse.ArgumentParser(
        description="Fine-tune an ImageNet-pretrained timm model on an image classification dataset "
                    "and write a complete model folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    add_arguments(parser, TrainSettings, defaults=defaults)
    return parser


def parse_settings(argv: typing.Sequence[str] | None = None) -> TrainSettings:
    """TrainSettings from command-line arguments (sys.argv when argv is None), knowing which were typed."""
    namespace = build_parser().parse_args(argv)
    typed = build_parser(defaults=False).parse_args(argv)
    return TrainSettings(**vars(namespace), typed_options=tuple(sorted(vars(typed))))


def check_settings(settings: TrainSettings) -> None:
    """Stop before any work on a value that can never be right, naming it and what is accepted."""
    if settings.strategy not in strategies.NAMES:
        raise UserError(f"--strategy {settings.strategy!r} is not one of {', '.join(strategies.NAMES)}")
    chosen = strategies.STRATEGIES[settings.strategy]
    if settings.head_init == HeadInit.CLASS_MEANS and not chosen.probe_first:
        raise UserError(f"--head-init class-means needs the frozen features of a probe; --strategy {settings.strategy} "
                        "has none: use linear-probe or lp-ft, or --head-init zero")
    positive = ("epochs", "batch_size", "eval_batch_size", "unfreeze_stages", "image_size", "shots_per_class", "val_size",
                "max_train_samples", "max_eval_samples", "lr", "max_train_minutes", "patience", "threads",
                "progressive_resize")
    for name in positive:
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} {value} must be greater than 0")
    if chosen.probe_first and not chosen.frozen_backbone and settings.probe_epochs <= 0:
        raise UserError(f"--probe-epochs {settings.probe_epochs} must be greater than 0 with --strategy lp-ft")
    if settings.train_fraction is not None and not 0 < settings.train_fraction <= 1:
        raise UserError(f"--train-fraction {settings.train_fraction} must be in (0, 1], e.g. 0.1 for 10%")
    if settings.train_fraction is not None and settings.shots_per_class is not None:
        raise UserError("--train-fraction and --shots-per-class both pick a few-shot subset; give one of them")
    if settings.dataset_id is not None and (settings.dataset_id.count("/") != 1 or not all(settings.dataset_id.split("/"))):
        raise UserError(f"--dataset-id {settings.dataset_id!r} is not a Hub dataset id; give OWNER/NAME, e.g. uoft-cs/cifar10")
    for name, value, interval, example in (("label_smoothing", settings.label_smoothing, "[0, 1)", 0.1),
                                            ("ema_decay", settings.ema_decay, "[0, 1)", 0.999),
                                            ("random_erasing", settings.random_erasing, "[0, 1]", 0.25)):
        if not 0 <= value <= 1 or (value == 1 and interval.endswith(")")):
            raise UserError(f"--{name.replace('_', '-')} {value} must be in {interval}, e.g. {example} (0: off)")
    if settings.optimizer == Optimizer.NESTEROV and settings.weight_decay > NESTEROV_MAX_WEIGHT_DECAY:
        raise UserError(f"--weight-decay {settings.weight_decay:g} with --optimizer nesterov: SGD's weight decay is an "
                        f"L2 term scaled by the learning rate; give at most {NESTEROV_MAX_WEIGHT_DECAY} (airbench: "
                        f"{NESTEROV_WEIGHT_DECAY:.2g})")
    if settings.mixup < 0 or settings.cutmix < 0:
        raise UserError("--mixup and --cutmix are Beta distributions' alpha and must not be negative (0: off)")
    used = [f"--{name.replace('_', '-')}" for name in IMAGE_TRAINING_OPTIONS if getattr(settings, name)]
    if chosen.image_stage is None and used:
        raise UserError(f"{', '.join(used)} act on training with images; --strategy {settings.strategy} trains only a "
                        "head on cached features: use lp-ft, finetune, partial or scratch")
    if settings.max_misclassified < 0 or settings.weight_decay < 0 or settings.min_epoch_images < 0:
        raise UserError("--max-misclassified, --weight-decay and --min-epoch-images must not be negative")
