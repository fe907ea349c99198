"""Few-shot heads on lite0's frozen features: class means (no training), and a linear probe started at the class
means, against the baseline, a linear probe started at zero.

    python bench/bench_head_init.py [--shots 1,5,10,50] [--seeds 3] [--image-size 128] [--epochs 30]

Each cell is the mean test accuracy (all 10,000 test images) over --seeds `python train.py` runs on ../shared
CIFAR-10 whose training images are that many per class (seeds 42, 43, ...; the same validation and test images for
all, --split-seed 42). The probes run --epochs epochs with --patience 3 and --min-epoch-images 2048, as the study's
runs do. The frozen backbone's features come from the feature cache after the first run, so a run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
VARIANTS = {"linear probe, zero head (baseline)": ["--strategy", "linear-probe", "--head-init", "zero"],
            "linear probe, class-means head": ["--strategy", "linear-probe", "--head-init", "class-means"],
            "class means, no training": ["--strategy", "class-means"]}


def accuracy(args: argparse.Namespace, variant: list[str], shots: int, seed: int, output: Path) -> float:
    command = [sys.executable, "train.py", "--dataset", args.dataset, "--model", "tf_efficientnet_lite0",
               "--pretrained-file", args.pretrained_file, *variant, "--image-size", str(args.image_size),
               "--shots-per-class", str(shots), "--seed", str(seed), "--split-seed", "42", "--val-size", "2000",
               "--epochs", str(args.epochs), "--patience", "3", "--min-epoch-images", "2048", "--flip-tta", "off",
               "--output-dir", str(output), "--overwrite"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((output / "metrics.json").read_text())["test"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--shots", default="1,5,10,50")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    shots = [int(part) for part in args.shots.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-head-init-"))
    table = {}
    for name, variant in VARIANTS.items():
        for size in shots:
            runs = [accuracy(args, variant, size, 42 + seed, workdir / "run") for seed in range(args.seeds)]
            table[name, size] = (statistics.fmean(runs), statistics.stdev(runs) if len(runs) > 1 else 0.0)
            print(f"{name}, {size} shots: {table[name, size][0]:.2%}", file=sys.stderr)
    print(f"lite0 at {args.image_size} px, frozen; test accuracy, mean ± std over {args.seeds} seeds\n")
    print("| head | " + " | ".join(f"{size} per class" for size in shots) + " |")
    print("|---|" + "---|" * len(shots))
    baseline = next(iter(VARIANTS))
    for name in VARIANTS:
        cells = []
        for size in shots:
            mean, spread = table[name, size]
            gain = "" if name == baseline else f" ({(mean - table[baseline, size][0]) * 100:+.1f})"
            cells.append(f"{mean:.1%} ± {spread:.1%}{gain}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
