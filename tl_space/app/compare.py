"""Runs side by side: the same upload through two or three model folders, and the test images they disagree on.

A compare folder (written by `python -m tl_space.app.bundle`) holds the runs and a test sample; reading it needs
nothing of the training code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from tl_space.app.served import ServedModel, load_served_model
from tl_space.errors import UserError
from tl_space.folder.files import CONFIG_FILE

SAMPLE_FILE = "test_sample.safetensors"
MAX_COMPARED = 3
MAX_SAMPLE = 2000
FP16_MAX_ACCURACY_CHANGE = 0.001  # a tenth of a point
BATCH = 64


@dataclass
class TestSample:
    """Test images (uint8, N x 3 x H x W) with their labels, shared by every compared run."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index].permute(1, 2, 0).numpy())


@dataclass
class Comparison:
    """The compared runs, their names, the test sample, and each run's predictions on it (made on first use)."""

    runs: list[ServedModel]
    names: list[str]
    sample: TestSample | None
    predicted: dict[int, torch.Tensor] = field(default_factory=dict)


def read_sample(path: Path, class_names: list[str]) -> TestSample:
    """The test sample of a compare folder, checked: uint8 images, labels within the runs' classes, the same names."""
    try:
        with safe_open(str(path), framework="pt") as sample:
            images, labels = sample.get_tensor("images"), sample.get_tensor("labels")
            names = json.loads((sample.metadata() or {}).get("class_names", "null"))
    except Exception as error:  # safetensors, JSON and key errors alike: a file this app cannot use
        raise UserError(f"the compare sample is unreadable ({type(error).__name__})") from error
    if (images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or labels.ndim != 1
            or len(labels) != len(images) or not 0 < len(images) <= MAX_SAMPLE or names != class_names
            or int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
        raise UserError(f"the compare sample is not at most {MAX_SAMPLE} uint8 RGB test images labelled with the "
                        "compared runs' classes")
    return TestSample(images, labels.long(), class_names)


def load_comparison(source: str) -> Comparison:
    """The runs of a compare folder (each a model folder in it) or of a comma-separated list of model folders or Hub
    ids, with the folder's test sample when it has one. The runs must share their classes."""
    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / CONFIG_FILE).is_file():
        sources = sorted(str(path) for path in folder.iterdir() if (path / CONFIG_FILE).is_file())
    else:
        folder, sources = None, [part.strip() for part in source.split(",") if part.strip()]
    if not 2 <= len(sources) <= MAX_COMPARED:
        raise UserError(f"the Compare tab needs 2 to {MAX_COMPARED} model folders; {source!r} gives {len(sources)}")
    runs = [load_served_model(item) for item in sources]
    if any(run.label_names != runs[0].label_names for run in runs):
        raise UserError("the compared runs do not share their classes")
    sample = None
    if folder is not None and (folder / SAMPLE_FILE).is_file():
        sample = read_sample(folder / SAMPLE_FILE, runs[0].label_names)
    return Comparison(runs, [run.name for run in runs], sample)


def sample_accuracy(run: ServedModel, sample: TestSample) -> float:
    return float((run.predicted_classes(sample.images, BATCH) == sample.labels).double().mean())


def predictions(comparison: Comparison, index: int) -> torch.Tensor:
    if index not in comparison.predicted:
        comparison.predicted[index] = comparison.runs[index].predicted_classes(comparison.sample.images, BATCH)
    return comparison.predicted[index]


def disagreements(comparison: Comparison, limit: int = 48) -> list[tuple[Image.Image, str]]:
    """Sample images that at least one run gets right and another wrong, each with every run's prediction."""
    if comparison.sample is None:
        return []
    sample, names = comparison.sample, comparison.sample.class_names
    predicted = torch.stack([predictions(comparison, index) for index in range(len(comparison.runs))])
    right = predicted == sample.labels
    split = torch.nonzero(right.any(dim=0) & ~right.all(dim=0)).flatten()[:limit].tolist()
    items = []
    for index in split:
        verdicts = " | ".join(f"{run_index + 1}: {names[int(predicted[run_index, index])]} "
                              f"{'✓' if right[run_index, index] else '✗'}" for run_index in range(len(comparison.runs)))
        items.append((sample.image(index), f"{names[int(sample.labels[index])]} — {verdicts}"))
    return items


