"""The training loop: stages of epochs over in-memory splits, validated, checkpointed and timed, on any accelerator."""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from torch import nn
from tqdm.auto import tqdm

from tl_space import model as model_module
from tl_space.data import DataSplits
from tl_space.errors import UserError
from tl_space.folder.metrics import EpochRecord, StoppedBy
from tl_space.settings import LRSchedule, Optimizer
from tl_space.training import checkpoint
from tl_space.training.batches import InputsFn, index_loader, predict
from tl_space.training.evaluation import classification_metrics
from tl_space.training.regularisation import BatchRegulariser, Lookahead, Regularisation, weight_average
from tl_space.transforms import progressive_size

WARMUP_FRACTION = 0.05
# airbench's triangular schedule: from 0.2x the peak up to it at 23% of the stage, then down to 0.07x at the end.
TRIANGLE_START, TRIANGLE_PEAK_AT, TRIANGLE_END = 0.2, 0.23, 0.07
# --optimizer nesterov, airbench's SGD: its momentum, and the learning rate of normalisation layers' parameters (their
# weight decay divided by as much, so each parameter decays by the same share per step).
NESTEROV_MOMENTUM = 0.85
NORM_LR_SCALE = 64.0
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
# --probe-solver lbfgs: the L2 strengths tried, strongest first (each fit starts from the previous one's head), and
# the L-BFGS iterations of each fit: on lite0's CIFAR-10 features 1e-4 and 3e-4 never won, and 30 iterations gave
# the accuracy of 100 (-0.07 points) in a third of the time (bench/bench_probe_solver.py).
L2_GRID = (1e-2, 3e-3, 1e-3)
LBFGS_STEPS = 30


@dataclass(frozen=True)
class LoopSettings:
    """What every stage's loop needs of the run's settings, resolved to plain values."""

    batch_size: int
    weight_decay: float
    seed: int
    min_epoch_images: int
    max_train_minutes: float | None
    patience: int | None  # epochs without a better validation accuracy that end a stage; None: never
    keep_batchnorm_statistics: bool


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
    regularisation: Regularisation = Regularisation()  # of a stage on images; a head on features takes none
    optimizer: Optimizer = Optimizer.ADAMW  # a head on features always learns with AdamW
    lr_schedule: LRSchedule = LRSchedule.COSINE
    start_size: int | None = None  # progressive resizing: the training images' size at the start; None: off
    image_size: int | None = None  # the size the stage's images end at (and are validated at)


@dataclass(frozen=True)
class BestModel:
    """The model at its best validation accuracy so far: what the run keeps and writes."""

    accuracy: float | None  # None: nothing validated yet
    epoch: int
    state: dict[str, torch.Tensor] | None  # the model's state_dict (a CPU copy)

    def beaten_by(self, val_accuracy: float) -> bool:
        return self.accuracy is None or val_accuracy > self.accuracy


NO_BEST = BestModel(None, 0, None)


@dataclass
class RunState:
    """What carries over between epochs and stages, and what a resumed run starts from."""

    checkpoint_dir: Path
    generator: torch.Generator  # augmentation
    published_settings: dict  # recorded in each checkpoint, so --resume can check it continues the same run
    history: list[EpochRecord] = field(default_factory=list)
    best: BestModel = NO_BEST
    resume_stage: int | None = None  # the stage a resumed run continues, None for a fresh run
    resume_epochs_done: int = 0
    stopped_by: StoppedBy = StoppedBy.EPOCHS  # what ended the last stage

    def seconds_before(self, epoch: int) -> float:
        """Training seconds of the run's epochs before this one (1-based)."""
        return sum(entry.seconds for entry in self.history[:epoch - 1])


@dataclass
class TimeBudget:
    """A stage's share of --max-train-minutes: the fraction spent, agreed by all processes so they stop together."""

    allowed_seconds: float | None  # None: no time budget
    clock: Callable[[], float] = time.perf_counter
    spent_before: float = 0.0  # by this stage's finished epochs
    epoch_started: float = 0.0
    fraction: float = 0.0

    def start_epoch(self) -> float:
        self.epoch_started = self.clock()
        return self.epoch_started

    def update(self, accelerator: Accelerator) -> None:
        if self.allowed_seconds is None:
            return
        spent = self.spent_before + self.clock() - self.epoch_started
        fraction = torch.tensor([spent / max(self.allowed_seconds, 1e-9)], device=accelerator.device)
        if accelerator.num_processes > 1:  # one clock, process 0's: the same learning rate and last step everywhere
            fraction = broadcast(fraction, from_process=0)
        self.fraction = float(fraction)

    @property
    def exhausted(self) -> bool:
        return self.allowed_seconds is not None and self.fraction >= 1


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


def triangle(optimizer: torch.optim.Optimizer, total_steps: int,
             time_fraction: Callable[[], float] = lambda: 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """airbench's schedule: linear from TRIANGLE_START up to 1 at TRIANGLE_PEAK_AT of the stage, then linear down to
    TRIANGLE_END at its end, over total_steps or over a time budget, whichever is further along."""
    def factor(step: int) -> float:
        progress = min(1.0, max(step / max(1, total_steps), time_fraction()))
        if progress < TRIANGLE_PEAK_AT:
            return TRIANGLE_START + (1 - TRIANGLE_START) * progress / TRIANGLE_PEAK_AT
        return 1 - (1 - TRIANGLE_END) * (progress - TRIANGLE_PEAK_AT) / (1 - TRIANGLE_PEAK_AT)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


LR_SCHEDULES = {LRSchedule.COSINE: cosine_with_warmup, LRSchedule.TRIANGLE: triangle}


def make_optimizer(kind: Optimizer, module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over module's trainable parameters, or airbench's Nesterov SGD, whose normalisation layers' parameters
    learn at NORM_LR_SCALE times lr (each group's lr_scale, which a resumed schedule keeps)."""
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    if kind == Optimizer.ADAMW:
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    norm_ids = {id(parameter) for layer in module.modules() if isinstance(layer, NORM_LAYERS)
                for parameter in layer.parameters(recurse=False)}
    groups = [dict(params=[p for p in trainable if id(p) not in norm_ids], lr=lr, lr_scale=1.0,
                   weight_decay=weight_decay),
              dict(params=[p for p in trainable if id(p) in norm_ids], lr=lr * NORM_LR_SCALE, lr_scale=NORM_LR_SCALE,
                   weight_decay=weight_decay / NORM_LR_SCALE)]
    return torch.optim.SGD([group for group in groups if group["params"]], lr=lr, momentum=NESTEROV_MOMENTUM,
                           nesterov=True)


def record_epoch(accelerator: Accelerator, run_state: RunState, entry: EpochRecord, kept: nn.Module,
                 what: str) -> None:
    """One finished epoch of either stage kind: into the history and the trackers, one line on the console, and the
    kept module's weights as the run's best when its validation accuracy is the best so far."""
    run_state.history.append(entry)
    accelerator.log(entry.logged(), step=entry.epoch)
    if accelerator.is_main_process:
        tqdm.write(f"{what}: train loss {entry.train_loss:.4f} acc {entry.train_accuracy:.4f} | val loss "
                   f"{entry.val_loss:.4f} acc {entry.val_accuracy:.4f} | {entry.seconds:.1f}s")
    if run_state.best.beaten_by(entry.val_accuracy):
        run_state.best = BestModel(entry.val_accuracy, entry.epoch, model_module.state_copy(kept))


def check_finite(loss: torch.Tensor, stage: Stage, epoch: int, step: int, steps: int, run_state: RunState) -> None:
    """A UserError before the step when the loss is no number: the weights and the last checkpoint stay good."""
    if torch.isfinite(loss):
        return
    history = run_state.history
    kept = (f"the last good checkpoint (epoch {len(history)}) is kept in {run_state.checkpoint_dir}"
            if history else "no epoch finished, so there is no checkpoint")
    advice = (f"rerun with --resume and a lower --lr (now {stage.lr})" if history else
              f"lower --lr (now {stage.lr}) or use --mixed-precision no")
    raise UserError(f"the training loss became {loss.item()} in epoch {epoch}, step {step} of {steps}; {kept}. "
                    f"To go on, {advice}")


def patience_ran_out(run_state: RunState, patience: int | None, epoch: int, first_epoch: int) -> bool:
    """Whether the stage went `patience` epochs without a better validation accuracy, counted within the stage: a
    probe that plateaued early leaves the fine-tuning stage its full patience."""
    return bool(patience) and epoch - max(run_state.best.epoch, first_epoch - 1) >= patience


def train_stage(accelerator: Accelerator, stage: Stage, model: nn.Module, splits: DataSplits,
                settings: LoopSettings, run_state: RunState) -> None:
    """Train stage.module for stage.epochs (from its checkpoint when resuming this stage); record every epoch
    (record_epoch), keep the best model, and checkpoint after every epoch."""
    run_state.stopped_by = StoppedBy.EPOCHS
    optimizer = make_optimizer(stage.optimizer, stage.module, stage.lr, settings.weight_decay)
    loader = index_loader(len(splits.train), settings.batch_size, shuffle=True, seed=settings.seed,
                          min_samples=settings.min_epoch_images)
    module, optimizer, loader = accelerator.prepare(stage.module, optimizer, loader)
    # Counted in optimizer steps of the sharded loader and stepped by us, not by accelerate's per-process
    # scheduler wrapper: N processes then follow the same schedule as one process with N times the batch.
    budget = TimeBudget(None)
    total_steps = stage.epochs * len(loader)
    scheduler = LR_SCHEDULES[stage.lr_schedule](optimizer, total_steps, lambda: budget.fraction)

    def stage_progress() -> float:
        """How far the stage is: by steps or by its time budget, whichever is further along."""
        return max(scheduler.last_epoch / total_steps, budget.fraction)
    regulariser = BatchRegulariser(stage.regularisation, len(splits.class_names), accelerator.device)
    # The average is what is validated, kept as the best model and written: the weights only feed it.
    ema = weight_average(accelerator.unwrap_model(module), stage.regularisation.ema_decay)
    evaluated = accelerator.unwrap_model(module) if ema is None else ema.module

    # Resume: this stage's finished epochs are skipped, its optimizer, schedule and weight average restored.
    done = 0
    if run_state.resume_stage == stage.index:
        checkpoint.restore_checkpoint(accelerator, run_state.checkpoint_dir, scheduler, run_state.generator, stage.lr)
        done = run_state.resume_epochs_done
        saved_average = checkpoint.ema_model_state(run_state.checkpoint_dir) if ema is not None else None
        if saved_average is not None:
            ema.module.load_state_dict(saved_average)
    # Lookahead starts from the weights as they are: at a resume, as the last epoch's end left them (averaged), so
    # it is made after they are restored.
    lookahead = Lookahead(accelerator.unwrap_model(module)) if stage.regularisation.lookahead else None
    first_epoch = len(run_state.history) - done + 1
    last_epoch = first_epoch + stage.epochs - 1

    # Time budget: earlier stages' time counts against the run's.
    if settings.max_train_minutes:
        budget.allowed_seconds = settings.max_train_minutes * 60 - run_state.seconds_before(first_epoch)
        budget.spent_before = sum(entry.seconds for entry in run_state.history[first_epoch - 1:])
        if budget.allowed_seconds <= 0:
            if accelerator.is_main_process:
                tqdm.write(f"{stage.name}: skipped, the {settings.max_train_minutes:g}-minute budget is spent")
            run_state.stopped_by = StoppedBy.TIME_BUDGET
            return

    train_labels = splits.train.labels.to(accelerator.device)
    for epoch in range(first_epoch + done, last_epoch + 1):
        # Train one epoch (or until the budget ends it).
        loader.set_epoch(epoch)
        model_module.train_mode(module, settings.keep_batchnorm_statistics)
        started = budget.start_epoch()
        loss_sum = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device)
        seen = torch.zeros((), device=accelerator.device)
        # Counted within the stage, as its --epochs / --probe-epochs were given; the history numbers the run's epochs.
        progress = tqdm(loader, desc=f"{stage.name} epoch {epoch - first_epoch + 1}/{stage.epochs}",
                        disable=not accelerator.is_local_main_process)
        for step, indices in enumerate(progress, start=1):
            indices = indices.to(accelerator.device)
            labels = train_labels[indices]
            size = None if stage.start_size is None else progressive_size(
                stage.start_size, stage.image_size, stage_progress())
            inputs, targets = regulariser(stage.train_inputs(indices, True, size), labels)
            with accelerator.autocast():
                logits = module(inputs)
                loss = regulariser.loss(logits.float(), targets)
            check_finite(loss, stage, epoch, step, len(loader), run_state)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(accelerator.unwrap_model(module), step=scheduler.last_epoch)
            if lookahead is not None and scheduler.last_epoch % Lookahead.EVERY == 0:
                lookahead.step(accelerator.unwrap_model(module), stage_progress())
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            budget.update(accelerator)
            if budget.exhausted:  # this epoch ends here, validated and saved like any other
                break
        if lookahead is not None:  # what is validated, kept and checkpointed is the average
            lookahead.step(accelerator.unwrap_model(module), stage_progress())
        totals = accelerator.reduce(torch.stack([loss_sum, correct, seen]), reduction="sum")
        train_seconds = budget.clock() - started

        # Validate and record it.
        val_logits = predict(accelerator, evaluated, stage.val_inputs, len(splits.val), stage.eval_batch_size)
        val = classification_metrics(val_logits, splits.val.labels, splits.class_names)
        entry = EpochRecord(epoch=epoch, stage=stage.name, train_loss=float(totals[0] / totals[2]),
                            train_accuracy=float(totals[1] / totals[2]), val_loss=val["loss"],
                            val_accuracy=val["accuracy"], seconds=budget.clock() - started,
                            train_images_per_second=float(totals[2]) / train_seconds, lr=stage.lr,
                            train_images=int(totals[2]))
        record_epoch(accelerator, run_state, entry, model if ema is None else ema.module,
                     f"epoch {epoch} ({stage.name} {epoch - first_epoch + 1}/{stage.epochs})")
        save_epoch_checkpoint(accelerator, run_state, stage, epoch - first_epoch + 1, scheduler,
                              None if ema is None else ema.module)

        # Stop early: the time budget, or patience.
        budget.spent_before += entry.seconds
        budget.start_epoch()
        budget.update(accelerator)
        if budget.exhausted:
            if accelerator.is_main_process:
                tqdm.write(f"{stage.name}: the {settings.max_train_minutes:g}-minute budget is spent after epoch {epoch}")
            run_state.stopped_by = StoppedBy.TIME_BUDGET
            break
        if patience_ran_out(run_state, settings.patience, epoch, first_epoch) and epoch < last_epoch:
            if accelerator.is_main_process:
                tqdm.write(f"{stage.name}: no better validation accuracy for {settings.patience} epochs (best: epoch "
                           f"{run_state.best.epoch}); stopping after epoch {epoch}")
            run_state.stopped_by = StoppedBy.PATIENCE
            break
    accelerator.free_memory()


def save_epoch_checkpoint(accelerator: Accelerator, run_state: RunState, stage: Stage, stage_epochs_done: int,
                          scheduler: torch.optim.lr_scheduler.LRScheduler, average: nn.Module | None) -> None:
    progress = {"settings": run_state.published_settings, "stage": stage.name, "stage_index": stage.index,
                "stage_epochs_done": stage_epochs_done, "history": [entry.to_json() for entry in run_state.history],
                "best": {"accuracy": run_state.best.accuracy, "epoch": run_state.best.epoch}}
    checkpoint.save_checkpoint(accelerator, run_state.checkpoint_dir, progress, run_state.best.state, scheduler,
                               run_state.generator, None if average is None else model_module.state_copy(average))


def fit_head_stage(accelerator: Accelerator, stage: Stage, model: nn.Module, splits: DataSplits,
                   run_state: RunState) -> None:
    """Fit stage.module, a linear head, on cached features by multinomial logistic regression at each L2 strength of
    L2_GRID; each strength is one entry of the history (record_epoch), and the best validation accuracy is kept as
    training's best epoch. Every process fits the same full batch, so all end with the same head."""
    run_state.stopped_by = StoppedBy.EPOCHS
    head = stage.module
    everything = torch.arange(len(splits.train), device=accelerator.device)
    features = stage.train_inputs(everything, False).float()
    labels = splits.train.labels.to(features.device)
    weight, bias = head.weight.detach().float(), head.bias.detach().float()
    for l2 in L2_GRID:
        started = time.perf_counter()
        weight, bias = model_module.fit_logistic_head(features, labels, weight, bias, l2, LBFGS_STEPS)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
            train = classification_metrics((features @ weight.T + bias).cpu(), splits.train.labels, splits.class_names)
        train_seconds = time.perf_counter() - started
        val_logits = predict(accelerator, head, stage.val_inputs, len(splits.val), stage.eval_batch_size)
        val = classification_metrics(val_logits, splits.val.labels, splits.class_names)
        entry = EpochRecord(epoch=len(run_state.history) + 1, stage=stage.name, train_loss=train["loss"],
                            train_accuracy=train["accuracy"], val_loss=val["loss"], val_accuracy=val["accuracy"],
                            seconds=time.perf_counter() - started, train_images_per_second=len(labels) / train_seconds,
                            lr=None, train_images=len(labels), l2=l2)
        record_epoch(accelerator, run_state, entry, model, f"{stage.name}, L-BFGS at L2 {l2:g}")


# The estimate's training steps. In a CPU run the first steps take twice as long as the rest of training (lite0 at
# 112 px: five at 0.7 s, then 0.37 s, as the run's epochs go), so six steps warm up; then the median of three, as
# one step on a shared CPU can stall.
ESTIMATE_WARMUP_STEPS = 6
ESTIMATE_STEPS = 3


def estimate_stage_seconds(accelerator: Accelerator, stage: Stage, splits: DataSplits, settings: LoopSettings,
                           images: tuple[int, int] | None = None,
                           clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds the stage's epochs would take here (before any time budget), from the median of ESTIMATE_STEPS timed
    training steps (after ESTIMATE_WARMUP_STEPS) and one timed validation batch on a copy of its module, at the run's
    batch sizes; the random number generators are left as they were. The stage's inputs may be a sample of the run's
    splits (splits: that sample), images then the (train, validation) images of the run itself. clock: the timer
    (a test's own)."""
    count = min(settings.batch_size, len(splits.train))  # the real batch: smaller ones run faster per image
    eval_count = min(stage.eval_batch_size, len(splits.val))
    indices, eval_indices = (torch.arange(number, device=accelerator.device) for number in (count, eval_count))
    probe = copy.deepcopy(stage.module)
    trainable = [parameter for parameter in probe.parameters() if parameter.requires_grad]
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model_module.train_mode(probe, settings.keep_batchnorm_statistics)
        timings = []
        for _ in range(ESTIMATE_WARMUP_STEPS + ESTIMATE_STEPS):
            started = clock()
            with accelerator.autocast():
                loss = probe(stage.train_inputs(indices, False)).float().logsumexp(dim=1).mean()
            if trainable:
                loss.backward()
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(clock() - started)
        probe.eval()
        started = clock()
        with torch.inference_mode(), accelerator.autocast():
            probe(stage.val_inputs(eval_indices, False))
        eval_per_image = (clock() - started) / eval_count
    step = statistics.median(timings[ESTIMATE_WARMUP_STEPS:])
    train_images, val_images = images or (len(splits.train), len(splits.val))
    steps = math.ceil(max(train_images, settings.min_epoch_images) / (settings.batch_size * accelerator.num_processes))
    return stage.epochs * (steps * step + val_images / accelerator.num_processes * eval_per_image)
