"""Feature extraction images/s: the plain per-batch loop vs tl-space's path, same model, resolution and images.

    python bench/bench_features.py [--images 384] [--sizes 96,160,224] [--repeats 3]

Plain: NCHW float batches of 128, bilinear upscale with F.interpolate, torch.no_grad, the model as timm builds it.
Ours, step by step: uint8 batches made into channels_last input by tl_space.transforms.to_model_input under
torch.inference_mode with the model in channels_last, in batches of 128; then in batches of 32 (train.py's default
on a CPU); then compiled (tl_space.training.features.feature_extractor, what train.py runs on a CPU for 10,000 images or more).
All run in this process, interleaved, on real CIFAR-10 test images with the lite0 ImageNet weights from ../shared;
ratios of medians are the figures to quote (this machine's speed drifts 2-3x between runs).
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
from tl_space.settings import CPU_EVAL_BATCH_SIZE  # noqa: E402
from tl_space.training.features import feature_extractor  # noqa: E402
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


def our_features(extractor, images: torch.Tensor, preprocessing, batch_size: int) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outputs.append(extractor(to_model_input(images[start:start + batch_size], preprocessing)))
    return torch.cat(outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--sizes", default="96,160,224")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset_dict, image_column, label_column, _ = data.open_dataset(str(SHARED / "data" / "cifar10"))
    images = data.decode_images(dataset_dict["test"].select(range(args.images)), image_column, label_column, 32).images
    plain_model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=10, pretrained_cfg_overlay={
        "file": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors")}).eval()
    our_model = copy.deepcopy(plain_model).to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(plain_model)
    print(f"{args.images} CIFAR-10 test images, lite0 ImageNet weights, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; x = images/s over plain\n")
    print("| size | plain, batch 128 | ours eager, 128 | ours eager, 32 | ours compiled, 32 | compile s "
          "| max feature difference |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(value) for value in args.sizes.split(",")):
        preprocessing = preprocessing_for(config, size)
        compiled = feature_extractor(our_model, CPU_EVAL_BATCH_SIZE, compile_it=True)
        started = time.perf_counter()
        our_features(compiled, images[:CPU_EVAL_BATCH_SIZE], preprocessing, CPU_EVAL_BATCH_SIZE)
        compile_seconds = time.perf_counter() - started
        eager = feature_extractor(our_model, CPU_EVAL_BATCH_SIZE, compile_it=False)
        runs = {
            "plain": lambda: plain_features(plain_model, images, size, 128, config["mean"], config["std"]),
            "eager 128": lambda: our_features(eager, images, preprocessing, 128),
            "eager 32": lambda: our_features(eager, images, preprocessing, CPU_EVAL_BATCH_SIZE),
            "compiled 32": lambda: our_features(compiled, images, preprocessing, CPU_EVAL_BATCH_SIZE),
        }
        times = {name: [] for name in runs}
        outputs = {}
        for _ in range(args.repeats):  # interleaved, so drift hits all alike
            for name, function in runs.items():
                started = time.perf_counter()
                outputs[name] = function()
                times[name].append(time.perf_counter() - started)
        rates = {name: args.images / statistics.median(values) for name, values in times.items()}
        cells = [f"{rates['plain']:.1f}/s"] + [f"{rates[name]:.1f}/s ({rates[name] / rates['plain']:.2f}x)"
                                              for name in ("eager 128", "eager 32", "compiled 32")]
        # bilinear (plain) vs the model's bicubic (ours): close, not equal
        difference = max((outputs["plain"] - outputs[name]).abs().max().item() for name in runs)
        compiled_vs_eager = (outputs["compiled 32"] - outputs["eager 32"]).abs().max().item()
        print(f"| {size} | {' | '.join(cells)} | {compile_seconds:.0f} | {difference:.3f} "
              f"(compiled vs eager {compiled_vs_eager:.1e}) |", flush=True)


if __name__ == "__main__":
    main()
