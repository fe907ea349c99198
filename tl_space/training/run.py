"""The training run: settings resolved once into a RunPlan, then data and model prepared, the strategy's stages
trained, the final evaluation, and the model folder written (and pushed), each step taking the plan."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DataLoaderConfiguration, LoggerType, ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from tl_space import atomic, caches, hub
from tl_space import data as data_module
from tl_space import model as model_module
from tl_space.errors import UserError
from tl_space.folder.files import CHECKPOINT_DIR, LOGS_DIR, METRICS_FILE, differing_settings
from tl_space.folder.metrics import EpochRecord, MetricsRecord, StoppedBy, read_metrics
from tl_space.folder.write import write_model_folder
from tl_space.settings import (COMPILE_MIN_IMAGES, CPU_EVAL_BATCH_SIZE, CompileMode, FlipTTA, HeadInit, LRSchedule,
                               Optimizer, ProbeSolver, TrainSettings, as_flags, check_settings, describe_defaults,
                               with_machine_defaults, with_optimizer_defaults, with_recipe)
from tl_space.strategies import STRATEGIES, StagePlan, Strategy, keeps_batchnorm_statistics, stages
from tl_space.training import checkpoint
from tl_space.training.batches import FEATURE_BATCH_SIZE, feature_inputs, image_inputs
from tl_space.training.calibration import calibration_report
from tl_space.training.evaluation import (classification_metrics, final_logits, flip_tta_report,
                                          misclassified_records)
from tl_space.training.features import FrozenFeatures
from tl_space.training.precision import accelerator_precision, cpu_description, run_precision, use_run_precision
from tl_space.training.loop import (L2_GRID, BestModel, LoopSettings, RunState, Stage, estimate_stage_seconds,
                                   fit_head_stage, train_stage)
from tl_space.training.regularisation import Regularisation
from tl_space.transforms import Preprocessing, preprocessing_for


@dataclass(frozen=True)
class DataPlan:
    """Which images a run trains, validates and tests on."""

    dataset: str
    image_column: str | None
    label_column: str | None
    train_split: str
    validation_split: str | None
    test_split: str
    val_size: int | None
    shots_per_class: int | None
    train_fraction: float | None
    max_train_samples: int | None
    max_eval_samples: int | None
    seed: int
    split_seed: int | None

    @property
    def capped(self) -> bool:
        """A quick run (size caps): its features are computed for the few images it uses, not whole splits."""
        return self.max_train_samples is not None or self.max_eval_samples is not None

    def open(self) -> data_module.OpenedSplits:
        opened = data_module.open_splits(self.dataset, self.image_column, self.label_column, self.train_split,
                                         self.validation_split, self.test_split,
                                         carve_seed=self.seed if self.split_seed is None else self.split_seed)
        if opened.validation is not None and self.val_size is not None:
            raise UserError(f"--val-size {self.val_size} holds images out of train, but the dataset has its own "
                            f"{opened.sources.validation!r} split, which is validated on instead; drop --val-size")
        return opened

    def split(self, train: data_module.LabelledImages, test: data_module.LabelledImages, class_names: list[str],
              val: data_module.LabelledImages | None):
        """The run's train, validation and test images: split_data with the hold-out, few-shot and size caps."""
        return data_module.split_data(
            train, test, class_names, val_size=self.val_size, shots_per_class=self.shots_per_class,
            train_fraction=self.train_fraction, max_train_samples=self.max_train_samples,
            max_eval_samples=self.max_eval_samples, seed=self.seed, split_seed=self.split_seed, val=val)


@dataclass(frozen=True)
class RunPlan:
    """A run's settings resolved for this machine into the plain values the steps below take."""

    published_settings: dict  # the settings as the model folder records them, computed once
    strategy: Strategy
    stages: list[StagePlan]
    loop: LoopSettings
    data: DataPlan
    model_name: str
    pretrained_file: str | None
    image_size: int | None  # None: the model's pretrained size
    unfreeze_stages: int
    freeze_depthwise: bool
    seed: int
    eval_batch_size: int
    compile_min_images: int | None  # compile the frozen backbone for splits this large; None: never
    head_init: HeadInit
    probe_solver: ProbeSolver
    regularisation: Regularisation  # of the stages on images
    optimizer: Optimizer  # of the stages on images
    lr_schedule: LRSchedule  # of the stages on images
    start_size: int | None  # progressive resizing: the stages on images start at this size; None: off
    threads: int | None  # torch's CPU threads per process; None on a GPU: left as they are
    mixed_precision: str  # --mixed-precision: auto is the accelerator's
    images_cache: Path | None
    features_cache: Path | None
    measure_flip_tta: bool
    max_misclassified: int
    output_dir: Path
    overwrite: bool
    resume: bool
    tracker_config: dict | None  # what the trackers record of the settings; None: no --report-to
    hub_model_id: str | None  # push the folder here; None: no push
    private: bool


def cpu_threads(local_processes: int) -> int:
    """This machine's usable cores (its CPU affinity) shared among the processes it runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


def resolve(settings: TrainSettings, device: torch.device, local_processes: int = 1) -> RunPlan:
    """Every choice left to "auto" or unset, made once for this run on this device (settings already checked)."""
    strategy = STRATEGIES[settings.strategy]
    on_cpu = device.type == "cpu"
    if settings.compile == CompileMode.AUTO:  # measured by bench/bench_features.py
        compile_min_images = COMPILE_MIN_IMAGES if on_cpu else None
    else:
        compile_min_images = 0 if settings.compile == CompileMode.YES else None
    return RunPlan(
        published_settings=settings.published(),
        strategy=strategy,
        stages=stages(strategy, settings.epochs, settings.probe_epochs, settings.lr),
        loop=LoopSettings(batch_size=settings.batch_size, weight_decay=settings.weight_decay, seed=settings.seed,
                          min_epoch_images=settings.min_epoch_images, max_train_minutes=settings.max_train_minutes,
                          patience=settings.patience,
                          keep_batchnorm_statistics=keeps_batchnorm_statistics(strategy, settings.batchnorm)),
        data=DataPlan(settings.dataset, settings.image_column, settings.label_column, settings.train_split,
                      settings.validation_split, settings.test_split, settings.val_size, settings.shots_per_class,
                      settings.train_fraction, settings.max_train_samples, settings.max_eval_samples, settings.seed,
                      settings.split_seed),
        model_name=settings.model,
        pretrained_file=settings.pretrained_file,
        image_size=settings.image_size,
        unfreeze_stages=settings.unfreeze_stages,
        freeze_depthwise=settings.freeze_depthwise,
        seed=settings.seed,
        eval_batch_size=settings.eval_batch_size or (CPU_EVAL_BATCH_SIZE if on_cpu else settings.batch_size),
        compile_min_images=compile_min_images,
        head_init=HeadInit.CLASS_MEANS if not strategy.trains_at_all else settings.head_init,
        probe_solver=settings.probe_solver,
        regularisation=Regularisation(label_smoothing=settings.label_smoothing, mixup_alpha=settings.mixup,
                                      cutmix_alpha=settings.cutmix, random_erasing=settings.random_erasing,
                                      ema_decay=settings.ema_decay, lookahead=settings.lookahead),
        optimizer=settings.optimizer,
        lr_schedule=settings.lr_schedule,
        start_size=settings.progressive_resize,
        # `accelerate launch` without a config sets OMP_NUM_THREADS=1 for CPU runs: torch would use one core.
        threads=(settings.threads or cpu_threads(local_processes)) if on_cpu else None,
        mixed_precision=str(settings.mixed_precision),
        images_cache=caches.cache_folder(settings.cache_dir, "images"),
        features_cache=caches.cache_folder(settings.cache_dir, "features"),
        measure_flip_tta=settings.flip_tta != FlipTTA.OFF,
        max_misclassified=settings.max_misclassified,
        output_dir=Path(settings.output_dir),
        overwrite=settings.overwrite,
        resume=settings.resume,
        tracker_config={key: value for key, value in settings.to_dict().items()
                        if isinstance(value, (bool, int, float, str))} if settings.report_to else None,
        hub_model_id=settings.hub_model_id if settings.push_to_hub else None,
        private=settings.private,
    )


def plan_run(settings: TrainSettings, accelerator: Accelerator) -> RunPlan:
    """--recipe, then this machine's defaults, each said in one line; the settings checked; the plan resolved."""
    on_gpu = accelerator.device.type != "cpu"
    settings, from_recipe = with_recipe(settings)
    if from_recipe and accelerator.is_main_process:
        tqdm.write(f"--recipe {settings.recipe} sets {as_flags(from_recipe)}")
    settings, picked = with_machine_defaults(settings, on_gpu)
    if picked and accelerator.is_main_process:
        tqdm.write(describe_defaults(picked, on_gpu))
    settings, for_optimizer = with_optimizer_defaults(settings)
    if for_optimizer and accelerator.is_main_process:
        tqdm.write(f"--optimizer {settings.optimizer} sets airbench's {as_flags(for_optimizer)}")
    check_settings(settings)
    return resolve(settings, accelerator.device, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))


# What to install for each of accelerate's trackers, where the package's name is not the tracker's.
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def tracker_names(report_to: str | None) -> list[str]:
    """--report-to's comma-separated trackers."""
    return [name.strip() for name in (report_to or "").split(",") if name.strip()]


def check_trackers(report_to: str | None) -> None:
    """A UserError naming what to install when --report-to asks for a tracker that is not installed."""
    asked = tracker_names(report_to)
    known = [tracker.value for tracker in LoggerType]
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise UserError(f"--report-to {report_to!r}: {unknown} not among accelerate's trackers {known}")
    available = {tracker.value for tracker in get_available_trackers()}
    missing = [name for name in asked if name != "all" and name not in available]
    if missing:
        packages = " ".join(TRACKER_PACKAGES.get(name, name) for name in missing)
        raise UserError(f"--report-to {report_to!r} needs {', '.join(missing)}, which is not installed here; "
                        f"run `pip install {packages}` or drop --report-to")


def make_accelerator(mixed_precision: str, report_to: str | None, project_dir: str) -> Accelerator:
    """The Accelerator of a run (or of every run of a study): bf16 on a GPU that has it when mixed_precision is auto.
    Trackers write under project_dir/logs/, which the finished folder keeps."""
    check_trackers(report_to)
    return Accelerator(
        # On a machine with no GPU, processes started by torchrun / `accelerate launch --multi_gpu` join one
        # CPU (gloo) process group; accelerate only does that when told it runs on the CPU.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=accelerator_precision(mixed_precision),
        log_with=tracker_names(report_to) or None,
        project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=str(Path(project_dir) / LOGS_DIR)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def check_output_dir(output_dir: Path, published_settings: dict, overwrite: bool, resume: bool) -> Path:
    """The output folder, if it is free, empty, or holds this same run; otherwise a UserError (unless overwrite).

    A folder whose swap for a newer one was killed half-way is put back first, so its checkpoint can be resumed.
    """
    if atomic.recover_folder(output_dir):
        print(f"{output_dir}: restored the run folder from an interrupted save", file=sys.stderr)
    if not output_dir.exists() or overwrite:
        return output_dir
    if not output_dir.is_dir():
        raise UserError(f"--output-dir {str(output_dir)!r} is a file; give a folder path")
    if not any(output_dir.iterdir()):
        return output_dir
    progress = checkpoint.read_progress(output_dir / CHECKPOINT_DIR)
    if progress is None and checkpoint.only_unfinished_checkpoints(output_dir, CHECKPOINT_DIR):
        # Killed while writing its first checkpoint: nothing of it can be resumed, and nothing else is there to lose.
        print(f"{output_dir}: the run stopped before its first checkpoint was whole; starting it again",
              file=sys.stderr)
        checkpoint.discard_checkpoint(output_dir / CHECKPOINT_DIR)
        return output_dir
    if progress is not None:
        if not resume:
            raise UserError(f"--output-dir {str(output_dir)!r} holds an unfinished run (saved after epoch "
                            f"{len(progress['history'])}); add --resume to continue it or --overwrite to start again")
        _check_same_run(output_dir, {**progress["settings"], "lr": published_settings["lr"]}, published_settings,
                        "--resume needs the settings it was started with (only --lr may change)")
        return output_dir
    if not (output_dir / METRICS_FILE).is_file():
        raise UserError(f"--output-dir {str(output_dir)!r} holds files that are not a tl-space run; "
                        "choose another folder or pass --overwrite to replace them")
    _check_same_run(output_dir, read_metrics(output_dir, output_dir.name)["settings"], published_settings,
                    "choose another --output-dir or pass --overwrite to replace it")
    return output_dir


def _check_same_run(output_dir: Path, previous: dict, current: dict, advice: str) -> None:
    differing = differing_settings(previous, current)
    if differing:
        changes = ", ".join(f"{key}: {previous.get(key)!r} -> {current[key]!r}" for key in differing[:5])
        raise UserError(f"--output-dir {str(output_dir)!r} holds a different run ({changes}); {advice}")


def base_model_id(model: nn.Module, model_name: str, pretrained: bool) -> str | None:
    """The Hub id of the pretrained weights the run started from (timm/<name>.<tag>), None from scratch."""
    if not pretrained:
        return None
    if model_name.startswith("hf-hub:"):
        return model_name.removeprefix("hf-hub:")
    return model.pretrained_cfg.get("hf_hub_id")


def push(output_dir: Path, repo_id: str, private: bool, message: str) -> None:
    """Upload the finished folder; on failure the folder stays whole and the error says how to retry."""
    url = hub.publish(output_dir, repo_id, private=private, commit_message=message)
    tqdm.write(f"pushed to https://huggingface.co/{repo_id} ({url})")


def start_or_resume(accelerator: Accelerator, checkpoint_dir: Path, generator: torch.Generator, resume: bool,
                    published_settings: dict) -> RunState:
    """A fresh RunState, or with resume the one the last checkpoint under checkpoint_dir recorded."""
    progress = checkpoint.read_progress(checkpoint_dir) if resume else None
    if progress is None:
        if resume and accelerator.is_main_process:
            tqdm.write(f"nothing to resume in {checkpoint_dir}: starting from the first epoch")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # --overwrite: an old run's checkpoint must not be resumed later
            checkpoint.discard_checkpoint(checkpoint_dir)
        return RunState(checkpoint_dir, generator, published_settings)
    if accelerator.is_main_process:
        tqdm.write(f"resuming after epoch {len(progress['history'])} ({progress['stage']}) from {checkpoint_dir}")
    best = BestModel(progress["best"]["accuracy"], progress["best"]["epoch"], checkpoint.best_model_state(checkpoint_dir))
    return RunState(checkpoint_dir, generator, published_settings,
                    history=[EpochRecord.from_json(entry) for entry in progress["history"]], best=best,
                    resume_stage=progress["stage_index"], resume_epochs_done=progress["stage_epochs_done"])


def make_stage(stage_plan: StagePlan, model: nn.Module, splits: data_module.DataSplits, preprocessing: Preprocessing,
               generator: torch.Generator, plan: RunPlan) -> Stage:
    """The Stage a StagePlan trains: the head on cached features, or the model on augmented images."""
    if stage_plan.on_features:  # with L-BFGS, one "epoch" per L2 strength tried
        epochs = len(L2_GRID) if plan.probe_solver == ProbeSolver.LBFGS else stage_plan.epochs
        return Stage(stage_plan.index, stage_plan.name, model.get_classifier(), feature_inputs(splits.train.features),
                     feature_inputs(splits.val.features), epochs, stage_plan.lr, FEATURE_BATCH_SIZE)
    device = next(model.parameters()).device
    inputs = {name: image_inputs(getattr(splits, name).images.to(device), preprocessing, generator)
              for name in ("train", "val")}
    return Stage(stage_plan.index, stage_plan.name, model, inputs["train"], inputs["val"], stage_plan.epochs,
                 stage_plan.lr, plan.eval_batch_size, plan.regularisation, plan.optimizer, plan.lr_schedule,
                 plan.start_size, preprocessing.image_size)


# The whole-run estimate times decoding, features and each stage on this many training images (at least a batch).
ESTIMATE_SAMPLE_IMAGES = 64


def planned_sizes(opened: data_module.OpenedSplits, data_plan: DataPlan) -> tuple[int, int, int]:
    """The run's (train, validation, test) images, from the labels alone: the run's split of images of no pixels."""
    def labels_only(split) -> data_module.LabelledImages:
        labels = torch.tensor(split[opened.label_column], dtype=torch.int64)
        return data_module.LabelledImages(torch.empty(len(labels), 0, dtype=torch.uint8), labels)
    own_val = None if opened.validation is None else labels_only(opened.validation)
    splits = data_plan.split(labels_only(opened.train), labels_only(opened.test), opened.class_names, own_val)
    return tuple(len(split) for split in splits)


def say_run_estimate(accelerator: Accelerator, plan: RunPlan, opened: data_module.OpenedSplits,
                     prepared: PreparedModel, stage_plans: list[StagePlan]) -> None:
    """Print, before any long work, how long the whole run will take here: decoding, the frozen backbone's features,
    each stage's epochs and the final evaluation, each timed on a sample of the training images."""
    model, preprocessing = prepared.model, prepared.preprocessing
    train_images, val_images, test_images = planned_sizes(opened, plan.data)
    count = min(len(opened.train), max(ESTIMATE_SAMPLE_IMAGES, plan.loop.batch_size, plan.eval_batch_size))
    started = time.perf_counter()
    sample = data_module.decode_images(opened.train.select(range(count)), opened.image_column, opened.label_column,
                                       preprocessing.image_size)
    stored = len(opened.train) + len(opened.test) + (0 if opened.validation is None else len(opened.validation))
    parts = [("decoding", stored * (time.perf_counter() - started) / count,
              f"{stored:,} images, less from the image cache")]
    if plan.strategy.probe_first:
        started = time.perf_counter()
        sample.features = FrozenFeatures(accelerator, model, preprocessing, plan.eval_batch_size, None, None)(sample)
        featured = train_images + val_images + test_images if plan.data.capped else stored
        parts.append(("features", featured * (time.perf_counter() - started) / count,
                      f"{featured:,} images, less from the feature cache"))
    sample_splits = data_module.DataSplits(sample, sample, sample, opened.class_names, opened.image_column,
                                           opened.label_column)
    generator = torch.Generator(accelerator.device).manual_seed(plan.seed)
    training = 0.0  # what a time budget bounds
    for stage_plan in stage_plans:
        stage = make_stage(stage_plan, model, sample_splits, preprocessing, generator, plan)
        prepared.trains_only(stage_plan)
        seconds = estimate_stage_seconds(accelerator, stage, sample_splits, plan.loop, (train_images, val_images))
        training += seconds
        parts.append((stage.name, seconds, f"{stage.epochs} epoch(s)"))
    if not plan.strategy.frozen_backbone:  # a frozen backbone's final logits come from its cached features
        evaluated = val_images + test_images * (2 if plan.measure_flip_tta else 1)
        batch = image_inputs(sample.images.to(accelerator.device), preprocessing, None)
        started = time.perf_counter()
        with torch.inference_mode(), accelerator.autocast():
            model.eval()(batch(torch.arange(min(count, plan.eval_batch_size), device=accelerator.device), False))
        per_image = (time.perf_counter() - started) / min(count, plan.eval_batch_size)
        parts.append(("final evaluation", evaluated * per_image / accelerator.num_processes, f"{evaluated:,} images"))
    if not accelerator.is_main_process:
        return
    total = sum(seconds for _, seconds, _ in parts)
    budget = plan.loop.max_train_minutes
    limit = f"; the {budget:g}-minute budget ends training sooner" if budget and budget * 60 < training else ""
    described = ", ".join(f"{name}: {what}, {seconds / 60:.1f} min" for name, seconds, what in parts)
    tqdm.write(f"estimated wall time on this {accelerator.device.type}: about {total / 60:.1f} min ({described}; "
               f"timed on {count} training images before any long work{limit})")


@dataclass
class PreparedModel:
    """The run's model on its device, what of it trains, and the preprocessing its inputs get."""

    model: nn.Module
    trainable: list[nn.Parameter]  # what the image stages update
    preprocessing: Preprocessing

    def trains_only(self, stage_plan: StagePlan) -> None:
        """What a stage updates: the head on features, else `trainable`."""
        model_module.freeze_all_but(self.model, model_module.classifier_parameters(self.model)
                                    if stage_plan.on_features else self.trainable)


@dataclass
class PreparedData:
    splits: data_module.DataSplits
    split_sources: dict[str, str]  # a sentence for each of validation and test
    frozen_features: FrozenFeatures | None  # for a probe-first strategy: the frozen backbone's feature extractor
    carved_test: bool  # the test images were carved out of train (the dataset has no test split)


@dataclass
class Evaluation:
    test: dict
    test_logits: torch.Tensor
    calibration: dict
    flip_tta: dict | None
    seconds: float


def prepare_model(accelerator: Accelerator, plan: RunPlan, class_count: int) -> PreparedModel:
    """The timm model (ImageNet weights unless scratch), what trains, its preprocessing, on the device."""
    with accelerator.main_process_first():  # one process downloads the weights, the others read the cache
        model = model_module.create_model(plan.model_name, class_count, pretrained=plan.strategy.pretrained,
                                          pretrained_file=plan.pretrained_file, image_size=plan.image_size)
    trainable = model_module.trainable_parameters(model, plan.strategy.trains, plan.unfreeze_stages)
    if plan.freeze_depthwise:
        trainable = model_module.without_depthwise_weights(model, trainable)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), plan.image_size)
    if plan.start_size is not None and plan.start_size >= preprocessing.image_size:
        raise UserError(f"--progressive-resize {plan.start_size} must be smaller than the image size it grows to, "
                        f"{preprocessing.image_size} px")
    return PreparedModel(model.to(accelerator.device, memory_format=torch.channels_last), trainable, preprocessing)


def prepare_data(accelerator: Accelerator, plan: RunPlan, opened: data_module.OpenedSplits, prepared: PreparedModel,
                 decoded_store: data_module.DecodedDataStore | None) -> PreparedData:
    """The run's splits decoded (or from the image cache, or a study's store) and, for a probe, with the frozen
    backbone's features (or from the feature cache)."""
    preprocessing = prepared.preprocessing
    key = data_module.DecodedKey(plan.data.dataset, opened.sources, opened.image_column, opened.label_column,
                                 preprocessing.image_size)
    decoded = decoded_store.get(key) if decoded_store is not None else None
    if decoded is None:
        decoded = data_module.decode_splits(opened, preprocessing.image_size, plan.images_cache,
                                            progress=accelerator.is_local_main_process)
        if decoded_store is not None:
            decoded_store.put(key, decoded)
    frozen_features = FrozenFeatures(accelerator, prepared.model, preprocessing, plan.eval_batch_size,
                                     plan.compile_min_images, plan.features_cache) if plan.strategy.probe_first else None
    # Quick runs (size caps) compute features of the few images they use; others, of whole splits, once: one pass
    # (or one cache entry) then serves every hold-out and few-shot subset.
    if frozen_features is not None and not plan.data.capped:
        for split in (decoded.train, decoded.val, decoded.test):
            if split is not None:
                split.features = frozen_features(split)
    train, val, test = plan.data.split(decoded.train, decoded.test, opened.class_names, decoded.val)
    if frozen_features is not None and plan.data.capped:
        for split in (train, val, test):
            split.features = frozen_features(split)
    split_sources = opened.sources.describe(len(val), len(test))
    if accelerator.is_main_process:
        tqdm.write(f"validation: {split_sources['validation']}; test: {split_sources['test']}")
    splits = data_module.DataSplits(train, val, test, opened.class_names, opened.image_column, opened.label_column)
    return PreparedData(splits, split_sources, frozen_features, carved_test=not opened.sources.test)


def train_stages(accelerator: Accelerator, plan: RunPlan, prepared: PreparedModel, data: PreparedData,
                 run_state: RunState, generator: torch.Generator) -> None:
    """Start the model from the data where the strategy says so, then train each stage not yet finished."""
    model, splits, fresh = prepared.model, data.splits, run_state.resume_stage is None
    if not plan.strategy.pretrained and fresh:
        if model_module.initialise_from_data(model, splits.train.images, prepared.preprocessing) and \
                accelerator.is_main_process:
            tqdm.write(f"{plan.model_name}: its first layer set from the training images' statistics (whitening)")
    if plan.head_init == HeadInit.CLASS_MEANS and fresh:
        features = splits.train.features
        model_module.imprint_classifier(model, features, splits.train.labels.to(features.device))
    if not plan.stages:  # nothing trains: the model as it stands is the run's result
        run_state.best = BestModel(None, 0, model_module.state_copy(model))
        run_state.stopped_by = StoppedBy.NO_TRAINING
    first_stage = run_state.resume_stage or 0  # a resumed run skips the stages it finished
    for stage_plan in plan.stages[first_stage:]:
        stage = make_stage(stage_plan, model, splits, prepared.preprocessing, generator, plan)
        if not stage_plan.on_features and stage_plan.index > 0:
            model.load_state_dict(run_state.best.state)  # fine-tune from the best probe head
        prepared.trains_only(stage_plan)
        if stage_plan.on_features and plan.probe_solver == ProbeSolver.LBFGS:
            fit_head_stage(accelerator, stage, model, splits, run_state)
        else:
            train_stage(accelerator, stage, model, splits, plan.loop, run_state)
    model.load_state_dict(run_state.best.state)


def evaluate(accelerator: Accelerator, plan: RunPlan, prepared: PreparedModel, data: PreparedData) -> Evaluation:
    """The kept model on the test split: metrics, the temperature fitted on validation, flip test-time augmentation."""
    started = time.perf_counter()
    model, splits, preprocessing = prepared.model, data.splits, prepared.preprocessing
    frozen = plan.strategy.frozen_backbone
    val_logits = final_logits(accelerator, model, splits.val, preprocessing, frozen, plan.eval_batch_size, "val")
    test_logits = final_logits(accelerator, model, splits.test, preprocessing, frozen, plan.eval_batch_size, "test")
    test = classification_metrics(test_logits, splits.test.labels, splits.class_names)
    calibration = calibration_report(val_logits, splits.val.labels, test_logits, splits.test.labels)
    flip_tta = flip_tta_report(accelerator, model, splits.test, test_logits, preprocessing, plan.eval_batch_size,
                               data.frozen_features if frozen else None) if plan.measure_flip_tta else None
    return Evaluation(test, test_logits, calibration, flip_tta, time.perf_counter() - started)


def last_stage_images_per_second(history: list[EpochRecord]) -> float:
    """The images per second the run's last stage trained at (lp-ft: its fine-tuning, not its probe's fits on cached
    features), over the images it trained on, a budget-cut last epoch's as many as it saw."""
    last_stage = [entry for entry in history if entry.stage == history[-1].stage] if history else []
    seconds = sum(entry.train_seconds for entry in last_stage)
    return sum(entry.train_images or 0 for entry in last_stage) / seconds if seconds else 0.0


def metrics_of_run(accelerator: Accelerator, plan: RunPlan, prepared: PreparedModel, data: PreparedData,
                   run_state: RunState, evaluation: Evaluation, started: float, data_seconds: float) -> MetricsRecord:
    model, splits, history = prepared.model, data.splits, run_state.history
    training_seconds = sum(entry.seconds for entry in history)
    class_counts = torch.bincount(splits.train.labels, minlength=len(splits.class_names)).tolist()
    return MetricsRecord(
        history=history,
        stopped_by=run_state.stopped_by,
        test={**evaluation.test, "best_epoch": run_state.best.epoch},
        settings=plan.published_settings,
        model={"architecture": model.pretrained_cfg.get("architecture", plan.model_name),
               "base_model": base_model_id(model, plan.model_name, plan.strategy.pretrained),
               "pretrained_file": plan.published_settings["pretrained_file"]},
        calibration=evaluation.calibration,
        flip_tta=evaluation.flip_tta,
        preprocessing=prepared.preprocessing.to_dict(),
        data={"train_images": len(splits.train), "val_images": len(splits.val), "test_images": len(splits.test),
              "train_images_per_class": dict(zip(splits.class_names, class_counts)),
              "class_names": splits.class_names, "image_column": splits.image_column,
              "label_column": splits.label_column, "validation_source": data.split_sources["validation"],
              "test_source": data.split_sources["test"],
              "carved_test_fraction": data_module.CARVED_TEST_FRACTION if data.carved_test else None},
        trainable_parameters=sum(p.numel() for p in prepared.trainable),
        total_parameters=sum(p.numel() for p in model.parameters()),
        timing={"total_seconds": time.perf_counter() - started, "data_seconds": data_seconds,
                "training_seconds": training_seconds, "evaluation_seconds": evaluation.seconds,
                "feature_cache_saved_seconds": data.frozen_features.saved_seconds if data.frozen_features else 0.0,
                "train_images_per_second": last_stage_images_per_second(history)},
        hardware={"device": str(accelerator.device), "processes": accelerator.num_processes,
                  "mixed_precision": run_precision(accelerator),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "cpu": cpu_description()},
    )


def publish(accelerator: Accelerator, plan: RunPlan, prepared: PreparedModel, data: PreparedData,
            evaluation: Evaluation, metrics: MetricsRecord) -> None:
    """Write the model folder (main process), say what it scored, and push it when asked."""
    splits, test, calibration, flip_tta = data.splits, evaluation.test, evaluation.calibration, evaluation.flip_tta
    # With the probabilities the app will show: calibrated.
    mistakes = misclassified_records(evaluation.test_logits / calibration["temperature"], splits.test.labels,
                                     splits.class_names, plan.max_misclassified)
    accelerator.log({"test_accuracy": test["accuracy"], "test_loss": test["loss"]}, step=len(metrics.history))
    if not accelerator.is_main_process:
        return
    write_model_folder(plan.output_dir, prepared.model, splits.class_names, prepared.preprocessing, metrics, mistakes,
                       splits.test.images)
    with_tta = "" if flip_tta is None else (f", {flip_tta['test_accuracy']:.4f} with flip test-time augmentation "
                                            f"({'on' if flip_tta['enabled'] else 'off'} in the app)")
    tqdm.write(f"test accuracy {test['accuracy']:.4f} (best epoch {metrics.test['best_epoch']}){with_tta}; expected "
               f"calibration error {calibration['test_ece_before']:.4f}, {calibration['test_ece_after']:.4f} at "
               f"temperature {calibration['temperature']:.3f}; model folder: {plan.output_dir}")
    if plan.hub_model_id:
        published = plan.published_settings
        push(plan.output_dir, plan.hub_model_id, plan.private,
             f"{published['strategy']} {published['model']} on {published['dataset']}: test accuracy "
             f"{test['accuracy']:.4f} ({plan.output_dir.name})")


def run(settings: TrainSettings, accelerator: Accelerator | None = None,
        decoded_store: data_module.DecodedDataStore | None = None) -> Path:
    """Train, evaluate and write the model folder; returns its path.

    A caller running several trainings in one process (a study) passes its own accelerator, which it ends, and a
    store in which the decoded dataset is kept between runs.
    """
    # Settings, resolved once: from here on only the plan is read.
    owns_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(with_recipe(settings)[0].mixed_precision, settings.report_to,
                                                  settings.output_dir)
    plan = plan_run(settings, accelerator)
    use_run_precision(accelerator, plan.mixed_precision)
    output_dir = check_output_dir(plan.output_dir, plan.published_settings, plan.overwrite, plan.resume)
    if plan.hub_model_id:  # a missing or read-only token must not cost a training run
        hub.check_push_access(plan.hub_model_id)
    if owns_accelerator and plan.tracker_config is not None:
        accelerator.init_trackers(output_dir.name, config=plan.tracker_config)
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
        if accelerator.is_main_process:
            tqdm.write(f"CPU: {plan.threads} thread(s) per process, {accelerator.num_processes} process(es); "
                       "--threads changes it")
    set_seed(plan.seed)
    started = time.perf_counter()

    # Data and model.
    model_module.check_model_name(plan.model_name)
    opened = plan.data.open()
    prepared = prepare_model(accelerator, plan, len(opened.class_names))
    # Augmentation differs per process (each sees other images) but is reproducible for a given seed.
    generator = torch.Generator(accelerator.device).manual_seed(plan.seed + accelerator.process_index)
    run_state = start_or_resume(accelerator, output_dir / CHECKPOINT_DIR, generator, plan.resume,
                                plan.published_settings)
    say_run_estimate(accelerator, plan, opened, prepared, plan.stages[run_state.resume_stage or 0:])
    data = prepare_data(accelerator, plan, opened, prepared, decoded_store)
    # Opening the dataset, creating the model, the estimate, decoding (or the image cache) and features (or the
    # feature cache).
    data_seconds = time.perf_counter() - started

    # Training, then the final evaluation of the best model.
    train_stages(accelerator, plan, prepared, data, run_state, generator)
    evaluation = evaluate(accelerator, plan, prepared, data)

    # The model folder (and the Hub).
    metrics = metrics_of_run(accelerator, plan, prepared, data, run_state, evaluation, started, data_seconds)
    publish(accelerator, plan, prepared, data, evaluation, metrics)
    accelerator.wait_for_everyone()
    if owns_accelerator:
        accelerator.end_training()  # closes trackers and, in newer accelerate, the process group: last
    return output_dir
