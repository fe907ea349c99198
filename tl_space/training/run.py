"""The training run: settings resolved once into plain values, data and model prepared, the strategy's stages trained,
the final evaluation, the model folder written (and pushed)."""

from __future__ import annotations

import json
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
from tl_space.folder.metrics import metrics_record
from tl_space.folder.write import write_model_folder
from tl_space.settings import (COMPILE_MIN_IMAGES, CPU_EVAL_BATCH_SIZE, TrainSettings, check_settings,
                               describe_defaults, with_machine_defaults, with_recipe)
from tl_space.strategies import STRATEGIES, StagePlan, Strategy, keeps_batchnorm_statistics, stages
from tl_space.training import checkpoint
from tl_space.training.batches import FEATURE_BATCH_SIZE, feature_inputs, image_inputs
from tl_space.training.calibration import calibration_report
from tl_space.training.evaluation import (classification_metrics, final_logits, flip_tta_report,
                                          misclassified_records)
from tl_space.training.features import FrozenFeatures
from tl_space.training.loop import (L2_GRID, LoopSettings, RunState, Stage, estimate_stage_seconds, fit_head_stage,
                                   train_stage)
from tl_space.training.regularisation import Regularisation
from tl_space.transforms import Preprocessing, preprocessing_for


@dataclass(frozen=True)
class RunPlan:
    """A run's settings resolved for this machine into the plain values the modules below take."""

    strategy: Strategy
    stages: list[StagePlan]
    loop: LoopSettings
    eval_batch_size: int
    compile_min_images: int | None  # compile the frozen backbone for splits this large; None: never
    head_init: str  # "zero" or "class-means"
    probe_solver: str  # how heads learn on cached features: "adamw" (the stage's epochs) or "lbfgs"
    regularisation: Regularisation  # of the stages on images
    start_size: int | None  # progressive resizing: the stages on images start at this size; None: off
    threads: int | None  # torch's CPU threads per process; None on a GPU: left as they are
    images_cache: Path | None
    features_cache: Path | None
    published_settings: dict


def cpu_threads(local_processes: int) -> int:
    """This machine's usable cores (its CPU affinity) shared among the processes it runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


def resolve(settings: TrainSettings, device: torch.device, local_processes: int = 1) -> RunPlan:
    """Every choice left to "auto" or unset, made once for this run on this device."""
    strategy = STRATEGIES[settings.strategy]
    on_cpu = device.type == "cpu"
    if settings.compile == "auto":  # measured by bench/bench_features.py
        compile_min_images = COMPILE_MIN_IMAGES if on_cpu else None
    else:
        compile_min_images = 0 if settings.compile == "yes" else None
    published = settings.published()
    return RunPlan(
        strategy=strategy,
        stages=stages(strategy, settings.epochs, settings.probe_epochs, settings.lr),
        loop=LoopSettings(batch_size=settings.batch_size, weight_decay=settings.weight_decay, seed=settings.seed,
                          min_epoch_images=settings.min_epoch_images, max_train_minutes=settings.max_train_minutes,
                          patience=settings.patience,
                          keep_batchnorm_statistics=keeps_batchnorm_statistics(strategy, settings.batchnorm),
                          published_settings=published),
        eval_batch_size=settings.eval_batch_size or (CPU_EVAL_BATCH_SIZE if on_cpu else settings.batch_size),
        compile_min_images=compile_min_images,
        head_init="class-means" if not strategy.trains_at_all else settings.head_init,
        probe_solver=settings.probe_solver,
        regularisation=Regularisation(label_smoothing=settings.label_smoothing, mixup_alpha=settings.mixup,
                                      cutmix_alpha=settings.cutmix, random_erasing=settings.random_erasing,
                                      ema_decay=settings.ema_decay),
        start_size=settings.progressive_resize,
        # `accelerate launch` without a config sets OMP_NUM_THREADS=1 for CPU runs: torch would use one core.
        threads=(settings.threads or cpu_threads(local_processes)) if on_cpu else None,
        images_cache=caches.cache_folder(settings.cache_dir, "images"),
        features_cache=caches.cache_folder(settings.cache_dir, "features"),
        published_settings=published,
    )


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
    precision = None  # None: what `accelerate launch` / `accelerate config` chose
    if mixed_precision != "auto":
        precision = mixed_precision
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        precision = "bf16"
    return Accelerator(
        # On a machine with no GPU, processes started by torchrun / `accelerate launch --multi_gpu` join one
        # CPU (gloo) process group; accelerate only does that when told it runs on the CPU.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=precision,
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
    metrics_path = output_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise UserError(f"--output-dir {str(output_dir)!r} holds files that are not a tl-space run; "
                        "choose another folder or pass --overwrite to replace them")
    _check_same_run(output_dir, json.loads(metrics_path.read_text()).get("settings", {}), published_settings,
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


def start_or_resume(accelerator: Accelerator, checkpoint_dir: Path, generator: torch.Generator,
                    resume: bool) -> RunState:
    """A fresh RunState, or with resume the one the last checkpoint under checkpoint_dir recorded."""
    progress = checkpoint.read_progress(checkpoint_dir) if resume else None
    if progress is None:
        if resume and accelerator.is_main_process:
            tqdm.write(f"nothing to resume in {checkpoint_dir}: starting from the first epoch")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # --overwrite: an old run's checkpoint must not be resumed later
            checkpoint.discard_checkpoint(checkpoint_dir)
        return RunState(checkpoint_dir, generator, history=[], best={})
    if accelerator.is_main_process:
        tqdm.write(f"resuming after epoch {len(progress['history'])} ({progress['stage']}) from {checkpoint_dir}")
    best = {**progress["best"], "state": checkpoint.best_model_state(checkpoint_dir)}
    return RunState(checkpoint_dir, generator, history=progress["history"], best=best,
                    resume_stage=progress["stage_index"], resume_epochs_done=progress["stage_epochs_done"])


def make_stage(stage_plan: StagePlan, model: nn.Module, splits: data_module.DataSplits, preprocessing: Preprocessing,
               generator: torch.Generator, plan: RunPlan) -> Stage:
    """The Stage a StagePlan trains: the head on cached features, or the model on augmented images."""
    if stage_plan.on_features:  # with L-BFGS, one "epoch" per L2 strength tried
        epochs = len(L2_GRID) if plan.probe_solver == "lbfgs" else stage_plan.epochs
        return Stage(stage_plan.index, stage_plan.name, model.get_classifier(), feature_inputs(splits.train.features),
                     feature_inputs(splits.val.features), epochs, stage_plan.lr, FEATURE_BATCH_SIZE)
    device = next(model.parameters()).device
    inputs = {name: image_inputs(getattr(splits, name).images.to(device), preprocessing, generator)
              for name in ("train", "val")}
    return Stage(stage_plan.index, stage_plan.name, model, inputs["train"], inputs["val"], stage_plan.epochs,
                 stage_plan.lr, plan.eval_batch_size, plan.regularisation, plan.start_size, preprocessing.image_size)


# The whole-run estimate times decoding, features and each stage on this many training images (at least a batch).
ESTIMATE_SAMPLE_IMAGES = 64


def split_for_run(settings: TrainSettings, train: data_module.LabelledImages, test: data_module.LabelledImages,
                  class_names: list[str], val: data_module.LabelledImages | None):
    """The run's train, validation and test images: split_data with the run's hold-out, few-shot and size caps."""
    return data_module.split_data(
        train, test, class_names, val_size=settings.val_size, shots_per_class=settings.shots_per_class,
        train_fraction=settings.train_fraction, max_train_samples=settings.max_train_samples,
        max_eval_samples=settings.max_eval_samples, seed=settings.seed, split_seed=settings.split_seed, val=val)


def planned_sizes(opened: data_module.OpenedSplits, settings: TrainSettings) -> tuple[int, int, int]:
    """The run's (train, validation, test) images, from the labels alone: the run's split of images of no pixels."""
    def labels_only(split) -> data_module.LabelledImages:
        labels = torch.tensor(split[opened.label_column], dtype=torch.int64)
        return data_module.LabelledImages(torch.empty(len(labels), 0, dtype=torch.uint8), labels)
    own_val = None if opened.validation is None else labels_only(opened.validation)
    splits = split_for_run(settings, labels_only(opened.train), labels_only(opened.test), opened.class_names, own_val)
    return tuple(len(split) for split in splits)


def say_run_estimate(accelerator: Accelerator, settings: TrainSettings, plan: RunPlan,
                     opened: data_module.OpenedSplits, model: nn.Module, preprocessing: Preprocessing,
                     stage_plans: list[StagePlan], trains_only) -> None:
    """Print, before any long work, how long the whole run will take here: decoding, the frozen backbone's features,
    each stage's epochs and the final evaluation, each timed on a sample of the training images."""
    train_images, val_images, test_images = planned_sizes(opened, settings)
    count = min(len(opened.train), max(ESTIMATE_SAMPLE_IMAGES, settings.batch_size, plan.eval_batch_size))
    started = time.perf_counter()
    sample = data_module.decode_images(opened.train.select(range(count)), opened.image_column, opened.label_column,
                                       preprocessing.image_size)
    stored = len(opened.train) + len(opened.test) + (0 if opened.validation is None else len(opened.validation))
    parts = [("decoding", stored * (time.perf_counter() - started) / count,
              f"{stored:,} images, less from the image cache")]
    if plan.strategy.probe_first:
        started = time.perf_counter()
        sample.features = FrozenFeatures(accelerator, model, preprocessing, plan.eval_batch_size, None, None)(sample)
        capped = settings.max_train_samples is not None or settings.max_eval_samples is not None
        featured = train_images + val_images + test_images if capped else stored
        parts.append(("features", featured * (time.perf_counter() - started) / count,
                      f"{featured:,} images, less from the feature cache"))
    sample_splits = data_module.DataSplits(sample, sample, sample, opened.class_names, opened.image_column,
                                           opened.label_column)
    generator = torch.Generator(accelerator.device).manual_seed(settings.seed)
    training = 0.0  # what a time budget bounds
    for stage_plan in stage_plans:
        stage = make_stage(stage_plan, model, sample_splits, preprocessing, generator, plan)
        trains_only(stage_plan)
        seconds = estimate_stage_seconds(accelerator, stage, sample_splits, plan.loop, (train_images, val_images))
        training += seconds
        parts.append((stage.name, seconds, f"{stage.epochs} epoch(s)"))
    if not plan.strategy.frozen_backbone:  # a frozen backbone's final logits come from its cached features
        evaluated = val_images + test_images * (1 if settings.flip_tta == "off" else 2)
        batch = image_inputs(sample.images.to(accelerator.device), preprocessing, None)
        started = time.perf_counter()
        with torch.inference_mode(), accelerator.autocast():
            model.eval()(batch(torch.arange(min(count, plan.eval_batch_size), device=accelerator.device), False))
        per_image = (time.perf_counter() - started) / min(count, plan.eval_batch_size)
        parts.append(("final evaluation", evaluated * per_image / accelerator.num_processes, f"{evaluated:,} images"))
    if not accelerator.is_main_process:
        return
    total = sum(seconds for _, seconds, _ in parts)
    budget = settings.max_train_minutes
    limit = f"; the {budget:g}-minute budget ends training sooner" if budget and budget * 60 < training else ""
    described = ", ".join(f"{name}: {what}, {seconds / 60:.1f} min" for name, seconds, what in parts)
    tqdm.write(f"estimated wall time on this {accelerator.device.type}: about {total / 60:.1f} min ({described}; "
               f"timed on {count} training images before any long work{limit})")


def run(settings: TrainSettings, accelerator: Accelerator | None = None,
        decoded_store: data_module.DecodedDataStore | None = None) -> Path:
    """Train, evaluate and write the model folder; returns its path.

    A caller running several trainings in one process (a study) passes its own accelerator, which it ends, and a
    store in which the decoded dataset is kept between runs.
    """
    owns_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(settings.mixed_precision, settings.report_to, settings.output_dir)
    on_gpu = accelerator.device.type != "cpu"
    settings, from_recipe = with_recipe(settings)
    if from_recipe and accelerator.is_main_process:
        tqdm.write(f"--recipe {settings.recipe} sets " + " ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in from_recipe.items()))
    settings, picked = with_machine_defaults(settings, on_gpu)
    if picked and accelerator.is_main_process:
        tqdm.write(describe_defaults(picked, on_gpu))
    check_settings(settings)
    published = settings.published()
    output_dir = check_output_dir(Path(settings.output_dir), published, settings.overwrite, settings.resume)
    if settings.push_to_hub:  # a missing or read-only token must not cost a training run
        hub.check_push_access(settings.hub_model_id)
    if owns_accelerator and settings.report_to:
        accelerator.init_trackers(output_dir.name, config={key: value for key, value in settings.to_dict().items()
                                                           if isinstance(value, (bool, int, float, str))})
    plan = resolve(settings, accelerator.device, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
        if accelerator.is_main_process:
            tqdm.write(f"CPU: {plan.threads} thread(s) per process, {accelerator.num_processes} process(es)"
                       + ("" if settings.threads else "; --threads changes it"))
    set_seed(settings.seed)
    started = time.perf_counter()
    model_module.check_model_name(settings.model)
    opened = data_module.open_splits(settings.dataset, settings.image_column, settings.label_column,
                                     settings.train_split, settings.validation_split, settings.test_split,
                                     carve_seed=settings.seed if settings.split_seed is None else settings.split_seed)
    if opened.validation is not None and settings.val_size is not None:
        raise UserError(f"--val-size {settings.val_size} holds images out of train, but the dataset has its own "
                        f"{opened.sources.validation!r} split, which is validated on instead; drop --val-size")
    class_names = opened.class_names

    with accelerator.main_process_first():  # one process downloads the weights, the others read the cache
        model = model_module.create_model(settings.model, len(class_names), pretrained=plan.strategy.pretrained,
                                          pretrained_file=settings.pretrained_file, image_size=settings.image_size)
    trainable = model_module.trainable_parameters(model, plan.strategy.trains, settings.unfreeze_stages)
    if settings.freeze_depthwise:
        trainable = model_module.without_depthwise_weights(model, trainable)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), settings.image_size)
    if plan.start_size is not None and plan.start_size >= preprocessing.image_size:
        raise UserError(f"--progressive-resize {plan.start_size} must be smaller than the image size it grows to, "
                        f"{preprocessing.image_size} px")
    model = model.to(accelerator.device, memory_format=torch.channels_last)

    # Augmentation differs per process (each sees other images) but is reproducible for a given seed.
    generator = torch.Generator(accelerator.device).manual_seed(settings.seed + accelerator.process_index)
    run_state = start_or_resume(accelerator, output_dir / CHECKPOINT_DIR, generator, settings.resume)
    first_stage = run_state.resume_stage or 0  # a resumed run skips the stages it finished

    def trains_only(stage_plan: StagePlan) -> None:  # what the stage updates: the head on features, else `trainable`
        model_module.freeze_all_but(model, model_module.classifier_parameters(model) if stage_plan.on_features
                                    else trainable)

    say_run_estimate(accelerator, settings, plan, opened, model, preprocessing, plan.stages[first_stage:], trains_only)
    key = data_module.DecodedKey(settings.dataset, opened.sources, opened.image_column, opened.label_column,
                                 preprocessing.image_size)
    decoded = decoded_store.get(key) if decoded_store is not None else None
    if decoded is None:
        decoded = data_module.decode_splits(opened, preprocessing.image_size, plan.images_cache,
                                            progress=accelerator.is_local_main_process)
        if decoded_store is not None:
            decoded_store.put(key, decoded)
    frozen_features = FrozenFeatures(accelerator, model, preprocessing, plan.eval_batch_size, plan.compile_min_images,
                                     plan.features_cache) if plan.strategy.probe_first else None
    # Quick runs (size caps) compute features of the few images they use; others, of whole splits, once: one pass
    # (or one cache entry) then serves every hold-out and few-shot subset.
    capped = settings.max_train_samples is not None or settings.max_eval_samples is not None
    if frozen_features is not None and not capped:
        for split in (decoded.train, decoded.val, decoded.test):
            if split is not None:
                split.features = frozen_features(split)
    train, val, test = split_for_run(settings, decoded.train, decoded.test, class_names, decoded.val)
    if frozen_features is not None and capped:
        for split in (train, val, test):
            split.features = frozen_features(split)
    splits = data_module.DataSplits(train, val, test, class_names, opened.image_column, opened.label_column)
    split_sources = opened.sources.describe(len(val), len(test))
    if accelerator.is_main_process:
        tqdm.write(f"validation: {split_sources['validation']}; test: {split_sources['test']}")
    # Opening the dataset, creating the model, the estimate, decoding (or the image cache) and features (or the
    # feature cache).
    data_seconds = time.perf_counter() - started
    if not plan.strategy.pretrained and run_state.resume_stage is None:
        if model_module.initialise_from_data(model, splits.train.images, preprocessing) and accelerator.is_main_process:
            tqdm.write(f"{settings.model}: its first layer set from the training images' statistics (whitening)")
    if plan.head_init == "class-means" and run_state.resume_stage is None:
        features = splits.train.features
        model_module.imprint_classifier(model, features, splits.train.labels.to(features.device))
    if not plan.stages:  # nothing trains: the model as it stands is the run's result
        run_state.best = {"epoch": 0, "state": model_module.state_copy(model)}
        run_state.stopped_by = "no training"
    stages = [make_stage(stage_plan, model, splits, preprocessing, generator, plan)
              for stage_plan in plan.stages[first_stage:]]

    for stage_plan, stage in zip(plan.stages[first_stage:], stages):
        if not stage_plan.on_features and stage_plan.index > 0:
            model.load_state_dict(run_state.best["state"])  # fine-tune from the best probe head
        trains_only(stage_plan)
        if stage_plan.on_features and plan.probe_solver == "lbfgs":
            fit_head_stage(accelerator, stage, model, splits, run_state)
        else:
            train_stage(accelerator, stage, model, splits, plan.loop, run_state)
    history, best = run_state.history, run_state.best

    model.load_state_dict(best["state"])
    evaluation_started = time.perf_counter()
    frozen = plan.strategy.frozen_backbone
    val_logits = final_logits(accelerator, model, splits.val, preprocessing, frozen, plan.eval_batch_size, "val")
    test_logits = final_logits(accelerator, model, splits.test, preprocessing, frozen, plan.eval_batch_size, "test")
    test = classification_metrics(test_logits, splits.test.labels, splits.class_names)
    calibration = calibration_report(val_logits, splits.val.labels, test_logits, splits.test.labels)
    flip_tta = None if settings.flip_tta == "off" else flip_tta_report(
        accelerator, model, splits.test, test_logits, preprocessing, plan.eval_batch_size,
        frozen_features if frozen else None)
    evaluation_seconds = time.perf_counter() - evaluation_started
    test["best_epoch"] = best["epoch"]
    trained_images = len(splits.train) * len(history)
    training_seconds = sum(entry["seconds"] for entry in history)
    metrics = metrics_record(
        history=history,
        stopped_by=run_state.stopped_by,
        test=test,
        settings=published,
        model={"architecture": model.pretrained_cfg.get("architecture", settings.model),
               "base_model": base_model_id(model, settings.model, plan.strategy.pretrained),
               "pretrained_file": published["pretrained_file"]},
        calibration=calibration,
        flip_tta=flip_tta,
        preprocessing=preprocessing.to_dict(),
        data={"train_images": len(splits.train), "val_images": len(splits.val), "test_images": len(splits.test),
              "train_images_per_class": dict(zip(splits.class_names, torch.bincount(
                  splits.train.labels, minlength=len(splits.class_names)).tolist())),
              "class_names": splits.class_names, "image_column": opened.image_column,
              "label_column": opened.label_column, "validation_source": split_sources["validation"],
              "test_source": split_sources["test"],
              "carved_test_fraction": None if opened.sources.test else data_module.CARVED_TEST_FRACTION},
        trainable_parameters=sum(p.numel() for p in trainable),
        total_parameters=sum(p.numel() for p in model.parameters()),
        timing={"total_seconds": time.perf_counter() - started, "data_seconds": data_seconds,
                "training_seconds": training_seconds, "evaluation_seconds": evaluation_seconds,
                "train_images_per_second": trained_images / max(training_seconds, 1e-9)},
        hardware={"device": str(accelerator.device), "processes": accelerator.num_processes,
                  "mixed_precision": accelerator.mixed_precision,
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    )
    # With the probabilities the app will show: calibrated.
    mistakes = misclassified_records(test_logits / calibration["temperature"], splits.test.labels, splits.class_names,
                                     settings.max_misclassified)
    accelerator.log({"test_accuracy": test["accuracy"], "test_loss": test["loss"]}, step=len(history))
    if accelerator.is_main_process:
        write_model_folder(output_dir, model, splits.class_names, preprocessing, metrics, mistakes, splits.test.images)
        with_tta = "" if flip_tta is None else (f", {flip_tta['test_accuracy']:.4f} with flip test-time augmentation "
                                                f"({'on' if flip_tta['enabled'] else 'off'} in the app)")
        tqdm.write(f"test accuracy {test['accuracy']:.4f} (best epoch {best['epoch']}){with_tta}; expected calibration error "
                   f"{calibration['test_ece_before']:.4f}, {calibration['test_ece_after']:.4f} at temperature "
                   f"{calibration['temperature']:.3f}; model folder: {output_dir}")
        if settings.push_to_hub:
            push(output_dir, settings.hub_model_id, settings.private,
                 f"{settings.strategy} {settings.model} on {published['dataset']}: test accuracy "
                 f"{test['accuracy']:.4f} ({output_dir.name})")
    accelerator.wait_for_everyone()
    if owns_accelerator:
        accelerator.end_training()  # closes trackers and, in newer accelerate, the process group: last
    return output_dir
