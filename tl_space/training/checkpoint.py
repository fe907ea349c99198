"""Per-epoch checkpoints a killed run resumes from: accelerate's state plus what our loop adds, swapped in whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from tl_space import atomic

PROGRESS_FILE = "progress.json"  # written last: a folder without it is not a checkpoint
BEST_FILE = "best_model.safetensors"
EMA_FILE = "ema_model.safetensors"  # the weight average of a stage trained with --ema-decay


def _augmentation_file(process_index: int) -> str:
    return f"augmentation_rng_{process_index}.safetensors"


def find_checkpoint(directory: Path) -> Path | None:
    """The last whole checkpoint: `directory`, or the previous one when a kill hit between the two renames."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / PROGRESS_FILE).is_file():
            return candidate
    return None


def read_progress(directory: Path) -> dict | None:
    """The progress record of the last whole checkpoint under directory, None when there is none."""
    found = find_checkpoint(directory)
    return None if found is None else json.loads((found / PROGRESS_FILE).read_text())


def save_checkpoint(accelerator: Accelerator, directory: Path, progress: dict, best_state: dict[str, torch.Tensor],
                    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                    ema_state: dict[str, torch.Tensor] | None = None) -> None:
    """Save the prepared model, optimizer and RNG (accelerate), the scheduler, augmentation RNG, best model, weight
    average and progress into a fresh folder, then swap it for the previous checkpoint: a kill at any point leaves
    one whole."""
    partial = directory.with_name(directory.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # model.safetensors, optimizer.bin, random_states_<process>.pkl
    save_file({"state": generator.get_state()}, str(partial / _augmentation_file(accelerator.process_index)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_file({name: tensor.contiguous() for name, tensor in best_state.items()}, str(partial / BEST_FILE))
        if ema_state is not None:
            save_file({name: tensor.contiguous() for name, tensor in ema_state.items()}, str(partial / EMA_FILE))
        (partial / PROGRESS_FILE).write_text(json.dumps({**progress, "scheduler": scheduler.state_dict()}, indent=2))
        atomic.replace_folder(partial, directory, previous=directory.with_name(directory.name + ".old"))
    accelerator.wait_for_everyone()


def restore_checkpoint(accelerator: Accelerator, directory: Path, scheduler: torch.optim.lr_scheduler.LambdaLR,
                       generator: torch.Generator, peak_lr: float) -> None:
    """Load what save_checkpoint saved into the objects of a stage prepared the same way. The schedule continues
    at peak_lr, which may be lower than the saved one: resuming a run that diverged with a smaller --lr."""
    found = find_checkpoint(directory)
    accelerator.load_state(str(found))  # torch.load with weights_only=True, models from safetensors
    scheduler.load_state_dict(json.loads((found / PROGRESS_FILE).read_text())["scheduler"])
    generator.set_state(load_file(str(found / _augmentation_file(accelerator.process_index)))["state"])
    groups = scheduler.optimizer.param_groups
    scheduler.base_lrs = [peak_lr * group.get("lr_scale", 1.0) for group in groups]  # a group's own share of it
    for group, base_lr, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(scheduler.last_epoch)


def best_model_state(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(directory) / BEST_FILE))


def ema_model_state(directory: Path) -> dict[str, torch.Tensor] | None:
    """The weight average the last checkpoint saved; None when its stage kept none."""
    path = find_checkpoint(directory) / EMA_FILE
    return load_file(str(path)) if path.is_file() else None


def only_unfinished_checkpoints(folder: Path, name: str) -> bool:
    """Whether folder holds nothing but checkpoint folders (name, name.old, name.partial, or a staging copy) with no
    whole checkpoint among them: what a run killed during its first checkpoint leaves."""
    entries = list(folder.iterdir())
    ours = {name, name + ".old", name + ".partial"}
    return bool(entries) and all(entry.is_dir() and (entry.name in ours or (entry.name.startswith(f".{name}")
                                                                           and atomic.STAGING_MARK in entry.name))
                                 for entry in entries) and find_checkpoint(folder / name) is None


def discard_checkpoint(directory: Path) -> None:
    for suffix in ("", ".old", ".partial"):
        shutil.rmtree(directory.with_name(directory.name + suffix), ignore_errors=True)
