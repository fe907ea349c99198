"""Fine-tuning step images/s at several input sizes: a per-image PIL + DataLoader pipeline vs tl-space's path.

    python bench/bench_finetune_step.py [--model tf_efficientnet_lite0] [--sizes 32,128,224] [--batch-size 32]
        [--repeats 3] [--compile] [--batchnorm auto]
    python bench/bench_finetune_step.py --sizes 224 --batch-size 128 --images 8192   # on a GPU (bf16 autocast)

Both train all of the model (--strategy finetune: AdamW, fp32, BatchNorm as --batchnorm, by default as train.py's
auto: its pretrained running statistics kept) from its ImageNet weights in ../shared on the same CIFAR-10 training
images from ../shared, with the same augmentation (reflect-pad 4 px random crop, horizontal flip), resize and
normalisation, interleaved in this process so the machine's drift hits both alike:
- PIL: the usual tutorial pipeline. A torch Dataset over the `datasets` split decodes each PNG, runs torchvision's
  per-image transforms and a DataLoader with a worker process per core (8 at most) collates the batches; the
  model in NCHW.
- ours: what train.py runs. Images decoded once into a uint8 tensor; augmentation, resize and normalisation are
  batched tensor ops (tl_space.training.batches.image_inputs); the model in channels_last.
"data %" is the share of the step's wall time spent waiting for the batch (on a GPU: until its tensors are ready).

A second table says what bounds our step: its FLOP/s (3x the forward pass's FLOPs, counted by
torch.utils.flop_counter) against a large matrix product's on the same device (the baseline, measured in the
same run), the share of the step in each kind of work (torch.profiler): the backward pass of each kind of
convolution, all convolutions' forward passes, BatchNorm (forward and backward), the activations (forward and
backward), tf "same" padding (forward and backward), the optimiser; and on a GPU the share of the step the GPU is
busy.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import data  # noqa: E402
from tl_space.model import train_mode  # noqa: E402
from tl_space.settings import BatchNormChoice  # noqa: E402
from tl_space.strategies import FINETUNE, STRATEGIES, keeps_batchnorm_statistics  # noqa: E402
from tl_space.training.batches import image_inputs  # noqa: E402
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on a GPU (what train.py's --mixed-precision auto does there), fp32 on a CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def training_step(model, optimizer, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    """One AdamW step, under step_autocast."""
    with step_autocast(inputs.device):
        loss = F.cross_entropy(model(inputs).float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_steps(model, optimizer, batches, steps: int, device: torch.device, keep_statistics: bool
                ) -> tuple[float, float]:
    """Wall seconds of `steps` training steps after one warm-up step, and the part spent waiting for data."""
    train_mode(model, keep_statistics)
    batches = iter(batches)
    total = waiting = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        inputs, labels = next(batches)
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        synchronize(device)
        loaded = time.perf_counter()
        training_step(model, optimizer, inputs, labels)
        synchronize(device)
        if step:  # the first step pays for worker start-up and allocator warm-up
            total += time.perf_counter() - started
            waiting += loaded - started
    return total, waiting


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matrix product in the step's precision (fp32 on a CPU, bf16 on a GPU): the ceiling."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    seconds = []
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(seconds[1:])


def step_flops(model, inputs: torch.Tensor) -> int:
    """Floating-point operations of one training step: 3x the counted forward pass (the backward computes the
    input's and the weights' gradients, each about a forward). Counted, not timed. FlopCounterMode's own count of
    convolution_backward ignores groups, which makes depthwise convolutions' backward look C times dearer."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), step_autocast(inputs.device):
        model(inputs)
    return 3 * counter.get_total_flops()


def convolution_kind(weight_shape: list[int]) -> str:
    """What a convolution is, from its weight's shape (out, in / groups, kh, kw)."""
    if len(weight_shape) != 4:
        return "other"
    _, inputs_per_group, height, width = weight_shape
    if inputs_per_group == 1 and height > 1:
        return f"depthwise {height}x{width}"
    return "1x1" if height == width == 1 else f"dense {height}x{width}"


# What each profiled op is part of, by its name in torch.profiler (inclusive times; none of these runs inside another).
WORK_KINDS = {
    "aten::convolution": "conv forward",
    "aten::batch_norm": "BatchNorm", "aten::native_batch_norm_backward": "BatchNorm",
    "aten::hardtanh": "activations", "aten::hardtanh_": "activations", "aten::hardtanh_backward": "activations",
    "aten::relu": "activations", "aten::relu_": "activations", "aten::threshold_backward": "activations",
    "aten::silu": "activations", "aten::silu_": "activations", "aten::silu_backward": "activations",
    "aten::constant_pad_nd": "padding", "autograd::engine::evaluate_function: ConstantPadNdBackward0": "padding",
    "Optimizer.step#AdamW.step": "optimiser",
}
SHARE_COLUMNS = ("conv backward, depthwise 5x5", "conv backward, depthwise 3x3", "conv backward, 1x1",
                 "conv backward, dense 3x3", "conv forward", "BatchNorm", "activations", "padding", "optimiser")


def step_profile(model, optimizer, batches, steps: int, device: torch.device) -> tuple[dict[str, float], float, float]:
    """Per-step seconds of each kind of work (WORK_KINDS, and the convolutions' backward by kind; device time on a
    GPU, else CPU time), the per-step wall seconds, and the seconds per step that the GPU runs kernels (0 on a CPU).
    Making the batches is part of the step; the model is in the mode it trains in."""
    batches = iter(batches)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities, record_shapes=True) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            inputs, labels = next(batches)
            training_step(model, optimizer, inputs, labels)
        synchronize(device)
        wall = time.perf_counter() - started
    use_device = device.type == "cuda"
    shares: dict[str, float] = {}
    busy = 0.0
    for event in profiler.key_averages(group_by_input_shape=True):
        busy += event.self_device_time_total / 1e6 / steps if use_device else 0.0  # kernels, each counted once
        # Inclusive times: on a GPU the kernels run under cuDNN ops below convolution_backward.
        seconds = (event.device_time_total if use_device else event.cpu_time_total) / 1e6 / steps
        if event.key == "aten::convolution_backward" and len(event.input_shapes) > 2:
            kind = "conv backward, " + convolution_kind(event.input_shapes[2])
        else:
            kind = WORK_KINDS.get(event.key)
        if kind:
            shares[kind] = shares.get(kind, 0.0) + seconds
    return shares, wall / steps, busy


def print_bounds(base, images: torch.Tensor, labels: torch.Tensor, config, images_per_second: dict[int, float],
                 batch_size: int, device: torch.device, keep_statistics: bool) -> None:
    """The second table: achieved FLOP/s (at the first table's images/s) against the matmul ceiling, and where the
    step's time goes (shares of a few profiled steps, whose wall time the profiler stretches alike)."""
    ceiling = matmul_flops_per_second(device)
    print(f"\nWhat bounds our step: the baseline is a {'bf16' if device.type == 'cuda' else 'fp32'} 2048x2048 "
          f"matrix product on this {device.type}, {ceiling / 1e9:.0f} GFLOP/s; the step's share in each kind of work\n")
    print("| size | GFLOP per image (fwd + bwd) | step GFLOP/s | of the matmul ceiling | "
          + " | ".join(SHARE_COLUMNS) + " | GPU busy |")
    print("|---|---|---|---|" + "---|" * len(SHARE_COLUMNS) + "---|")
    for size, rate in images_per_second.items():
        model = copy.deepcopy(base).to(device, memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = our_batches(images, labels, preprocessing_for(config, size), batch_size, seed=0)
        batch_inputs, batch_labels = next(batches)
        train_mode(model, keep_statistics)
        training_step(model, optimizer, batch_inputs, batch_labels)  # warm-up
        flops = step_flops(model, batch_inputs)
        shares, step_seconds, busy = step_profile(model, optimizer, batches, 20 if device.type == "cuda" else 4, device)
        achieved = flops / batch_size * rate
        print(f"| {size} | {flops / batch_size / 1e9:.2f} | {achieved / 1e9:.1f} | {100 * achieved / ceiling:.0f}% | "
              + " | ".join(f"{100 * shares.get(kind, 0.0) / step_seconds:.0f}%" for kind in SHARE_COLUMNS) + " | "
              + (f"{100 * busy / step_seconds:.0f}% |" if device.type == "cuda" else "n/a (CPU) |"), flush=True)


def our_batches(images: torch.Tensor, labels: torch.Tensor, preprocessing, batch_size: int, seed: int):
    generator = torch.Generator(images.device).manual_seed(seed)  # on the images' device, as in train.py
    inputs = image_inputs(images, preprocessing, generator)
    order = torch.randperm(len(images), generator=generator, device=images.device)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        yield inputs(indices, True), labels[indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="a timm name")
    parser.add_argument("--pretrained-file", help="its timm weights (default: ../shared/weights/MODEL.in1k.safetensors)")
    parser.add_argument("--sizes", default="32,128,224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", default="2048,384,160", help="images per timed repeat, per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batchnorm", default=BatchNormChoice.AUTO, choices=list(BatchNormChoice),
                        help="BatchNorm while training, as train.py's --batchnorm (auto: finetune's rule)")
    parser.add_argument("--compile", action="store_true", help="also time ours with the model under torch.compile "
                        "(compiled once per size, before the timed repeats)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [int(value) for value in args.sizes.split(",")]
    dataset_dict, image_column, label_column, _ = data.open_dataset(args.dataset)
    counts = [int(value) for value in args.images.split(",")]
    # Each timed repeat takes one pass of a shuffled loader: enough images for the longest, plus its warm-up batch.
    split = dataset_dict["train"].select(range(min(len(dataset_dict["train"]), max(4096, max(counts) + args.batch_size))))
    decoded = data.decode_images(split, image_column, label_column, 32)
    images, labels = decoded.images.to(device), decoded.labels.to(device)  # where train.py keeps them
    weights = args.pretrained_file or SHARED / "weights" / f"{args.model}.in1k.safetensors"
    base = timm.create_model(args.model, pretrained=True, num_classes=10, pretrained_cfg_overlay={
        "file": str(Path(weights).resolve())})
    keep_statistics = keeps_batchnorm_statistics(STRATEGIES[FINETUNE], args.batchnorm)
    config = timm.data.resolve_model_data_config(base)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    batchnorm = "pretrained statistics" if keep_statistics else "batch statistics"
    print(f"{args.model} finetune, batch {args.batch_size}, {precision}, BatchNorm with its {batchnorm}, {where}, "
          f"median of {args.repeats} interleaved repeats\n")
    compiled_columns = " ours compiled images/s | compiled / ours |" if args.compile else ""
    print("| size | PIL + DataLoader images/s | data % | ours images/s | data % | ours / PIL |" + compiled_columns)
    print("|---|---|---|---|---|---|" + "---|---|" * args.compile)
    our_rates = {}
    for size, count in zip(sizes, counts):
        steps = count // args.batch_size
        preprocessing = preprocessing_for(config, size)
        pil_transform = T.Compose([
            T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
            T.Normalize(config["mean"], config["std"])])
        loader = DataLoader(PilImages(split, image_column, label_column, pil_transform), batch_size=args.batch_size,
                            shuffle=True, num_workers=min(8, os.cpu_count() or 1), persistent_workers=True, drop_last=True,
                            pin_memory=device.type == "cuda")
        results = {"pil": [], "ours": []}
        if args.compile:
            results["compiled"] = []
            compiled_model = copy.deepcopy(base).to(device, memory_format=torch.channels_last)
            compiled_optimizer = torch.optim.AdamW(compiled_model.parameters(), lr=1e-4)
            compiled_forward = torch.compile(compiled_model)
            timed_steps(compiled_forward, compiled_optimizer, our_batches(  # compiles
                images, labels, preprocessing, args.batch_size, 0), 1, device, keep_statistics)
        for repeat in range(args.repeats):
            pil_model = copy.deepcopy(base).to(device)
            pil_optimizer = torch.optim.AdamW(pil_model.parameters(), lr=1e-4)
            results["pil"].append(timed_steps(pil_model, pil_optimizer, loader, steps, device, keep_statistics))
            our_model = copy.deepcopy(base).to(device, memory_format=torch.channels_last)
            our_optimizer = torch.optim.AdamW(our_model.parameters(), lr=1e-4)
            results["ours"].append(timed_steps(our_model, our_optimizer, our_batches(
                images, labels, preprocessing, args.batch_size, repeat),
                steps, device, keep_statistics))
            if args.compile:
                results["compiled"].append(timed_steps(compiled_forward, compiled_optimizer, our_batches(
                    images, labels, preprocessing, args.batch_size, repeat),
                    steps, device, keep_statistics))
        row = {}
        for name, runs in results.items():
            total = statistics.median(run[0] for run in runs)
            row[name] = (steps * args.batch_size / total, 100 * statistics.median(run[1] / run[0] for run in runs))
        our_rates[size] = row["ours"][0]
        print(f"| {size} | {row['pil'][0]:.1f} | {row['pil'][1]:.0f}% | {row['ours'][0]:.1f} | {row['ours'][1]:.0f}% | "
              f"{row['ours'][0] / row['pil'][0]:.2f}x |"
              + (f" {row['compiled'][0]:.1f} | {row['compiled'][0] / row['ours'][0]:.2f}x |" if args.compile else ""),
              flush=True)
    print_bounds(base, images, labels, config, our_rates, args.batch_size, device, keep_statistics)


if __name__ == "__main__":
    main()
