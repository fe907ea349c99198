"""Fine-tuning step images/s at several input sizes: a per-image PIL + DataLoader pipeline vs tl-space's path.

    python bench/bench_finetune_step.py [--sizes 32,128,224] [--batch-size 32] [--repeats 3]

Both train all of lite0 (--strategy finetune: AdamW, fp32, train mode) on the same CIFAR-10 training images
from ../shared, with the same augmentation (reflect-pad 4 px random crop, horizontal flip), resize and
normalisation, interleaved in this process so the machine's drift hits both alike:
- PIL: the usual tutorial pipeline. A torch Dataset over the `datasets` split decodes each PNG, runs torchvision's
  per-image transforms and a DataLoader with 2 worker processes collates the batches; the model in NCHW.
- ours: what train.py runs. Images decoded once into a uint8 tensor; augmentation, resize and normalisation are
  batched tensor ops (tl_space.training.image_inputs); the model in channels_last.
"data %" is the share of the step's wall time spent waiting for the batch.
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
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import data  # noqa: E402
from tl_space.training import image_inputs  # noqa: E402
from tl_space.transforms import preprocessing_for  # noqa: E402

SHARED = ROOT.parent / "shared"


class PilImages(Dataset):
    """Per-image pipeline: decode the stored PNG, transform with PIL/torchvision, one image at a time."""

    def __init__(self, split, image_column: str, label_column: str, transform):
        self.split, self.image_column, self.label_column, self.transform = split, image_column, label_column, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        record = self.split[index]
        return self.transform(record[self.image_column].convert("RGB")), record[self.label_column]


def timed_steps(model, optimizer, batches, steps: int) -> tuple[float, float]:
    """Wall seconds of `steps` training steps after one warm-up step, and the part spent waiting for data."""
    model.train()
    batches = iter(batches)
    total = waiting = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        inputs, labels = next(batches)
        loaded = time.perf_counter()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for worker start-up and allocator warm-up
            total += time.perf_counter() - started
            waiting += loaded - started
    return total, waiting


def our_batches(images: torch.Tensor, labels: torch.Tensor, preprocessing, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = image_inputs(images, preprocessing, generator)
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        yield inputs(indices, True), labels[indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,128,224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", default="2048,384,160", help="images per timed repeat, per size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset_dict, image_column, label_column, _ = data.open_dataset(str(SHARED / "data" / "cifar10"))
    split = dataset_dict["train"].select(range(4096))
    decoded = data.decode_images(split, image_column, label_column, 32)
    base = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=10, pretrained_cfg_overlay={
        "file": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors")})
    config = timm.data.resolve_model_data_config(base)
    print(f"lite0 finetune, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| size | PIL + DataLoader images/s | data % | ours images/s | data % | ours / PIL |")
    print("|---|---|---|---|---|---|")
    for size, count in zip((int(v) for v in args.sizes.split(",")), (int(v) for v in args.images.split(","))):
        steps = count // args.batch_size
        preprocessing = preprocessing_for(config, size)
        pil_transform = T.Compose([
            T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
            T.Normalize(config["mean"], config["std"])])
        loader = DataLoader(PilImages(split, image_column, label_column, pil_transform), batch_size=args.batch_size,
                            shuffle=True, num_workers=2, persistent_workers=True, drop_last=True)
        results = {"pil": [], "ours": []}
        for repeat in range(args.repeats):
            pil_model = copy.deepcopy(base)
            pil_optimizer = torch.optim.AdamW(pil_model.parameters(), lr=1e-4)
            results["pil"].append(timed_steps(pil_model, pil_optimizer, loader, steps))
            our_model = copy.deepcopy(base).to(memory_format=torch.channels_last)
            our_optimizer = torch.optim.AdamW(our_model.parameters(), lr=1e-4)
            results["ours"].append(timed_steps(our_model, our_optimizer, our_batches(
                decoded.images, decoded.labels, preprocessing, args.batch_size, repeat), steps))
        row = {}
        for name, runs in results.items():
            total = statistics.median(run[0] for run in runs)
            row[name] = (steps * args.batch_size / total, 100 * statistics.median(run[1] / run[0] for run in runs))
        print(f"| {size} | {row['pil'][0]:.1f} | {row['pil'][1]:.0f}% | {row['ours'][0]:.1f} | {row['ours'][1]:.0f}% | "
              f"{row['ours'][0] / row['pil'][0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
