"""What bounds the linear probe: test accuracy of a logistic regression on other frozen lite0 features.

    python bench/bench_probe_features.py [--size 160] [--train 10000] [--test 5000]

One pass of the frozen lite0 backbone over the first N training and M test images of ../shared CIFAR-10 (and
their mirror images) keeps, per image, the pooled final features that tl-space's linear probe trains on (the
baseline), and beside them: the final feature map pooled to 2x2 or by max, and the pooled outputs of the last
blocks. Each recipe gets the same full-batch L-BFGS multinomial logistic regression on standardised features at
three L2 penalties, with and without the mirror images as extra training rows; accuracy is on the test images,
alone and averaged with their mirror images (flip TTA). Accuracy, not speed: the machine's noise does not matter.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import data  # noqa: E402
from tl_space.transforms import preprocessing_for, to_model_input  # noqa: E402

SHARED = ROOT.parent / "shared"
L2_PENALTIES = (1e-3, 1e-2, 3e-2)
# Which pooled tensors each recipe concatenates; "head" is what the linear probe uses.
RECIPES = {
    "head (baseline)": ["head"],
    "head, max-pooled": ["head_max"],
    "head + max-pooled": ["head", "head_max"],
    "head pooled to 2x2": ["head_2x2"],
    "head + blocks 5-6": ["head", "block5", "block6"],
    "head + blocks 4-6": ["head", "block4", "block5", "block6"],
    "head + blocks 3-6": ["head", "block3", "block4", "block5", "block6"],
    "head 2x2 + blocks 5-6": ["head_2x2", "block5", "block6"],
}


@torch.inference_mode()
def pooled_features(model, images: torch.Tensor, preprocessing, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Every pooled tensor the recipes use, for each image, from one forward pass."""
    blocks: dict[str, torch.Tensor] = {}
    hooks = [model.blocks[index].register_forward_hook(
        lambda module, inputs, output, index=index: blocks.__setitem__(f"block{index}", output.mean((2, 3))))
        for index in (3, 4, 5, 6)]
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        feature_map = model.forward_features(to_model_input(images[start:start + batch_size], preprocessing))
        pooled = {"head": feature_map.mean((2, 3)), "head_max": feature_map.amax((2, 3)),
                  "head_2x2": F.adaptive_avg_pool2d(feature_map, 2).flatten(1), **blocks}
        for name, value in pooled.items():
            outputs.setdefault(name, []).append(value.float())
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(values) for name, values in outputs.items()}


def logistic_regression(train: torch.Tensor, labels: torch.Tensor, l2: float, classes: int):
    """Full-batch L-BFGS multinomial logistic regression on standardised features; returns the logits function."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    weight = torch.zeros(train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, history_size=20, line_search_fn="strong_wolfe")
    standardised = (train - mean) / std

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(standardised @ weight + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    return lambda features: ((features - mean) / std) @ weight.detach() + bias.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=5_000)
    args = parser.parse_args()
    torch.manual_seed(0)
    dataset_dict, image_column, label_column, class_names = data.open_dataset(str(SHARED / "data" / "cifar10"))
    train = data.decode_images(dataset_dict["train"].select(range(args.train)), image_column, label_column, 32)
    test = data.decode_images(dataset_dict["test"].select(range(args.test)), image_column, label_column, 32)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=len(class_names),
                              pretrained_cfg_overlay={"file": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors")})
    model = model.eval().to(memory_format=torch.channels_last)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), args.size)
    started = time.perf_counter()
    features = {name: pooled_features(model, images, preprocessing) for name, images in
                (("train", train.images), ("train_mirrored", train.images.flip(-1)),
                 ("test", test.images), ("test_mirrored", test.images.flip(-1)))}
    print(f"lite0 frozen at {args.size} px: {args.train} training and {args.test} test images of ../shared CIFAR-10 "
          f"(features in {time.perf_counter() - started:.0f} s); test accuracy, plain / with flip TTA\n")
    print("| features | dims | mirror images in training | " + " | ".join(f"L2 {l2:g}" for l2 in L2_PENALTIES)
          + " | best over the baseline's best |")
    print("|---|---|---|" + "---|" * len(L2_PENALTIES) + "---|")
    baseline_best = None
    for recipe, names in RECIPES.items():
        def joined(split: str) -> torch.Tensor:
            return torch.cat([features[split][name] for name in names], dim=1)
        for mirrored in (False, True):
            inputs, labels = joined("train"), train.labels
            if mirrored:
                inputs, labels = torch.cat([inputs, joined("train_mirrored")]), torch.cat([labels, labels])
            cells, best = [], 0.0
            for l2 in L2_PENALTIES:
                logits_of = logistic_regression(inputs, labels, l2, len(class_names))
                logits = logits_of(joined("test"))
                plain = float((logits.argmax(1) == test.labels).double().mean())
                tta = float(((logits + logits_of(joined("test_mirrored"))).argmax(1) == test.labels).double().mean())
                cells.append(f"{plain:.2%} / {tta:.2%}")
                best = max(best, plain)
            baseline_best = best if baseline_best is None else baseline_best
            print(f"| {recipe} | {inputs.shape[1]} | {'yes' if mirrored else 'no'} | " + " | ".join(cells)
                  + f" | {100 * (best - baseline_best):+.2f} points |", flush=True)


if __name__ == "__main__":
    main()
