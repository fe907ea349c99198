"""Runs side by side: the same upload through two or three model folders, and the test images they disagree on.

    python -m tl_space.app.compare bundle RUN_DIR RUN_DIR [RUN_DIR] --dataset ../shared/data/cifar10 --output compare

copies the runs (weights in fp16 where that changes their accuracy on the sample by less than 0.1 point) and a
stratified sample of the test split into a folder the app's Compare tab serves (COMPARE_ID, default compare/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tl_space import data as data_module
from tl_space.errors import UserError, exit_code
from tl_space.folder.files import CHECKPOINT_DIR, CONFIG_FILE, WEIGHTS_FILE
from tl_space.folder.read import LoadedModel, load_model_folder
from tl_space.transforms import to_model_input

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

    runs: list[LoadedModel]
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
    runs = [load_model_folder(item) for item in sources]
    if any(run.label_names != runs[0].label_names for run in runs):
        raise UserError("the compared runs do not share their classes")
    sample = None
    if folder is not None and (folder / SAMPLE_FILE).is_file():
        sample = read_sample(folder / SAMPLE_FILE, runs[0].label_names)
    return Comparison(runs, [run.name for run in runs], sample)


@torch.inference_mode()
def predict_sample(run: LoadedModel, sample: TestSample) -> torch.Tensor:
    """The run's predicted class of every sample image, with its own preprocessing, under its lock."""
    predicted = []
    with run.lock:
        for start in range(0, len(sample.labels), BATCH):
            inputs = to_model_input(sample.images[start:start + BATCH], run.preprocessing)
            predicted.append(run.model(inputs).argmax(dim=1))
    return torch.cat(predicted)


def sample_accuracy(run: LoadedModel, sample: TestSample) -> float:
    return float((predict_sample(run, sample) == sample.labels).double().mean())


def predictions(comparison: Comparison, index: int) -> torch.Tensor:
    if index not in comparison.predicted:
        comparison.predicted[index] = predict_sample(comparison.runs[index], comparison.sample)
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


def _fp16_copy(run_dir: Path, target: Path, sample: TestSample) -> str:
    """Copy a run folder to target, its weights in fp16 where that changes the sample accuracy by less than
    FP16_MAX_ACCURACY_CHANGE; returns what was kept."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.*",
                                                                  f".{CHECKPOINT_DIR}.*"))  # resume state: not served
    before = sample_accuracy(load_model_folder(str(target)), sample)
    weights = load_file(str(target / WEIGHTS_FILE))
    halved = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(halved, str(target / WEIGHTS_FILE))
    after = sample_accuracy(load_model_folder(str(target)), sample)
    if abs(after - before) >= FP16_MAX_ACCURACY_CHANGE:
        save_file(weights, str(target / WEIGHTS_FILE))
        return f"fp32 (fp16 changed the sample accuracy {before:.2%} → {after:.2%})"
    return f"fp16 (sample accuracy {before:.2%} → {after:.2%})"


def write_sample(dataset: str, count: int, path: Path, seed: int = 0) -> TestSample:
    """A stratified, seeded sample of the dataset's test split (its images as stored, uint8), written to path."""
    dataset_dict, image_column, label_column, names = data_module.open_dataset(dataset)
    test = data_module.decode_images(dataset_dict["test"], image_column, label_column, size=32)
    counts = data_module.stratified_counts(test.labels, len(names), min(count, MAX_SAMPLE))
    picked = data_module.stratified_pick(test.labels, counts, torch.Generator().manual_seed(seed))[0]
    sample = TestSample(test.images[picked].contiguous(), test.labels[picked].contiguous(), names)
    save_file({"images": sample.images, "labels": sample.labels}, str(path), metadata={"class_names": json.dumps(names)})
    return sample


def bundle(run_dirs: list[Path], dataset: str, output: Path, count: int, seed: int = 0) -> None:
    """Write a compare folder: the runs (fp16 where harmless) and `count` stratified test images of dataset."""
    if output.exists():
        raise UserError(f"--output {str(output)!r} exists; remove it or choose another folder")
    class_names = load_model_folder(str(run_dirs[0])).label_names
    output.mkdir(parents=True)
    sample = write_sample(dataset, count, output / SAMPLE_FILE, seed)
    if sample.class_names != class_names:
        shutil.rmtree(output)
        raise UserError(f"--dataset {dataset!r} has other classes than the runs")
    for run_dir in run_dirs:
        print(f"{run_dir.name}: {_fp16_copy(run_dir, output / run_dir.name, sample)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.app.compare", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bundle_parser = commands.add_parser("bundle", help="write a compare folder from run folders and a dataset")
    bundle_parser.add_argument("runs", nargs="+", type=Path, help=f"2 to {MAX_COMPARED} model folders")
    bundle_parser.add_argument("--dataset", required=True, help="the runs' dataset (Hub id or local folder)")
    bundle_parser.add_argument("--output", type=Path, default=Path("compare"))
    bundle_parser.add_argument("--count", type=int, default=500, help=f"test images in the sample (at most {MAX_SAMPLE})")
    sample_parser = commands.add_parser("sample", help="write a stratified test sample (the Teach tab's CIFAR-10 images)")
    sample_parser.add_argument("--dataset", required=True)
    sample_parser.add_argument("--output", type=Path, default=Path("examples") / SAMPLE_FILE)
    sample_parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "sample":
        return exit_code(lambda: write_sample(args.dataset, args.count, args.output))
    if not 2 <= len(args.runs) <= MAX_COMPARED:
        parser.error(f"give 2 to {MAX_COMPARED} run folders")
    return exit_code(lambda: bundle(args.runs, args.dataset, args.output, args.count))


if __name__ == "__main__":
    sys.exit(main())
