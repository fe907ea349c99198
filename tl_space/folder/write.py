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
from tl_space.folder.files import (CONFUSION_PLOT, CURVES_PLOT, LOGS_DIR, MISCLASSIFIED_DIR, MISCLASSIFIED_FILE,
                                   RELIABILITY_PLOT, REPORT_PLOTS)
from tl_space.folder.metrics import MetricsRecord, StoppedBy, write_metrics
from tl_space.folder.plots import plot_confusion_matrix, plot_curves, plot_reliability
from tl_space.strategies import LINEAR_PROBE
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


# Each of REPORT_PLOTS (named in folder/files.py), drawn from metrics.json's content.
REPORT_PLOT_WRITERS = {
    CURVES_PLOT: lambda metrics, path: plot_curves(metrics["history"], path),
    CONFUSION_PLOT: lambda metrics, path: plot_confusion_matrix(
        metrics["test"]["confusion_matrix"], metrics["data"]["class_names"], path),
    RELIABILITY_PLOT: lambda metrics, path: plot_reliability(metrics["calibration"], path),
}
assert set(REPORT_PLOT_WRITERS) == set(REPORT_PLOTS)


def write_model_folder(output_dir: Path, model: nn.Module, class_names: list[str], preprocessing: Preprocessing,
                       metrics: MetricsRecord, mistakes: list[dict], test_images: torch.Tensor) -> Path:
    """Write the whole folder beside output_dir, then swap it in, so no reader sees a half-written model."""
    output_dir = output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_staging(output_dir)
    staging = atomic.staging_path(output_dir)
    staging.mkdir()
    try:
        save_model(staging, model, class_names, preprocessing)
        write_metrics(staging, metrics)
        written = metrics.to_json()
        records = write_misclassified(staging, mistakes, test_images)
        for file, write_plot in REPORT_PLOT_WRITERS.items():
            write_plot(written, staging / file)
        write_model_card(staging, written, records)
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


def write_head_folder(folder: Path, network: nn.Module, class_names: list[str], preprocessing: Preprocessing, *,
                      base_model: str | None, solver: str, l2: float, evaluated_on: str, test: dict,
                      calibration: dict, images_per_class: dict[str, int], seconds: float, mistakes: list[dict],
                      shown_images: torch.Tensor) -> Path:
    """A complete model folder for a linear head fitted on a frozen backbone's features outside train.py (the app's
    Teach tab): its metrics say what was done (solver, L2, where it was scored), nothing a run of train.py would."""
    architecture = network.pretrained_cfg.get("architecture", type(network).__name__)
    count = sum(images_per_class.values())
    head = network.get_classifier()
    settings = {"strategy": LINEAR_PROBE, "probe_solver": solver, "dataset": "images taught in the tl-space app",
                "model": architecture, "output_dir": folder.name, "train_split": "taught images",
                "test_split": evaluated_on, "batch_size": f"all {count} (full batch)", "weight_decay": l2,
                "batchnorm": "pretrained"}
    metrics = MetricsRecord(
        history=[], stopped_by=StoppedBy.NO_TRAINING, test=test, settings=settings,
        model={"architecture": architecture, "base_model": base_model, "pretrained_file": None},
        calibration=calibration, flip_tta=None, preprocessing=preprocessing.to_dict(),
        data={"train_images": count, "val_images": count, "test_images": count,
              "train_images_per_class": images_per_class, "class_names": class_names, "image_column": "image",
              "label_column": "label", "validation_source": evaluated_on, "test_source": evaluated_on,
              "carved_test_fraction": None},
        trainable_parameters=sum(parameter.numel() for parameter in head.parameters()),
        total_parameters=sum(parameter.numel() for parameter in network.parameters()),
        timing={"total_seconds": seconds, "data_seconds": seconds, "training_seconds": 0.0,
                "evaluation_seconds": 0.0, "train_images_per_second": 0.0},
        hardware={"device": "cpu", "processes": 1, "mixed_precision": "no", "gpu": None},
    )
    return write_model_folder(folder, network, class_names, preprocessing, metrics, mistakes, shown_images)
