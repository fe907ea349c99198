"""Writing a model folder: weights and config in timm's Hub format, metrics, mistakes, plots and card, swapped in whole."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import torch
from PIL import Image
from timm.models import save_for_hf
from torch import nn

from tl_space import atomic
from tl_space.folder.card import write_model_card
from tl_space.folder.files import LOGS_DIR, METRICS_FILE, MISCLASSIFIED_DIR, MISCLASSIFIED_FILE
from tl_space.folder.plots import plot_confusion_matrix, plot_curves, plot_reliability
from tl_space.transforms import Preprocessing


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
        logs = output_dir / LOGS_DIR
        if logs.is_dir():  # moved, not copied: a tracker still writing follows its open files into the new folder
            logs.rename(staging / LOGS_DIR)
        try:
            return atomic.replace_folder(staging, output_dir)
        except BaseException:
            if (staging / LOGS_DIR).is_dir() and not logs.exists():
                (staging / LOGS_DIR).rename(logs)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
