"""Linear probe end to end on ../shared CIFAR-10 with the lite0 ImageNet weights: wall time and test accuracy per resolution.

    python bench/bench_linear_probe.py [--sizes 96,160,224] [--epochs 30] [--workdir DIR]

For each size: a cold run (empty cache: it decodes the 60,000 images and the backbone runs over all of them),
then a rerun of the head with other settings (--lr, --seed) that reads the decoded images and the features from
the cache. Wall time is the whole `python train.py ...` command, start-up included; the cold run is the baseline
of its rerun. A second table splits each rerun's wall time by the phases metrics.json times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def train(size: int, epochs: int, cache: Path, output: Path, *extra: str) -> tuple[float, float, dict]:
    command = [sys.executable, str(ROOT / "train.py"), "--dataset", str(SHARED / "data" / "cifar10"),
               "--model", "tf_efficientnet_lite0",
               "--pretrained-file", str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
               "--strategy", "linear-probe", "--image-size", str(size), "--epochs", str(epochs),
               "--cache-dir", str(cache), "--output-dir", str(output), "--overwrite", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    metrics = json.loads((output / "metrics.json").read_text())
    return wall, metrics["test"]["accuracy"], metrics["timing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,160,224")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workdir", type=Path, help="where runs and feature caches go (kept); a new temporary folder if unset")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-lp-"))
    rows = []
    for size in (int(value) for value in args.sizes.split(",")):
        cache = workdir / f"cache-{size}"
        cold = train(size, args.epochs, cache, workdir / f"cold-{size}")
        warm = train(size, args.epochs, cache, workdir / f"rerun-{size}", "--lr", "0.002", "--seed", "7")
        rows.append((size, cold, warm))
        print(f"size {size}: cold {cold[0]:.0f} s, {cold[1]:.2%}; rerun {warm[0]:.0f} s, {warm[1]:.2%}", flush=True)
    print(f"\nlinear probe, lite0, all of CIFAR-10 (45,000 train / 5,000 val / 10,000 test), {args.epochs} head epochs\n")
    print("| size | cold run wall s | cold test accuracy | cached rerun wall s (--lr 0.002 --seed 7) | rerun test accuracy | rerun / cold |")
    print("|---|---|---|---|---|---|")
    for size, (cold_wall, cold_accuracy, _), (warm_wall, warm_accuracy, _) in rows:
        print(f"| {size} | {cold_wall:.0f} | {cold_accuracy:.2%} | {warm_wall:.0f} | {warm_accuracy:.2%} | "
              f"{warm_wall / cold_wall:.3f} |")
    print("\nwhere a run's wall seconds go (start-up: Python, imports and accelerate before train.run starts)\n")
    print("| size | run | wall | start-up | data | training | evaluation | the rest (model folder) |")
    print("|---|---|---|---|---|---|---|---|")
    for size, *runs in rows:
        for name, (wall, _, timing) in zip(("cold", "rerun"), runs):
            rest = timing["total_seconds"] - timing["data_seconds"] - timing["training_seconds"] - timing["evaluation_seconds"]
            print(f"| {size} | {name} | {wall:.1f} | {wall - timing['total_seconds']:.1f} | {timing['data_seconds']:.1f} | "
                  f"{timing['training_seconds']:.1f} | {timing['evaluation_seconds']:.1f} | {rest:.1f} |")


if __name__ == "__main__":
    main()
