"""Feature extraction images/s: the plain per-batch loop vs tl-space's path, same model, resolution and images.

    python bench/bench_features.py [--images 1024] [--sizes 96,160] [--repeats 3]

Plain: NCHW float batches, bilinear upscale with F.interpolate, torch.no_grad, the model as timm builds it.
Ours: what train.py runs for linear-probe: uint8 batches made into channels_last input by
tl_space.transforms.to_model_input under torch.inference_mode, the model in channels_last.
Both run in this process, interleaved, on real CIFAR-10 test images with the lite0 ImageNet weights from ../shared;
the ratio of medians is the figure to quote (this machine's speed drifts 2-3x between runs).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import data  # noqa: E402
from tl_space.model import pooled_features  # noqa: E402
from tl_space.transforms import preprocessing_for, to_model_input  # noqa: E402

SHARED = ROOT.parent / "shared"


def plain_features(model, images: torch.Tensor, size: int, batch_size: int, mean, std) -> torch.Tensor:
    outputs = []
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].float() / 255
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
            outputs.append(pooled_features(model, (batch - mean) / std))
    return torch.cat(outputs)


def our_features(model, images: torch.Tensor, preprocessing, batch_size: int) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outputs.append(pooled_features(model, to_model_input(images[start:start + batch_size], preprocessing)))
    return torch.cat(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--sizes", default="96,160")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset_dict, image_column, label_column, _ = data.open_dataset(str(SHARED / "data" / "cifar10"))
    images = data.decode_images(dataset_dict["test"].select(range(args.images)), image_column, label_column, 32).images
    plain_model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=10, pretrained_cfg_overlay={
        "file": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors")}).eval()
    our_model = copy.deepcopy(plain_model).to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(plain_model)
    print(f"{args.images} CIFAR-10 test images, lite0 ImageNet weights, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| size | plain images/s | ours images/s | ours / plain | max feature difference |")
    print("|---|---|---|---|---|")
    for size in (int(value) for value in args.sizes.split(",")):
        preprocessing = preprocessing_for(config, size)
        plain_times, our_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            started = time.perf_counter()
            plain = plain_features(plain_model, images, size, args.batch_size, config["mean"], config["std"])
            plain_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            ours = our_features(our_model, images, preprocessing, args.batch_size)
            our_times.append(time.perf_counter() - started)
        plain_rate, our_rate = args.images / statistics.median(plain_times), args.images / statistics.median(our_times)
        difference = (plain - ours).abs().max().item()  # bilinear vs the model's bicubic: close, not equal
        print(f"| {size} | {plain_rate:.1f} | {our_rate:.1f} | {our_rate / plain_rate:.2f}x | {difference:.3f} |")


if __name__ == "__main__":
    main()
