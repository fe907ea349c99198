"""Training images/s of the speedrun network at several widths against lite0 at 112 px (the CPU default), fp32.

    python bench/bench_speedrun.py [--repeats 3] [--steps 8]

Each model takes training steps (forward, backward, AdamW) on random inputs at its own batch size and input size,
interleaved round by round so the machine's drift hits all alike; the table gives the median images/s, the forward
GFLOPs per image (torch.utils.flop_counter) and how many epochs of CIFAR-10's 45,000 training images an hour holds.
The baseline is lite0 at 112 px, batch 32, measured in the same command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tl_space import model as _registers  # noqa: E402,F401  (tl_scratch_cnn, tl_speedrun_cnn in timm)

TRAIN_IMAGES = 45_000
# (label, timm name, keyword arguments, input size, batch size)
MODELS = [
    ("lite0 112 px (baseline)", "tf_efficientnet_lite0", {}, 112, 32),
    ("speedrun 64-256-256 (airbench94)", "tl_speedrun_cnn", {}, 32, 256),
    ("speedrun 48-192-192", "tl_speedrun_cnn", {"widths": (48, 192, 192)}, 32, 256),
    ("speedrun 32-128-128", "tl_speedrun_cnn", {"widths": (32, 128, 128)}, 32, 256),
    ("tl_scratch_cnn 32-64-128", "tl_scratch_cnn", {}, 32, 256),
]


def forward_gflops(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def timed_steps(model, optimizer, inputs, labels, steps: int) -> float:
    """Seconds per training step, the median of `steps` after two warm-up steps."""
    timings = []
    for step in range(steps + 2):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    built = []
    for label, name, kwargs, size, batch in MODELS:
        model = timm.create_model(name, num_classes=10, **kwargs)
        gflops = forward_gflops(model.eval(), size)
        model = model.train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        inputs = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        built.append((label, model, optimizer, inputs, torch.randint(0, 10, (batch,)), gflops))
    rates = {label: [] for label, *_ in built}
    for _ in range(args.repeats):
        for label, model, optimizer, inputs, labels, _ in built:
            rates[label].append(len(inputs) / timed_steps(model, optimizer, inputs, labels, args.steps))
    baseline = statistics.median(rates[built[0][0]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, channels_last; "
          f"median of {args.repeats} rounds of {args.steps} steps")
    print("| model | input px | batch | forward GFLOP/image | train images/s | vs baseline | epochs per hour |")
    print("|---|---|---|---|---|---|---|")
    for (label, name, kwargs, size, batch), (_, _, _, _, _, gflops) in zip(MODELS, built):
        rate = statistics.median(rates[label])
        print(f"| {label} | {size} | {batch} | {gflops:.3f} | {rate:.0f} | {rate / baseline:.1f}x | "
              f"{rate * 3600 / TRAIN_IMAGES:.1f} |")


if __name__ == "__main__":
    main()
