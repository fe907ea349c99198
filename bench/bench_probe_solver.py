"""The linear probe's head on cached features: full-batch L-BFGS over an L2 grid (--probe-solver lbfgs) against
AdamW epochs (--probe-solver adamw, the baseline), all of CIFAR-10, the same command otherwise.

    python bench/bench_probe_solver.py [--image-size 128] [--repeats 2]

Each row is `python train.py --dataset ../shared/data/cifar10 --model tf_efficientnet_lite0 --pretrained-file
../shared/weights/tf_efficientnet_lite0.in1k.safetensors --strategy linear-probe --image-size 128 --val-size 2000
--flip-tta off --epochs 30 --patience 3 --probe-solver S`, run once to fill the caches (not timed) and then
--repeats times; wall is the whole command, median over the repeats, and training the head's fit alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SOLVERS = ("adamw", "lbfgs")  # the first is the baseline


def run(args: argparse.Namespace, solver: str, output: Path) -> tuple[float, dict]:
    command = [sys.executable, "train.py", "--dataset", args.dataset, "--model", "tf_efficientnet_lite0",
               "--pretrained-file", args.pretrained_file, "--strategy", "linear-probe", "--image-size",
               str(args.image_size), "--val-size", "2000", "--flip-tta", "off", "--epochs", "30", "--patience", "3",
               "--probe-solver", solver, "--output-dir", str(output), "--overwrite"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads((output / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-probe-solver-"))
    run(args, SOLVERS[0], workdir / "warm-up")  # decoded images and features into the cache
    results = {}
    for repeat in range(args.repeats):
        for solver in SOLVERS:  # interleaved, so drift in the machine's speed hits both alike
            wall, metrics = run(args, solver, workdir / solver)
            results.setdefault(solver, []).append((wall, metrics))
            print(f"{solver} #{repeat + 1}: {wall:.1f} s, {metrics['test']['accuracy']:.2%}", file=sys.stderr)
    print(f"lite0 at {args.image_size} px, linear probe on cached features, 43,000 training images; "
          f"median of {args.repeats} cached reruns\n")
    print("| --probe-solver | test accuracy | val accuracy | epochs or L2 fits | head fit s | wall s | wall vs adamw |")
    print("|---|---|---|---|---|---|---|")
    baseline_wall = statistics.median(wall for wall, _ in results[SOLVERS[0]])
    for solver in SOLVERS:
        wall = statistics.median(wall for wall, _ in results[solver])
        metrics = results[solver][-1][1]
        best = max(metrics["history"], key=lambda entry: entry["val_accuracy"])
        chosen = f", L2 {best['l2']:g} kept" if "l2" in best else ""
        fit = statistics.median(m["timing"]["training_seconds"] for _, m in results[solver])
        print(f"| {solver} | {metrics['test']['accuracy']:.2%} | {best['val_accuracy']:.2%} | "
              f"{len(metrics['history'])}{chosen} | {fit:.1f} | {wall:.1f} | {wall / baseline_wall:.2f}x |")


if __name__ == "__main__":
    main()
