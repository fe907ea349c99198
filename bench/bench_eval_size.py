"""Evaluation at a larger size than training: one trained model folder's test accuracy and speed at several input
sizes, against the size it trained at (the baseline, first row).

    python bench/bench_eval_size.py [--model model] [--sizes 96,112,128,160]

A convolutional network trained on random crops sees objects larger than at test time; evaluating at a larger size
can make up for it (Touvron et al. 2019, "FixRes"). Every row uses the folder's own weights and normalisation on the
whole CIFAR-10 test split from ../shared, resized on the device as training and the app do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tl_space.data import decode_images, open_dataset  # noqa: E402
from tl_space.app.served import load_served_model  # noqa: E402
from tl_space.transforms import to_model_input  # noqa: E402

SHARED = ROOT.parent / "shared"


@torch.inference_mode()
def accuracy_at(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, preprocessing) -> tuple[float, float]:
    """Test accuracy and images per second at preprocessing's size."""
    started = time.perf_counter()
    predictions = torch.cat([model(to_model_input(batch, preprocessing)).argmax(dim=1) for batch in images.split(32)])
    seconds = time.perf_counter() - started
    return (predictions == labels).float().mean().item(), len(images) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"), help="a model folder")
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--sizes", default="", help="comma-separated; default: the trained size and 3 larger ones")
    parser.add_argument("--images", type=int, default=None, help="the first N test images (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    loaded = load_served_model(args.model)
    trained = loaded.preprocessing.image_size
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [
        trained, trained + trained // 6, trained + trained // 3, trained + 2 * trained // 3]
    dataset_dict, image_column, label_column, _ = open_dataset(args.dataset)
    test = dataset_dict["test"]
    if args.images:
        test = test.select(range(args.images))
    decoded = decode_images(test, image_column, label_column, trained)
    model = loaded.model.eval()
    accuracy_at(model, decoded.images[:64], decoded.labels[:64], loaded.preprocessing)  # warm-up

    print(f"Test accuracy of {Path(args.model).name} (trained at {trained} px) by evaluation size, "
          f"{len(decoded.labels)} test images, {torch.get_num_threads()} threads\n")
    print("| evaluated at | test accuracy | vs trained size | images/s | speed vs trained size |")
    print("|---|---|---|---|---|")
    baseline = None
    for size in sizes:
        accuracy, speed = accuracy_at(model, decoded.images, decoded.labels,
                                      dataclasses.replace(loaded.preprocessing, image_size=size))
        baseline = baseline or (accuracy, speed)
        print(f"| {size} px | {accuracy:.2%} | {100 * (accuracy - baseline[0]):+.2f} points | {speed:.0f} | "
              f"{speed / baseline[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
