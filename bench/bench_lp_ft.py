"""lp-ft on ../shared CIFAR-10 with the lite0 ImageNet weights under a time budget: the time-to-accuracy curve.

    python bench/bench_lp_ft.py [--image-size 96] [--minutes 52] [--batch-size 32] [--workdir DIR] [--plot PNG]
    python bench/bench_lp_ft.py --metrics runs/lite0-lp-ft-96/metrics.json   # the table of a run made before

Runs `train.py --strategy lp-ft` (a linear probe on cached features, then all of lite0 fine-tuned, the learning
rate following the time budget) and prints validation accuracy against wall-clock minutes for every epoch, and
with --plot draws it. The baseline is the run's own first stage: the frozen backbone's best linear probe,
measured in the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def from_root(path: str | Path) -> str:
    """path relative to the checkout, where the run starts: the model folder then records `../shared/...`, as the
    README's command does, not this machine's absolute paths."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def run_lp_ft(args: argparse.Namespace, output: Path) -> float:
    command = [sys.executable, "train.py", "--dataset", from_root(args.dataset), "--dataset-id", "uoft-cs/cifar10",
               "--model", "tf_efficientnet_lite0",
               "--pretrained-file", from_root(args.pretrained_file),
               "--strategy", "lp-ft", "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--max-train-minutes", str(args.minutes),
               "--output-dir", from_root(output), "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - started


def training_minutes(history: list[dict]) -> list[float]:
    """Minutes of training (validation included) when each epoch ended."""
    elapsed, minutes = 0.0, []
    for entry in history:
        elapsed += entry["seconds"]
        minutes.append(elapsed / 60)
    return minutes


def plot_curve(metrics: dict, target: float, path: Path) -> None:
    """Validation accuracy against training minutes, one colour per stage, with the target as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    points = {}
    for entry, minutes in zip(metrics["history"], training_minutes(metrics["history"])):
        points.setdefault(entry["stage"], []).append((minutes, 100 * entry["val_accuracy"]))
    for stage, stage_points in points.items():
        axes.plot(*zip(*stage_points), marker="o", label=stage)
    axes.axhline(100 * target, color="grey", linestyle="--", label=f"target {target:.0%}")
    axes.axhline(100 * metrics["test"]["accuracy"], color="black", linestyle=":",
                 label=f"test, best epoch: {metrics['test']['accuracy']:.2%}")
    settings = metrics["settings"]
    axes.set(xlabel="training minutes", ylabel="validation accuracy (%)",
             title=f"lp-ft {settings['model']}, {settings['image_size']} px, {metrics['hardware']['device']}")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_curve(metrics: dict, target: float, wall: float | None) -> None:
    history = metrics["history"]
    probe_best = max(entry["val_accuracy"] for entry in history if entry["stage"] == "linear-probe")
    settings, timing = metrics["settings"], metrics["timing"]
    print(f"\nlp-ft, lite0, {settings['image_size']} px, batch {settings['batch_size']}, "
          f"budget {settings['max_train_minutes']} min; {metrics['hardware']['device']}\n")
    print("| epoch | stage | training minutes | val accuracy | over the probe | train images/s |")
    print("|---|---|---|---|---|---|")
    reached = None
    for entry, minutes in zip(history, training_minutes(history)):
        if reached is None and entry["val_accuracy"] >= target:
            reached = minutes
        print(f"| {entry['epoch']} | {entry['stage']} | {minutes:.1f} | {entry['val_accuracy']:.2%} | "
              f"{100 * (entry['val_accuracy'] - probe_best):+.1f} points | {entry['train_images_per_second']:.0f} |")
    tta = metrics.get("flip_tta") or {}
    print(f"\ntest accuracy {metrics['test']['accuracy']:.2%} (best epoch {metrics['test']['best_epoch']})"
          + (f", {tta['test_accuracy']:.2%} with flip TTA" if tta else "")
          + f"; run {timing['total_seconds'] / 60:.1f} min" + ("" if wall is None else f", command {wall / 60:.1f} min wall")
          + (f" (decoding and features {timing['data_seconds'] / 60:.1f} min)" if "data_seconds" in timing else "")
          + f"; validation accuracy {target:.0%} " + (f"after {reached:.1f} training min" if reached else "not reached"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--minutes", type=float, default=52, help="--max-train-minutes of the run")
    parser.add_argument("--epochs", type=int, default=10, help="the most fine-tuning epochs the budget may run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--target", type=float, default=0.92, help="report when validation accuracy first reaches this")
    parser.add_argument("--workdir", type=Path, help="where the run goes (kept); a new temporary folder if unset")
    parser.add_argument("--metrics", type=Path, help="only print the table of this finished run's metrics.json")
    parser.add_argument("--plot", type=Path, help="also draw the curve into this PNG file")
    args = parser.parse_args()
    wall = None
    if args.metrics:
        metrics = json.loads(args.metrics.read_text())
    else:
        output = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-lp-ft-"))) / f"lp-ft-{args.image_size}"
        wall = run_lp_ft(args, output)
        metrics = json.loads((output / "metrics.json").read_text())
    print_curve(metrics, args.target, wall)
    if args.plot:
        plot_curve(metrics, args.target, args.plot)


if __name__ == "__main__":
    main()
