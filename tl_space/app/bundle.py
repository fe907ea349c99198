"""Write a compare folder for the app's Compare tab (COMPARE_ID, default compare/), or the Teach tab's test sample.

    python -m tl_space.app.bundle bundle RUN_DIR RUN_DIR [RUN_DIR] --dataset ../shared/data/cifar10 --output compare
    python -m tl_space.app.bundle sample --dataset ../shared/data/cifar10 --output examples/test_sample.safetensors

copies the runs (weights in fp16 where that changes their accuracy on the sample by less than 0.1 point) and a
stratified sample of the test split; offline work, so the server never imports the dataset code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tl_space import data as data_module
from tl_space.app.compare import (FP16_MAX_ACCURACY_CHANGE, MAX_COMPARED, MAX_SAMPLE, SAMPLE_FILE, TestSample,
                                 sample_accuracy)
from tl_space.app.served import load_served_model
from tl_space.errors import UserError, exit_code
from tl_space.folder.files import CHECKPOINT_DIR, WEIGHTS_FILE


def _fp16_copy(run_dir: Path, target: Path, sample: TestSample) -> str:
    """Copy a run folder to target, its weights in fp16 where that changes the sample accuracy by less than
    FP16_MAX_ACCURACY_CHANGE; returns what was kept."""
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.*",
                                                                  f".{CHECKPOINT_DIR}.*"))  # resume state: not served
    before = sample_accuracy(load_served_model(str(target)), sample)
    weights = load_file(str(target / WEIGHTS_FILE))
    halved = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(halved, str(target / WEIGHTS_FILE))
    after = sample_accuracy(load_served_model(str(target)), sample)
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
    class_names = load_served_model(str(run_dirs[0])).label_names
    output.mkdir(parents=True)
    sample = write_sample(dataset, count, output / SAMPLE_FILE, seed)
    if sample.class_names != class_names:
        shutil.rmtree(output)
        raise UserError(f"--dataset {dataset!r} has other classes than the runs")
    for run_dir in run_dirs:
        print(f"{run_dir.name}: {_fp16_copy(run_dir, output / run_dir.name, sample)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.app.bundle", description=__doc__.splitlines()[0])
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
