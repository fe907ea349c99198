"""Test-time augmentation: trained model folders' test accuracy with no augmentation (the baseline, per folder), with
flips (what training reports and the app uses), and with airbench's flips and shifts.

    python bench/bench_tta.py --models studies/cifar10-budgets-epyc/runs/scratch-all-60min-seed42 model

airbench's flip-and-translate TTA: the mean of the logits of the image and its mirror image, weighted 1/2, and of
both copies shifted by one source pixel diagonally each way (reflection-padded), 1/4 each: 6 forward passes an image
against flips' 2. Every row uses the folder's own weights and normalisation on the whole CIFAR-10 test split from
../shared, shifted at its stored size (32 px) and then resized on the device as training and the app do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tl_space.app.served import load_served_model  # noqa: E402
from tl_space.data import LabelledImages, decode_images, open_dataset  # noqa: E402
from tl_space.training.evaluation import final_logits  # noqa: E402

SHARED = ROOT.parent / "shared"


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """uint8 images moved by (dy, dx) pixels, the uncovered edge filled by reflection (airbench's pad-and-crop)."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images.float(), (pad,) * 4, mode="reflect").to(images.dtype)
    height, width = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[str(ROOT / "model")], help="model folders")
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--images", type=int, default=None, help="the first N test images (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    accelerator = Accelerator(cpu=True)
    dataset_dict, image_column, label_column, _ = open_dataset(args.dataset)
    test = dataset_dict["test"]
    if args.images:
        test = test.select(range(args.images))

    print(f"Test accuracy by test-time augmentation, {len(test)} test images, {torch.get_num_threads()} threads\n")
    print("| model folder | none | flips (2 passes) | vs none | flips and 1-px shifts (6 passes) | vs flips | "
          "seconds, none | 6 passes / none |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.models:
        loaded = load_served_model(folder)
        model, preprocessing = loaded.model.eval(), loaded.preprocessing
        decoded = decode_images(test, image_column, label_column, preprocessing.image_size)
        images, labels = decoded.images, decoded.labels

        def logits_of(view: torch.Tensor) -> torch.Tensor:  # as training evaluates: the whole model, unaugmented
            return final_logits(accelerator, model, LabelledImages(view, labels), preprocessing, False, 64, "")

        step = max(1, round(images.shape[-1] / 32))  # one pixel of a 32-px image
        started = time.perf_counter()
        plain = logits_of(images)
        plain_seconds = time.perf_counter() - started
        flips = (plain + logits_of(images.flip(-1))) / 2
        moved = [shifted(images, sign * step, sign * step) for sign in (-1, 1)]
        translated = sum((logits_of(view) + logits_of(view.flip(-1))) / 4 for view in moved)
        both = flips / 2 + translated / 2
        all_seconds = time.perf_counter() - started
        accuracy = {name: (logits.argmax(dim=1) == labels).double().mean().item()
                    for name, logits in (("none", plain), ("flips", flips), ("both", both))}
        print(f"| {Path(folder).name} | {accuracy['none']:.2%} | {accuracy['flips']:.2%} | "
              f"{100 * (accuracy['flips'] - accuracy['none']):+.2f} points | {accuracy['both']:.2%} | "
              f"{100 * (accuracy['both'] - accuracy['flips']):+.2f} points | {plain_seconds:.1f} | "
              f"{all_seconds / plain_seconds:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
