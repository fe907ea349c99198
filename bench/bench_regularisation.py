"""Regularisation and cheaper steps for fine-tuning, each against the CPU recipe without it, in one command.

    python bench/bench_regularisation.py [--train-images 5000] [--epochs 8] [--workdir /tmp/bench-regularisation]
    python bench/bench_regularisation.py --minutes 4 --variants baseline,"frozen depthwise","progressive resizing"

Every variant is lite0 lp-ft at 96 px, batch 32, from the lite0 ImageNet weights in ../shared,
on the same stratified subset of CIFAR-10's training images, with the head first fitted by L-BFGS (seconds, the
same for every variant) and then every layer fine-tuned for --epochs epochs; only the one option in the
"options" column differs from the baseline row. Test accuracy is on all 10,000 test images. A subset and a fixed
number of epochs keep seven runs within an hour of a 2-core CPU and reach the regime the regularisers are for:
training accuracy far above validation. With --minutes every variant instead fine-tunes for that many minutes
(the learning rate following the time spent), so faster steps buy more epochs. Finished variants are read back
from --workdir, so a killed bench resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
VARIANTS = {  # name -> options added to the baseline; timm's recipes' values where they have one
    "baseline": [],
    "label smoothing": ["--label-smoothing", "0.1"],
    "mixup + CutMix": ["--mixup", "0.8", "--cutmix", "1.0"],
    "random erasing": ["--random-erasing", "0.25"],
    "EMA of weights": ["--ema-decay", "0.998"],
    "frozen depthwise": ["--freeze-depthwise"],
    "progressive resizing": ["--progressive-resize", "64"],
}


def run_variant(args: argparse.Namespace, options: list[str], output: Path) -> dict:
    metrics_path = output / "metrics.json"
    if not metrics_path.is_file():
        command = [sys.executable, "train.py", "--dataset", os.path.relpath(args.dataset, ROOT),
                   "--dataset-id", "uoft-cs/cifar10", "--model", "tf_efficientnet_lite0",
                   "--pretrained-file", os.path.relpath(args.pretrained_file, ROOT), "--strategy", "lp-ft",
                   "--probe-solver", "lbfgs", "--image-size", "96", "--batch-size", "32", *budget(args),
                   "--max-train-samples", str(args.train_images), "--val-size", "2000", "--flip-tta", "off",
                   "--output-dir", str(output), "--overwrite", "--resume", *options]
        subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(metrics_path.read_text())


def budget(args: argparse.Namespace) -> list[str]:
    """Fixed epochs, or a time budget for the fine-tuning (the probe's seconds are spent before it)."""
    if args.minutes is None:
        return ["--epochs", str(args.epochs)]
    return ["--epochs", "100", "--max-train-minutes", str(args.minutes)]


def summary(metrics: dict) -> dict:
    images = [entry for entry in metrics["history"] if entry["stage"] != "linear-probe"]
    last = images[-1]
    return {"test": metrics["test"]["accuracy"], "val": max(entry["val_accuracy"] for entry in images),
            "train": last["train_accuracy"], "speed": statistics.median(e["train_images_per_second"] for e in images),
            "minutes": sum(entry["seconds"] for entry in images) / 60, "epochs": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=None, help="a time budget instead of --epochs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--workdir", default=None, help="default: /tmp/bench-regularisation[-minutes-M]")
    args = parser.parse_args()
    workdir = Path(args.workdir or "/tmp/bench-regularisation" + (f"-minutes-{args.minutes:g}" if args.minutes else ""))

    rows = {}
    for name in args.variants.split(","):
        output = workdir / name.replace(" ", "-").replace("+", "and")
        rows[name] = summary(run_variant(args, VARIANTS[name], output.resolve()))
    baseline = rows.get("baseline")
    fine_tuning = f"{args.minutes:g} minutes" if args.minutes else f"{args.epochs} epochs"
    print(f"\nlite0 lp-ft at 96 px, {args.train_images} training images, head by L-BFGS then {fine_tuning} of "
          "fine-tuning; test accuracy on 10,000 images\n")
    print("| variant | options | test accuracy | vs baseline | best val | last epoch's train accuracy | "
          "fine-tuning epochs | fine-tuning images/s (median epoch) | vs baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        versus = (f"{100 * (row['test'] - baseline['test']):+.2f} points", f"{row['speed'] / baseline['speed']:.2f}x") \
            if baseline else ("–", "–")
        print(f"| {name} | {' '.join(VARIANTS[name]) or '–'} | {row['test']:.2%} | {versus[0]} | {row['val']:.2%} | "
              f"{row['train']:.2%} | {row['epochs']} | {row['speed']:.0f} | {versus[1]} |")


if __name__ == "__main__":
    main()
