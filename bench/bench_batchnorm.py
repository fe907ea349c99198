"""Fine-tuning lite0 with its BatchNorm statistics kept (`--batchnorm pretrained`) against updated by each batch.

    python bench/bench_batchnorm.py [--image-size 96] [--train-images 12000] [--epochs 3] [--strategies lp-ft,finetune]

For each strategy, two `python train.py` runs on ../shared CIFAR-10 with the lite0 ImageNet weights that differ only
in --batchnorm: `batch` (PyTorch's train mode, the baseline) and `pretrained` (the default). Both see the same
images in the same order; the table gives validation accuracy after each fine-tuning epoch and the test accuracy.
Accuracy, not speed: the runs are counted in steps, so a noisy machine changes only their wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODES = ("batch", "pretrained")


def train(args: argparse.Namespace, strategy: str, batchnorm: str, output: Path) -> dict:
    command = [sys.executable, "train.py", "--dataset", args.dataset, "--model", "tf_efficientnet_lite0",
               "--pretrained-file", args.pretrained_file, "--strategy", strategy, "--batchnorm", batchnorm,
               "--image-size", str(args.image_size), "--batch-size", "32", "--epochs", str(args.epochs),
               "--max-train-samples", str(args.train_images), "--max-eval-samples", str(args.eval_images),
               "--flip-tta", "off", "--output-dir", str(output), "--overwrite"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((output / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-images", type=int, default=12_000)
    parser.add_argument("--eval-images", type=int, default=2_000, help="validation and test images each")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    parser.add_argument("--strategies", default="lp-ft,finetune")
    parser.add_argument("--workdir", type=Path, help="where the runs go (kept); a new temporary folder if unset")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-bn-"))
    rows = []
    for strategy in args.strategies.split(","):
        for batchnorm in MODES:
            metrics = train(args, strategy, batchnorm, (workdir / f"{strategy}-{batchnorm}").resolve())
            tuned = [entry["val_accuracy"] for entry in metrics["history"] if entry["stage"] != "linear-probe"]
            rows.append((strategy, batchnorm, tuned, metrics["test"]["accuracy"]))
            print(f"{strategy} --batchnorm {batchnorm}: test {metrics['test']['accuracy']:.2%}", flush=True)
    print(f"\nlite0, {args.image_size} px, {args.train_images} training images, batch 32, {args.epochs} fine-tuning "
          f"epochs; {args.eval_images} validation and test images\n")
    print("| strategy | --batchnorm | val accuracy per fine-tuning epoch | test accuracy | over batch |")
    print("|---|---|---|---|---|")
    baseline = {}
    for strategy, batchnorm, tuned, test in rows:
        baseline.setdefault(strategy, test)
        print(f"| {strategy} | {batchnorm} | {' / '.join(f'{value:.2%}' for value in tuned)} | {test:.2%} | "
              f"{100 * (test - baseline[strategy]):+.1f} points |")


if __name__ == "__main__":
    main()
