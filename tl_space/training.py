"""The training run: one accelerate loop, where the strategy decides what trains and on which inputs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast, set_seed
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from tl_space import checkpoint
from tl_space.calibration import calibration_report
from tl_space import data as data_module
from tl_space import disk_cache
from tl_space import features as feature_cache
from tl_space import hub
from tl_space import model as model_module
from tl_space.errors import UserError
from tl_space.evaluation import classification_metrics, misclassified_records
from tl_space.report import check_output_dir, write_model_folder
from tl_space.settings import (BACKBONE_LR, COMPILE_MIN_IMAGES, CPU_EVAL_BATCH_SIZE, HEAD_LR, TrainSettings,
                               check_settings, keeps_batchnorm_statistics)
from tl_space.transforms import Preprocessing, preprocessing_for, random_crop_flip, to_model_input

# Maps a batch of split indices to what the trained module takes (augmented images, or cached features).
InputsFn = Callable[[torch.Tensor, bool], torch.Tensor]
WARMUP_FRACTION = 0.05
# Pooled features are short rows: a linear head evaluates them in large batches at no cost in cache misses.
FEATURE_BATCH_SIZE = 1024
# Flip test-time augmentation doubles the app's work per image: worth it from half a point of test accuracy.
TTA_MIN_GAIN = 0.005


@dataclass
class Stage:
    """One phase of training: which module learns, on what inputs, for how long."""

    index: int
    name: str
    module: nn.Module
    train_inputs: InputsFn
    val_inputs: InputsFn
    epochs: int
    lr: float
    eval_batch_size: int


@dataclass
class RunState:
    """What carries over between epochs and stages, and what a resumed run starts from."""

    checkpoint_dir: Path
    generator: torch.Generator  # augmentation
    history: list[dict]
    best: dict  # accuracy, epoch, state (the model's state_dict at its best validation accuracy)
    resume_stage: int | None = None  # the stage a resumed run continues, None for a fresh run
    resume_epochs_done: int = 0


@dataclass
class TimeBudget:
    """A stage's share of --max-train-minutes: the fraction spent, agreed by all processes so they stop together."""

    allowed_seconds: float | None  # None: no time budget
    spent_before: float = 0.0  # by this stage's finished epochs
    epoch_started: float = 0.0
    fraction: float = 0.0

    def update(self, accelerator: Accelerator) -> None:
        if self.allowed_seconds is None:
            return
        spent = self.spent_before + time.perf_counter() - self.epoch_started
        fraction = torch.tensor([spent / max(self.allowed_seconds, 1e-9)], device=accelerator.device)
        if accelerator.num_processes > 1:  # one clock, process 0's: the same learning rate and last step everywhere
            fraction = broadcast(fraction, from_process=0)
        self.fraction = float(fraction)

    @property
    def exhausted(self) -> bool:
        return self.allowed_seconds is not None and self.fraction >= 1


def make_accelerator(settings: TrainSettings) -> Accelerator:
    mixed_precision = None  # None: what `accelerate launch` / `accelerate config` chose
    if settings.mixed_precision != "auto":
        mixed_precision = settings.mixed_precision
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        mixed_precision = "bf16"
    return Accelerator(
        # On a machine with no GPU, processes started by torchrun / `accelerate launch --multi_gpu` join one
        # CPU (gloo) process group; accelerate only does that when told it runs on the CPU.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision,
        log_with=settings.report_to,
        project_dir=settings.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def index_loader(count: int, batch_size: int, shuffle: bool, seed: int, min_samples: int = 0) -> DataLoader:
    """Batches of indices into an in-memory split; accelerate shards them across processes.

    When shuffling, an epoch holds at least min_samples indices: a small split is shuffled again and again.
    """
    if not shuffle:
        return DataLoader(range(count), batch_size=batch_size)
    sampler = RandomSampler(range(count), num_samples=max(count, min_samples),
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(range(count), batch_size=batch_size, sampler=sampler)


def image_inputs(images: torch.Tensor, preprocessing: Preprocessing, generator: torch.Generator | None) -> InputsFn:
    """Indices -> model input, augmented (crop + flip) when training."""
    def inputs(indices: torch.Tensor, training: bool) -> torch.Tensor:
        batch = images[indices.to(images.device)]
        if training:
            batch = random_crop_flip(batch, generator)
        return to_model_input(batch, preprocessing)
    return inputs


@torch.inference_mode()
def predict(accelerator: Accelerator, module: nn.Module, inputs: InputsFn, count: int, batch_size: int,
            description: str = "") -> torch.Tensor:
    """Outputs of module for every index 0..count-1, in order, gathered over processes without duplicates."""
    loader = accelerator.prepare(index_loader(count, batch_size, shuffle=False, seed=0))
    was_training = module.training
    module.eval()
    outputs = []
    for indices in tqdm(loader, desc=description, disable=not description or not accelerator.is_local_main_process,
                        leave=False):
        with accelerator.autocast():
            batch_outputs = module(inputs(indices, False)).float()
        outputs.append(accelerator.gather_for_metrics(batch_outputs))
    module.train(was_training)
    return torch.cat(outputs).cpu()


def eval_batch_size(accelerator: Accelerator, settings: TrainSettings) -> int:
    if settings.eval_batch_size:
        return settings.eval_batch_size
    return CPU_EVAL_BATCH_SIZE if accelerator.device.type == "cpu" else settings.batch_size


class PooledFeatures(nn.Module):
    """The backbone up to the classifier's input, as a module predict() can run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return model_module.pooled_features(self.model, inputs)


class FixedBatch(nn.Module):
    """Runs module on batches padded to one size, so a compiled module never recompiles for the last, short batch."""

    def __init__(self, module: nn.Module, batch_size: int):
        super().__init__()
        self.module, self.batch_size = module, batch_size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        count = len(inputs)
        if count < self.batch_size:
            inputs = torch.cat([inputs, inputs[-1:].expand(self.batch_size - count, *inputs.shape[1:])])
        return self.module(inputs)[:count]


def should_compile(accelerator: Accelerator, settings: TrainSettings, images: int) -> bool:
    """--compile yes, or auto on a CPU with enough images to repay compiling (bench/bench_features.py)."""
    if settings.compile == "auto":
        return accelerator.device.type == "cpu" and images >= COMPILE_MIN_IMAGES
    return settings.compile == "yes"


def feature_extractor(model: nn.Module, batch_size: int, compile_it: bool) -> nn.Module:
    """The frozen backbone's pooled features as a module; compiled for fixed-size batches when compile_it."""
    backbone = PooledFeatures(model)
    if not compile_it:
        return backbone
    return FixedBatch(torch.compile(backbone, dynamic=False), batch_size)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int,
                       time_fraction: Callable[[], float] = lambda: 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0, over total_steps or over a time budget, whichever is further along."""
    warmup_steps = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        time_progress = time_fraction()
        if step < warmup_steps and time_progress < WARMUP_FRACTION:
            return max((step + 1) / warmup_steps, time_progress / WARMUP_FRACTION)
        progress = max((step - warmup_steps) / max(1, total_steps - warmup_steps),
                       (time_progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))
        return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_stage(accelerator: Accelerator, stage: Stage, model: nn.Module, splits: data_module.DataSplits,
                settings: TrainSettings, run_state: RunState) -> None:
    """Train stage.module for stage.epochs (from its checkpoint when resuming this stage); append per-epoch metrics
    to run_state.history, keep the best model in run_state.best, and checkpoint after every epoch."""
    trainable = [parameter for parameter in stage.module.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=settings.weight_decay)
    loader = index_loader(len(splits.train), settings.batch_size, shuffle=True, seed=settings.seed,
                          min_samples=settings.min_epoch_images)
    module, optimizer, loader = accelerator.prepare(stage.module, optimizer, loader)
    # Counted in optimizer steps of the sharded loader and stepped by us, not by accelerate's per-process
    # scheduler wrapper: N processes then follow the same schedule as one process with N times the batch.
    budget = TimeBudget(None)
    scheduler = cosine_with_warmup(optimizer, stage.epochs * len(loader), lambda: budget.fraction)
    done = 0
    if run_state.resume_stage == stage.index:
        checkpoint.restore_checkpoint(accelerator, run_state.checkpoint_dir, scheduler, run_state.generator, stage.lr)
        done = run_state.resume_epochs_done
    history, best = run_state.history, run_state.best
    train_labels = splits.train.labels.to(accelerator.device)
    first_epoch = len(history) - done + 1
    last_epoch = first_epoch + stage.epochs - 1
    if settings.max_train_minutes:  # earlier stages' time counts against the run's budget
        budget.allowed_seconds = settings.max_train_minutes * 60 - sum(e["seconds"] for e in history[:first_epoch - 1])
        budget.spent_before = sum(entry["seconds"] for entry in history[first_epoch - 1:])
        if budget.allowed_seconds <= 0:
            if accelerator.is_main_process:
                tqdm.write(f"{stage.name}: skipped, the {settings.max_train_minutes:g}-minute budget is spent")
            return
    for epoch in range(first_epoch + done, last_epoch + 1):
        loader.set_epoch(epoch)
        model_module.train_mode(module, keeps_batchnorm_statistics(settings.batchnorm, settings.strategy))
        started = budget.epoch_started = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device)
        seen = torch.zeros((), device=accelerator.device)
        progress = tqdm(loader, desc=f"{stage.name} epoch {epoch}/{last_epoch}",
                        disable=not accelerator.is_local_main_process)
        for step, indices in enumerate(progress, start=1):
            indices = indices.to(accelerator.device)
            labels = train_labels[indices]
            with accelerator.autocast():
                logits = module(stage.train_inputs(indices, True))
                loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):  # before the step: the weights and the last checkpoint stay good
                kept = (f"the last good checkpoint (epoch {len(history)}) is kept in {run_state.checkpoint_dir}"
                        if history else "no epoch finished, so there is no checkpoint")
                advice = (f"rerun with --resume and a lower --lr (now {stage.lr})" if history else
                          f"lower --lr (now {stage.lr}) or use --mixed-precision no")
                raise UserError(f"the training loss became {loss.item()} in epoch {epoch}, step {step} of "
                                f"{len(loader)}; {kept}. To go on, {advice}")
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            budget.update(accelerator)
            if budget.exhausted:  # this epoch ends here, validated and saved like any other
                break
        totals = accelerator.reduce(torch.stack([loss_sum, correct, seen]), reduction="sum")
        train_seconds = time.perf_counter() - started
        val_logits = predict(accelerator, accelerator.unwrap_model(module), stage.val_inputs, len(splits.val),
                             stage.eval_batch_size)
        val = classification_metrics(val_logits, splits.val.labels, splits.class_names)
        entry = {
            "epoch": epoch, "stage": stage.name,
            "train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - started, "train_images_per_second": float(totals[2]) / train_seconds,
            "lr": stage.lr,
        }
        history.append(entry)
        accelerator.log({k: v for k, v in entry.items() if k != "stage"}, step=epoch)
        if accelerator.is_main_process:
            tqdm.write(f"epoch {epoch} ({stage.name}): train loss {entry['train_loss']:.4f} "
                       f"acc {entry['train_accuracy']:.4f} | val loss {entry['val_loss']:.4f} "
                       f"acc {entry['val_accuracy']:.4f} | {entry['seconds']:.1f}s")
        if "accuracy" not in best or entry["val_accuracy"] > best["accuracy"]:
            best.update(accuracy=entry["val_accuracy"], epoch=epoch,
                        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        progress_record = {"settings": settings.published(), "stage": stage.name, "stage_index": stage.index,
                           "stage_epochs_done": epoch - first_epoch + 1, "history": history,
                           "best": {"accuracy": best["accuracy"], "epoch": best["epoch"]}}
        checkpoint.save_checkpoint(accelerator, run_state.checkpoint_dir, progress_record, best["state"], scheduler,
                                   run_state.generator)
        budget.spent_before += entry["seconds"]
        budget.epoch_started = time.perf_counter()
        budget.update(accelerator)
        if budget.exhausted:
            if accelerator.is_main_process:
                tqdm.write(f"{stage.name}: the {settings.max_train_minutes:g}-minute budget is spent after epoch {epoch}")
            break
    accelerator.free_memory()


def backbone_features(accelerator: Accelerator, model: nn.Module, preprocessing: Preprocessing,
                      settings: TrainSettings) -> Callable[[data_module.LabelledImages], torch.Tensor]:
    """A function giving a split's pooled features: from the feature cache when the same features were made before."""
    fingerprint = feature_cache.backbone_fingerprint(model)
    # The timm name, not just the class: tf_efficientnet_lite0 and efficientnet_lite0 share weights' shapes, not padding.
    architecture = model.pretrained_cfg.get("architecture", type(model).__name__)
    cache_dir = disk_cache.cache_folder(settings.cache_dir, "features")

    def features_of(split: data_module.LabelledImages) -> torch.Tensor:
        key = feature_cache.cache_key(fingerprint, architecture, preprocessing, str(accelerator.mixed_precision),
                                      feature_cache.images_fingerprint(split.images))
        inputs = image_inputs(split.images.to(accelerator.device), preprocessing, generator=None)
        batch_size = eval_batch_size(accelerator, settings)

        def compute() -> torch.Tensor:
            description = f"features ({len(split)} images)"
            if should_compile(accelerator, settings, len(split)):
                try:
                    return predict(accelerator, feature_extractor(model, batch_size, True), inputs, len(split),
                                   batch_size, description=description + ", compiled")
                except Exception as error:  # e.g. no C++ compiler for inductor: eager mode gives the same features
                    tqdm.write(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                               "computing features without it (--compile no skips trying)")
            return predict(accelerator, feature_extractor(model, batch_size, False), inputs, len(split), batch_size,
                           description=description)
        stored, hit = disk_cache.cached_tensors(cache_dir, key, lambda: {"features": compute()},
                                                write=accelerator.is_main_process)
        features = stored["features"]
        accelerator.wait_for_everyone()  # the file is whole before any process looks for the next one
        if hit and accelerator.is_main_process:
            tqdm.write(f"features of {len(split)} images from the cache ({cache_dir})")
        return features.to(accelerator.device)
    return features_of


def feature_inputs(split_features: torch.Tensor) -> InputsFn:
    return lambda indices, training: split_features[indices.to(split_features.device)]


def final_logits(accelerator: Accelerator, model: nn.Module, split: data_module.LabelledImages,
                 preprocessing: Preprocessing, settings: TrainSettings, description: str) -> torch.Tensor:
    """The trained model's logits for a split (unaugmented); a linear probe's from the split's features through the
    head: the same numbers as the whole model in eval mode, without another backbone pass."""
    if settings.strategy == "linear-probe":
        return predict(accelerator, model.get_classifier(), feature_inputs(split.features), len(split), FEATURE_BATCH_SIZE)
    inputs = image_inputs(split.images.to(accelerator.device), preprocessing, generator=None)
    return predict(accelerator, model, inputs, len(split), eval_batch_size(accelerator, settings),
                   description=description)


def flip_tta_report(accelerator: Accelerator, model: nn.Module, test: data_module.LabelledImages,
                    test_logits: torch.Tensor, preprocessing: Preprocessing, settings: TrainSettings,
                    features_of: Callable[[data_module.LabelledImages], torch.Tensor] | None) -> dict:
    """Test accuracy with flip test-time augmentation (the mean of the logits of each image and its mirror image),
    reported beside the plain one; `enabled` tells the app to use it: only when it gains at least TTA_MIN_GAIN."""
    started = time.perf_counter()
    mirrored = data_module.LabelledImages(test.images.flip(-1), test.labels)
    if settings.strategy == "linear-probe":  # the frozen backbone's features of the mirror images (cached too)
        mirrored.features = features_of(mirrored)
    mirrored_logits = final_logits(accelerator, model, mirrored, preprocessing, settings, "test, mirrored")
    averaged = (test_logits + mirrored_logits) / 2
    plain_accuracy = float((test_logits.argmax(dim=1) == test.labels).double().mean())
    accuracy = float((averaged.argmax(dim=1) == test.labels).double().mean())
    return {"test_accuracy": accuracy, "test_loss": float(F.cross_entropy(averaged, test.labels)),
            "gain": accuracy - plain_accuracy, "seconds": time.perf_counter() - started,
            "enabled": accuracy - plain_accuracy >= TTA_MIN_GAIN, "min_gain": TTA_MIN_GAIN}


def base_model_id(model: nn.Module, settings: TrainSettings) -> str | None:
    """The Hub id of the pretrained weights the run started from (timm/<name>.<tag>), None from scratch."""
    if settings.strategy == "scratch":
        return None
    if settings.model.startswith("hf-hub:"):
        return settings.model.removeprefix("hf-hub:")
    return model.pretrained_cfg.get("hf_hub_id")


def push(output_dir: Path, settings: TrainSettings, test_accuracy: float) -> None:
    """Upload the finished folder; on failure the folder stays whole and the error says how to retry."""
    message = (f"{settings.strategy} {settings.model} on {settings.dataset}: "
               f"test accuracy {test_accuracy:.4f} ({output_dir.name})")
    try:
        url = hub.push_model_folder(output_dir, settings.hub_model_id, private=settings.private, commit_message=message)
    except Exception as error:
        raise UserError(f"the model folder {output_dir} is complete, but pushing it to {settings.hub_model_id} failed "
                        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); retry the "
                        f"upload alone with: {hub.retry_command(output_dir, settings.hub_model_id, settings.private)}") from error
    tqdm.write(f"pushed to https://huggingface.co/{settings.hub_model_id} ({url})")


def start_or_resume(accelerator: Accelerator, checkpoint_dir: Path, generator: torch.Generator,
                    settings: TrainSettings) -> RunState:
    """A fresh RunState, or with --resume the one the last checkpoint under checkpoint_dir recorded."""
    progress = checkpoint.read_progress(checkpoint_dir) if settings.resume else None
    if progress is None:
        if settings.resume and accelerator.is_main_process:
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


def run(settings: TrainSettings, accelerator: Accelerator | None = None, decoded: dict | None = None) -> Path:
    """Train, evaluate and write the model folder; returns its path.

    A caller running several trainings in one process (a study) passes its own accelerator, which it ends, and a
    dict in which the decoded dataset is kept between runs.
    """
    check_settings(settings)
    output_dir = check_output_dir(Path(settings.output_dir), settings)
    if settings.push_to_hub:  # a missing or read-only token must not cost a training run
        hub.check_push_access(settings.hub_model_id)
    owns_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(settings)
    if owns_accelerator and settings.report_to:
        accelerator.init_trackers(output_dir.name, config={key: value for key, value in settings.to_dict().items()
                                                           if isinstance(value, (bool, int, float, str))})
    set_seed(settings.seed)
    started = time.perf_counter()
    model_module.check_model_name(settings.model)
    dataset_dict, image_column, label_column, class_names = data_module.open_dataset(
        settings.dataset, settings.image_column, settings.label_column, settings.train_split, settings.test_split)

    with accelerator.main_process_first():  # one process downloads the weights, the others read the cache
        model = model_module.create_model(settings.model, len(class_names), pretrained=settings.strategy != "scratch",
                                          pretrained_file=settings.pretrained_file)
    trainable = model_module.trainable_parameters(model, settings.strategy, settings.unfreeze_stages)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), settings.image_size)
    model = model.to(accelerator.device, memory_format=torch.channels_last)
    probe_first = settings.strategy in ("linear-probe", "lp-ft")
    features_of = backbone_features(accelerator, model, preprocessing, settings) if probe_first else None
    splits = data_module.decode_splits(
        dataset_dict, image_column, label_column, class_names, preprocessing.image_size, settings,
        progress=accelerator.is_local_main_process,
        features_of=features_of,
        decoded=decoded)
    # Opening the dataset, creating the model, decoding (or the image cache) and features (or the feature cache).
    data_seconds = time.perf_counter() - started
    # Augmentation differs per process (each sees other images) but is reproducible for a given seed.
    generator = torch.Generator(accelerator.device).manual_seed(settings.seed + accelerator.process_index)
    image_inputs_by_split = {name: image_inputs(getattr(splits, name).images.to(accelerator.device), preprocessing, generator)
                             for name in ("train", "val", "test")}

    run_state = start_or_resume(accelerator, output_dir / checkpoint.CHECKPOINT_DIR, generator, settings)
    first_stage = run_state.resume_stage or 0  # a resumed run skips the stages it finished
    if probe_first and first_stage == 0:
        model_module.freeze_all_but(model, model_module.classifier_parameters(model))
        stage = Stage(0, "linear-probe", model.get_classifier(), feature_inputs(splits.train.features),
                      feature_inputs(splits.val.features),
                      settings.probe_epochs if settings.strategy == "lp-ft" else settings.epochs,
                      HEAD_LR if settings.strategy == "lp-ft" else settings.lr or HEAD_LR, FEATURE_BATCH_SIZE)
        train_stage(accelerator, stage, model, splits, settings, run_state)
    index = 1 if probe_first else 0
    if settings.strategy != "linear-probe" and first_stage <= index:
        if settings.strategy == "lp-ft":
            model.load_state_dict(run_state.best["state"])  # fine-tune from the best probe head
        model_module.freeze_all_but(model, trainable)
        stage = Stage(index, "finetune" if settings.strategy == "lp-ft" else settings.strategy, model,
                      image_inputs_by_split["train"], image_inputs_by_split["val"],
                      settings.epochs, settings.lr or BACKBONE_LR[settings.strategy], eval_batch_size(accelerator, settings))
        train_stage(accelerator, stage, model, splits, settings, run_state)
    history, best = run_state.history, run_state.best

    model.load_state_dict(best["state"])
    evaluation_started = time.perf_counter()
    val_logits = final_logits(accelerator, model, splits.val, preprocessing, settings, "val")
    test_logits = final_logits(accelerator, model, splits.test, preprocessing, settings, "test")
    test = classification_metrics(test_logits, splits.test.labels, splits.class_names)
    calibration = calibration_report(val_logits, splits.val.labels, test_logits, splits.test.labels)
    flip_tta = None if settings.flip_tta == "off" else flip_tta_report(accelerator, model, splits.test, test_logits,
                                                                       preprocessing, settings, features_of)
    evaluation_seconds = time.perf_counter() - evaluation_started
    test["best_epoch"] = best["epoch"]
    trained_images = len(splits.train) * len(history)
    training_seconds = sum(entry["seconds"] for entry in history)
    published = settings.published()
    metrics = {
        "history": history,
        "test": test,
        "settings": published,
        "model": {"architecture": model.pretrained_cfg.get("architecture", settings.model),
                  "base_model": base_model_id(model, settings),
                  "pretrained_file": published["pretrained_file"]},
        "calibration": calibration,
        "flip_tta": flip_tta,
        "preprocessing": preprocessing.to_dict(),
        "data": {"train_images": len(splits.train), "val_images": len(splits.val), "test_images": len(splits.test),
                 "train_images_per_class": dict(zip(splits.class_names, torch.bincount(
                     splits.train.labels, minlength=len(splits.class_names)).tolist())),
                 "class_names": splits.class_names, "image_column": image_column, "label_column": label_column},
        "trainable_parameters": sum(p.numel() for p in trainable),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "timing": {"total_seconds": time.perf_counter() - started, "data_seconds": data_seconds,
                   "training_seconds": training_seconds, "evaluation_seconds": evaluation_seconds,
                   "train_images_per_second": trained_images / max(training_seconds, 1e-9)},
        "hardware": {"device": str(accelerator.device), "processes": accelerator.num_processes,
                     "mixed_precision": accelerator.mixed_precision,
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
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
            push(output_dir, settings, test["accuracy"])
    accelerator.wait_for_everyone()
    if owns_accelerator:
        accelerator.end_training()  # closes trackers and, in newer accelerate, the process group: last
    return output_dir
