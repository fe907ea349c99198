"""Study mode: when does transfer learning work? Every strategy at every few-shot size and budget, one command.

    accelerate launch -m tl_space.study --strategies scratch,linear-probe,partial,finetune,lp-ft \\
        --shots-per-class 1,5,10,50,500,all --model ... --output-dir studies/cifar10
    accelerate launch -m tl_space.study --budget minutes --minutes 1,5,15,60 --scratch-recipe speedrun ...

Each run is a normal model folder under <output-dir>/runs/; study.json, the plots and README.md sit beside them.
Rerunning the command skips finished runs and resumes an interrupted one from its last epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from tl_space import hub
from tl_space import data as data_module
from tl_space.errors import UserError, exit_code
from tl_space.folder.files import CHECKPOINT_DIR, RUNS_DIR, differing_settings
from tl_space.folder.metrics import read_metrics
from tl_space.folder.study import ALL_SHOTS, Shots, StudyRow, shots_order, study_row
from tl_space.settings import (IMAGE_TRAINING_OPTIONS, RECIPES, SETTING_DEFAULTS, MixedPrecision, TrainSettings,
                              add_arguments, check_settings, describe_defaults, option, recipe_options,
                              with_machine_defaults)
from tl_space.strategies import NAMES, STRATEGIES
from tl_space.study.report import write_study_files
from tl_space.training import checkpoint
from tl_space.training.precision import accelerator_precision, shared_precision
from tl_space.training.run import make_accelerator, run

BUDGETS = ("epochs", "minutes")
# The study's budget, not the recipe's, decides how long its scratch runs train.
SCRATCH_RECIPE_SKIPS = ("strategy", "epochs")
STUDY_MIN_EPOCH_IMAGES = 2048
# Training options the study sets per run (or for the whole study folder), so they are not options of the study.
STUDY_DECIDES = ("strategy", "shots_per_class", "train_fraction", "max_train_minutes", "split_seed", "output_dir",
                 "resume", "push_to_hub", "hub_model_id", "private")


@dataclass
class StudySettings:
    """What a study compares and under which budget; training holds the options every run shares."""

    strategies: str = option(",".join(NAMES), "comma-separated strategies to compare")
    shots_per_class: str = option("1,5,10,50,500,all", "comma-separated training images per class; all: every "
                                  "training image. Sizes larger than the smallest class are skipped")
    seeds: int = option(3, "runs (with seeds --seed, --seed+1, ...) of each shot size up to --repeat-up-to; "
                           "the validation and test images stay the same")
    repeat_up_to: int = option(10, "shot sizes up to this many images per class are run --seeds times, larger once")
    budget: str = option("epochs", "what every run gets the same amount of: epochs (--epochs; lp-ft also "
                                   "--probe-epochs) or minutes (--minutes of training each; --epochs is then a cap)",
                         choices=BUDGETS)
    minutes: str = option("5", "with --budget minutes: comma-separated training minutes per run, validation "
                               "included; every strategy runs at each (e.g. 1,5,15,60)")
    few_shot_minutes: float = option(5.0, "with --budget minutes: few-shot sizes run at the budgets up to this many "
                                          "minutes only; all images run at every budget")
    scratch_recipe: str | None = option(None, "a named recipe of --recipe for the scratch runs (speedrun: airbench's "
                                        "network and recipe); it replaces --scratch-model and --scratch-image-size")
    scratch_model: str | None = option("tl_scratch_cnn", "the model scratch runs train (a network built for small "
                                       "images: tl_scratch_cnn); none: the shared --model")
    scratch_image_size: int | None = option(32, "the image size of scratch runs; 0: the shared --image-size")
    output_dir: str = option("studies/cifar10", "the study folder: study.json, plots, README.md, and runs/<run>/")
    push_to_hub: bool = option(False, "upload the whole study folder to the Hub as one model repo at the end")
    hub_model_id: str | None = option(None, "OWNER/NAME of the repo to push the study to")
    private: bool = option(False, "with --push-to-hub: create the repo private")
    training: TrainSettings = field(default_factory=TrainSettings)


@dataclass(frozen=True)
class PlannedRun:
    strategy: str
    shots: Shots
    seed: int
    minutes: float | None = None  # its training budget with --budget minutes; None: the epochs budget

    @property
    def name(self) -> str:
        shots = ALL_SHOTS if self.shots == ALL_SHOTS else f"{self.shots}shot"
        budget = "" if self.minutes is None else f"-{self.minutes:g}min"
        return f"{RUNS_DIR}/{self.strategy}-{shots}{budget}-seed{self.seed}"

    def row(self, metrics: dict) -> StudyRow:
        return study_row(self.name, self.strategy, self.shots, self.seed, self.minutes, metrics)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelerate launch -m tl_space.study", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, StudySettings)
    add_arguments(parser.add_argument_group("training options, the same for every run (as in train.py)"),
                  TrainSettings, exclude=STUDY_DECIDES)
    # A 1-shot CIFAR-10 subset is 10 images: one step per epoch would leave it untrained within any epoch budget.
    parser.set_defaults(min_epoch_images=STUDY_MIN_EPOCH_IMAGES)
    return parser


def parse_study_settings(argv: typing.Sequence[str] | None = None) -> StudySettings:
    """StudySettings (with their TrainSettings) from command-line arguments."""
    values = vars(build_parser().parse_args(argv))
    study_names = {settings_field.name for settings_field in dataclasses.fields(StudySettings)} - {"training"}
    training_settings = TrainSettings(**{name: value for name, value in values.items() if name not in study_names})
    return StudySettings(**{name: values[name] for name in study_names}, training=training_settings)


def parse_strategies(text: str) -> list[str]:
    strategies = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in strategies if name not in NAMES]
    if unknown or not strategies:
        raise UserError(f"--strategies {text!r}: {', '.join(unknown) or 'none given'}; pick from {', '.join(NAMES)}")
    return strategies


def parse_shots(text: str) -> list[Shots]:
    """Shot sizes, smallest first, all last."""
    shots: set[Shots] = set()
    for part in (part.strip() for part in text.split(",") if part.strip()):
        if part == ALL_SHOTS:
            shots.add(ALL_SHOTS)
        elif part.isdigit() and int(part) > 0:
            shots.add(int(part))
        else:
            raise UserError(f"--shots-per-class {text!r}: {part!r} is neither a positive whole number nor 'all'")
    if not shots:
        raise UserError("--shots-per-class is empty; give sizes such as 1,5,10,50,500,all")
    return sorted(shots, key=shots_order)


def parse_minutes(text: str) -> list[float]:
    """Budgets in minutes, smallest first."""
    budgets = set()
    for part in (part.strip() for part in str(text).split(",") if part.strip()):
        try:
            minutes = float(part)
        except ValueError:
            minutes = math.nan
        if not math.isfinite(minutes) or minutes <= 0:
            raise UserError(f"--minutes {text!r}: {part!r} is not a positive number of minutes")
        budgets.add(minutes)
    if not budgets:
        raise UserError("--minutes is empty; give budgets such as 1,5,15,60")
    return sorted(budgets)


def budgets_of(study: StudySettings) -> list[float | None]:
    """Each budget every strategy runs at: minutes, or the one epochs budget (None)."""
    return parse_minutes(study.minutes) if study.budget == "minutes" else [None]


def check_study(study: StudySettings) -> None:
    """Stop before any work on study options that can never be right."""
    parse_strategies(study.strategies)
    parse_shots(study.shots_per_class)
    if study.budget not in BUDGETS:
        raise UserError(f"--budget {study.budget!r} is not one of {', '.join(BUDGETS)}")
    parse_minutes(study.minutes)
    if study.seeds <= 0 or study.repeat_up_to < 0 or not study.few_shot_minutes > 0:
        raise UserError("--seeds and --few-shot-minutes must be greater than 0, --repeat-up-to not negative")
    if study.scratch_recipe is not None and study.scratch_recipe not in (*RECIPES, "none"):
        raise UserError(f"--scratch-recipe {study.scratch_recipe!r} is not one of {', '.join(RECIPES)}")
    if study.training.recipe is not None:
        raise UserError(f"--recipe {study.training.recipe} sets one run's strategy and model; a study's runs take theirs "
                        "from --strategies, its scratch row from --scratch-recipe (e.g. speedrun) or --scratch-model "
                        "and --scratch-image-size")
    for settings in each_strategy_settings(study):  # each as its runs will be set up
        check_settings(settings)
    study_precision(study)


def each_strategy_settings(study: StudySettings) -> list[TrainSettings]:
    """One run's settings per strategy (all images, the first budget): what differs between strategies."""
    return [run_settings(study, PlannedRun(strategy, ALL_SHOTS, study.training.seed, budgets_of(study)[0]))
            for strategy in parse_strategies(study.strategies)]


def study_precision(study: StudySettings) -> str:
    """The one precision of the accelerator every run shares (a run's precision depends on its strategy only)."""
    return shared_precision([str(settings.mixed_precision) for settings in each_strategy_settings(study)])


def plan_runs(study: StudySettings, smallest_class: int) -> tuple[list[PlannedRun], list[str]]:
    """Every (strategy, shots, seed, budget) to run, smallest budget first, and a note for each shot size the data
    cannot give."""
    runs, skipped = [], []
    base_seed = study.training.seed
    shot_sizes = []
    for shots in parse_shots(study.shots_per_class):
        if shots != ALL_SHOTS and shots > smallest_class:
            skipped.append(f"{shots} images per class: the smallest class has {smallest_class} for training")
        else:
            shot_sizes.append(shots)
    for minutes in budgets_of(study):
        for shots in shot_sizes:
            if shots != ALL_SHOTS and minutes is not None and minutes > study.few_shot_minutes:
                continue
            repeats = study.seeds if shots != ALL_SHOTS and shots <= study.repeat_up_to else 1
            for strategy in parse_strategies(study.strategies):
                runs += [PlannedRun(strategy, shots, base_seed + repeat, minutes) for repeat in range(repeats)]
    return runs, skipped


def smallest_training_class(training_settings: TrainSettings) -> int:
    """Images in the smallest class after the validation hold-out: the largest shot size the data allows."""
    opened = data_module.open_splits(
        training_settings.dataset, training_settings.image_column, training_settings.label_column,
        training_settings.train_split, training_settings.validation_split, training_settings.test_split,
        carve_seed=training_settings.seed)
    labels = torch.tensor(opened.train[opened.label_column], dtype=torch.int64)
    class_sizes = torch.bincount(labels, minlength=len(opened.class_names))
    if opened.validation is not None:  # validated on its own split: nothing is held out of train
        return int(class_sizes.min())
    val_size = training_settings.val_size or data_module.default_val_size(len(labels))
    return int((class_sizes - data_module.stratified_counts(labels, len(opened.class_names), val_size)).min())


def run_settings(study: StudySettings, planned: PlannedRun) -> TrainSettings:
    """The run's TrainSettings: the shared ones, with this run's strategy, shots and seed, and one split seed for all."""
    run_dir = Path(study.output_dir) / planned.name
    strategy = STRATEGIES[planned.strategy]
    own = {} if strategy.probe_first else {"head_init": "zero"}  # --head-init class-means: for the probes only
    if strategy.image_stage is None:  # regularisation of training on images: for the strategies that do
        own.update({name: SETTING_DEFAULTS[name] for name in IMAGE_TRAINING_OPTIONS})
    recipe = recipe_options(study.scratch_recipe) if study.scratch_recipe in RECIPES else {}
    if not strategy.pretrained and recipe:  # scratch: the recipe's network, size and options, the study's budget
        own.update({name: value for name, value in recipe.items() if name not in SCRATCH_RECIPE_SKIPS},
                   pretrained_file=None)
    elif not strategy.pretrained:  # scratch: a network and size of its own, as in the classic baselines
        if study.scratch_model and study.scratch_model.lower() != "none":
            own.update(model=study.scratch_model, pretrained_file=None)
        if study.scratch_image_size:
            own.update(image_size=study.scratch_image_size)
    elif recipe.get("mixed_precision") and study.training.mixed_precision == MixedPrecision.AUTO:
        # The runs share one accelerator, in the scratch recipe's precision: the others keep this machine's own.
        own.update(mixed_precision=accelerator_precision(MixedPrecision.AUTO) or MixedPrecision.NO)
    return dataclasses.replace(
        study.training, **own, strategy=planned.strategy,
        shots_per_class=None if planned.shots == ALL_SHOTS else planned.shots, train_fraction=None,
        seed=planned.seed, split_seed=study.training.seed, output_dir=str(run_dir),
        max_train_minutes=planned.minutes,
        resume=checkpoint.find_checkpoint(run_dir / CHECKPOINT_DIR) is not None,
        push_to_hub=False, hub_model_id=None, private=False)


def finished_metrics(settings: TrainSettings) -> dict | None:
    """The metrics of a finished run with these same settings in settings.output_dir, else None."""
    if settings.resume:
        return None
    metrics = read_metrics(Path(settings.output_dir), Path(settings.output_dir).name)
    return None if not metrics or differing_settings(metrics["settings"], settings.published()) else metrics


def run_study(study: StudySettings) -> Path:
    """Run (or skip, or resume) every planned run, keeping study.json, the plots and README.md current."""
    check_study(study)
    output_dir = Path(study.output_dir)
    if study.push_to_hub:  # before hours of training, as train.py does
        hub.check_push_access(study.hub_model_id)
    runs, skipped = plan_runs(study, smallest_training_class(study.training))
    if not runs:
        raise UserError(f"--shots-per-class {study.shots_per_class!r} leaves nothing to run: " + "; ".join(skipped))
    # One accelerator for all runs (one process group); the dataset decoded once for every run.
    accelerator: Accelerator = make_accelerator(study_precision(study), study.training.report_to, str(output_dir))
    on_gpu = accelerator.device.type != "cpu"
    training, picked = with_machine_defaults(study.training, on_gpu)  # once: every run shares them
    study = dataclasses.replace(study, training=training)
    if picked and accelerator.is_main_process:
        tqdm.write(describe_defaults(picked, on_gpu))
    decoded_store = data_module.DecodedDataStore()
    rows, written = [], 0

    def write_files() -> None:  # study.json, plots and README of the rows so far, when they changed
        nonlocal written
        if accelerator.is_main_process and len(rows) > written:
            write_study_files(output_dir, study_settings_record(study), study.training.published(), len(runs), rows,
                              skipped)
        written = len(rows)

    for number, planned in enumerate(runs, start=1):
        settings = run_settings(study, planned)
        metrics = finished_metrics(settings)
        if accelerator.is_main_process:
            state = "done before, kept" if metrics else ("resuming" if settings.resume else "running")
            tqdm.write(f"[study {number}/{len(runs)}] {planned.name}: {state}")
        if metrics is None:
            write_files()  # the runs kept so far, before a long one
            run_dir = run(settings, accelerator=accelerator, decoded_store=decoded_store)
            metrics = read_metrics(run_dir, planned.name)
            rows.append(planned.row(metrics))
            write_files()
        else:
            rows.append(planned.row(metrics))
    write_files()
    accelerator.wait_for_everyone()
    if study.push_to_hub and accelerator.is_main_process:
        url = hub.publish(output_dir, study.hub_model_id, private=study.private,
                          commit_message=f"Study {output_dir.name} (tl-space): {len(rows)} runs")
        tqdm.write(f"pushed the study to https://huggingface.co/{study.hub_model_id} ({url})")
    accelerator.end_training()
    return output_dir


def study_settings_record(study: StudySettings) -> dict:
    """The study's own settings as study.json records them, with no path of this machine."""
    settings = {name: getattr(study, name) for name in ("strategies", "shots_per_class", "seeds", "repeat_up_to",
                                                        "budget", "minutes", "few_shot_minutes", "scratch_recipe",
                                                        "scratch_model", "scratch_image_size", "output_dir")}
    settings["output_dir"] = Path(study.output_dir).name
    return settings


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: print(f"study written to {run_study(parse_study_settings(argv))}"))
