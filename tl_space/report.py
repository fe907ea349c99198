"""The model folder: weights and config in timm's Hub format, metrics, plots, misclassified images, model card."""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and Spaces
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.models import save_for_hf  # noqa: E402
from torch import nn  # noqa: E402

from tl_space import atomic, checkpoint  # noqa: E402
from tl_space.calibration import plot_reliability  # noqa: E402
from tl_space.card import write_model_card  # noqa: E402
from tl_space.errors import UserError  # noqa: E402
from tl_space.settings import TrainSettings  # noqa: E402
from tl_space.transforms import Preprocessing  # noqa: E402

METRICS_FILE = "metrics.json"
MISCLASSIFIED_FILE = "misclassified.json"
MISCLASSIFIED_DIR = "misclassified"
# Settings that say where or how a run reports, not what it computes.
NON_RUN_SETTINGS = ("dataset_id", "output_dir", "overwrite", "resume", "report_to", "cache_dir", "eval_batch_size", "compile",
                    "flip_tta", "push_to_hub", "hub_model_id", "private")


def check_output_dir(output_dir: Path, settings: TrainSettings) -> Path:
    """The output folder, if it is free, empty, or holds this same run; otherwise a UserError (unless --overwrite).

    A folder whose swap for a newer one was killed half-way is put back first, so its checkpoint can be resumed.
    """
    if atomic.recover_folder(output_dir):
        print(f"{output_dir}: restored the run folder from an interrupted save", file=sys.stderr)
    if not output_dir.exists() or settings.overwrite:
        return output_dir
    if not output_dir.is_dir():
        raise UserError(f"--output-dir {str(output_dir)!r} is a file; give a folder path")
    if not any(output_dir.iterdir()):
        return output_dir
    progress = checkpoint.read_progress(output_dir / checkpoint.CHECKPOINT_DIR)
    if progress is not None:
        if not settings.resume:
            raise UserError(f"--output-dir {str(output_dir)!r} holds an unfinished run (saved after epoch "
                            f"{len(progress['history'])}); add --resume to continue it or --overwrite to start again")
        _check_same_run(output_dir, {**progress["settings"], "lr": settings.lr}, settings,
                        "--resume needs the settings it was started with (only --lr may change)")
        return output_dir
    metrics_path = output_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise UserError(f"--output-dir {str(output_dir)!r} holds files that are not a tl-space run; "
                        "choose another folder or pass --overwrite to replace them")
    _check_same_run(output_dir, json.loads(metrics_path.read_text()).get("settings", {}), settings,
                    "choose another --output-dir or pass --overwrite to replace it")
    return output_dir


def differing_settings(previous: dict, settings: TrainSettings) -> list[str]:
    """Names of the settings that change what a run computes and differ from previous (a saved settings dict)."""
    current = settings.published()
    return sorted(key for key in current if key not in NON_RUN_SETTINGS and previous.get(key) != current[key])


def _check_same_run(output_dir: Path, previous: dict, settings: TrainSettings, advice: str) -> None:
    current = settings.published()
    differing = differing_settings(previous, settings)
    if differing:
        changes = ", ".join(f"{key}: {previous.get(key)!r} -> {current[key]!r}" for key in differing[:5])
        raise UserError(f"--output-dir {str(output_dir)!r} holds a different run ({changes}); {advice}")


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy vs epoch, train and validation, with stage changes marked."""
    epochs = [entry["epoch"] for entry in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [entry[f"train_{metric}"] for entry in history], "o-", label="train")
        axes.plot(epochs, [entry[f"val_{metric}"] for entry in history], "o-", label="validation")
        for previous, entry in zip(history, history[1:]):
            if entry["stage"] != previous["stage"]:
                axes.axvline(entry["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
                axes.text(entry["epoch"] - 0.4, axes.get_ylim()[1], entry["stage"], va="top", fontsize=8, color="grey")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric.capitalize())
        axes.grid(alpha=0.3)
        axes.legend()
    accuracy_axes.set_ylim(0, 1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    """Counts, rows = true class, columns = predicted class, labelled; cells annotated when they fit."""
    counts = np.asarray(matrix)
    size = max(5.0, 0.5 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("Confusion matrix (test)")
    if len(class_names) <= 20:
        threshold = counts.max() / 2
        for row in ticks:
            for column in ticks:
                axes.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=7,
                          color="white" if counts[row, column] > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "class"


def write_misclassified(folder: Path, mistakes: list[dict], test_images: torch.Tensor) -> list[dict]:
    """Save each mistake's test image as PNG; returns the records with their relative file path added."""
    (folder / MISCLASSIFIED_DIR).mkdir()
    records = []
    for rank, mistake in enumerate(mistakes):
        file = (f"{MISCLASSIFIED_DIR}/{rank:03d}_{_file_safe(mistake['true_label'])}"
                f"_as_{_file_safe(mistake['predicted_label'])}.png")
        Image.fromarray(test_images[mistake["index"]].permute(1, 2, 0).numpy()).save(folder / file)
        records.append({"file": file, **mistake})
    (folder / MISCLASSIFIED_FILE).write_text(json.dumps(records, indent=2))
    return records


def save_model(folder: Path, model: nn.Module, class_names: list[str], preprocessing: Preprocessing) -> None:
    """model.safetensors + config.json (timm's save_for_hf), recording the preprocessing the model was trained with."""
    # A contiguous CPU copy: safetensors stores plain layouts, and the trained model may be channels_last on a GPU.
    exported = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    size = preprocessing.image_size
    data_config = {"input_size": (3, size, size), "interpolation": preprocessing.interpolation,
                   "mean": preprocessing.mean, "std": preprocessing.std, "crop_pct": 1.0}
    save_for_hf(exported, folder, model_config={"label_names": list(class_names)}, safe_serialization=True,
                data_config=data_config)


def write_model_folder(output_dir: Path, model: nn.Module, class_names: list[str], preprocessing: Preprocessing,
                       metrics: dict, mistakes: list[dict], test_images: torch.Tensor) -> Path:
    """Write the whole folder beside output_dir, then swap it in, so no reader sees a half-written model."""
    output_dir = output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_staging(output_dir)
    staging = atomic.staging_path(output_dir)
    staging.mkdir()
    try:
        save_model(staging, model, class_names, preprocessing)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        records = write_misclassified(staging, mistakes, test_images)
        plot_curves(metrics["history"], staging / "curves.png")
        plot_confusion_matrix(metrics["test"]["confusion_matrix"], class_names, staging / "confusion_matrix.png")
        plot_reliability(metrics["calibration"], staging / "reliability.png")
        write_model_card(staging, metrics, records)
        return atomic.replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
