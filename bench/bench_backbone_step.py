"""What a training step and a frozen-feature pass cost per backbone on this machine, against lite0 in the same run.

    python bench/bench_backbone_step.py [--models tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2,
        resnet18,resnet50,tl_speedrun_cnn] [--size 112] [--batch-size 32] [--repeats 3] [--compile]

Each model trains as train.py trains it (AdamW, channels_last, batches made by tl_space.training.batches from uint8
32 px images upscaled on the device; random pixels, as a step's cost does not depend on them), timed as interleaved
repeats (the machine's drift hits every model alike), median taken; tl_speedrun_cnn at 32 px (its own size), the
others at --size. Columns:
- fp32 step images/s and the ratio to lite0's (the baseline, first model);
- bf16 autocast step images/s and its gain over fp32 (torch.autocast on the CPU: oneDNN's AMX/AVX-512 bf16 kernels
  where the CPU has them);
- frozen-feature images/s (inference mode, the evaluation batch of 32): what a linear probe's one pass costs;
- GFLOP per image of a step (3x the counted forward) and the fp32 step's share of a 2048x2048 fp32 matrix product's
  FLOP/s measured in the same run (the ceiling);
- with --compile, a second table: the same steps with the model under torch.compile (inductor, compiled before the
  timed repeats, in the same interleaved repeats), against the eager step of the same precision, and the seconds
  compiling took.
The weights are random (ImageNet weights of the ResNets cannot be fetched here): a step costs the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import speedrun_net  # noqa: E402,F401  (registers tl_speedrun_cnn)
from tl_space.training.batches import image_inputs  # noqa: E402
from tl_space.transforms import preprocessing_for  # noqa: E402

MODELS = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2,resnet18,resnet50,tl_speedrun_cnn"
OWN_SIZE = {"tl_speedrun_cnn": 32}


def batches(model: torch.nn.Module, size: int, batch_size: int, seed: int):
    """Endless (inputs, labels) as train.py makes them: uint8 images, augmented, resized and normalised in a batch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (512,), generator=generator)
    inputs = image_inputs(images, preprocessing_for(timm.data.resolve_model_data_config(model), size), generator)
    while True:
        indices = torch.randint(0, 512, (batch_size,), generator=generator)
        yield inputs(indices, True), labels[indices]


def step_seconds(model, optimizer, source, steps: int, bf16: bool) -> float:
    """Median seconds of one training step over `steps`, after one warm-up step."""
    model.train()
    timings = []
    for step in range(steps + 1):
        inputs, labels = next(source)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


@torch.inference_mode()
def feature_seconds(model, source, steps: int) -> float:
    model.eval()
    timings = []
    for step in range(steps + 1):
        inputs, _ = next(source)
        started = time.perf_counter()
        model.forward_head(model.forward_features(inputs), pre_logits=True)
        if step:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(seconds[1:])


def step_flops_per_image(model, inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(inputs)
    return 3 * counter.get_total_flops() / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time each step under torch.compile")
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    models, sources, optimizers = {}, {}, {}
    for name in names:
        model = timm.create_model(name, pretrained=False, num_classes=10).to(memory_format=torch.channels_last)
        models[name] = model
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sources[name] = batches(model, OWN_SIZE.get(name, args.size), args.batch_size, seed=0)
    compiled, compile_seconds = {}, {}
    for name in names if args.compile else ():  # the same parameters, so the same optimizer steps them
        compiled[name] = torch.compile(models[name])
        started = time.perf_counter()
        for bf16 in (False, True):  # each precision compiles its own graphs
            step_seconds(compiled[name], optimizers[name], sources[name], 1, bf16)
        compile_seconds[name] = time.perf_counter() - started
    results = {name: {"fp32": [], "bf16": [], "features": [], "fp32 compiled": [], "bf16 compiled": []}
               for name in names}
    for _ in range(args.repeats):  # interleaved: every model in every repeat
        for name in names:
            for kind, model in (("", models[name]), (" compiled", compiled.get(name))):
                for precision, bf16 in (("fp32", False), ("bf16", True)):
                    if model is not None:
                        results[name][precision + kind].append(
                            step_seconds(model, optimizers[name], sources[name], args.steps, bf16))
            results[name]["features"].append(feature_seconds(models[name], sources[name], args.steps))
    ceiling = matmul_flops_per_second()
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, median of {args.repeats} interleaved "
          f"repeats of {args.steps} steps; the ceiling: a 2048x2048 fp32 matrix product, {ceiling / 1e9:.0f} GFLOP/s\n")
    print(f"| model | px | parameters | fp32 step images/s | vs {names[0]} | bf16 step images/s | bf16 / fp32 | "
          "frozen-feature images/s | GFLOP per image (step) | fp32 step of the ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    baseline, rates = None, {}
    for name in names:
        rate = rates[name] = {kind: args.batch_size / statistics.median(values)
                              for kind, values in results[name].items() if values}
        baseline = baseline or rate["fp32"]
        flops = step_flops_per_image(models[name], next(sources[name])[0])
        parameters = sum(parameter.numel() for parameter in models[name].parameters())
        print(f"| {name} | {OWN_SIZE.get(name, args.size)} | {parameters / 1e6:.1f}M | {rate['fp32']:.1f} | "
              f"{rate['fp32'] / baseline:.2f}x | {rate['bf16']:.1f} | {rate['bf16'] / rate['fp32']:.2f}x | "
              f"{rate['features']:.0f} | {flops / 1e9:.2f} | {100 * flops * rate['fp32'] / ceiling:.0f}% |", flush=True)
    if compiled:
        print("\n| model | batch | compiled fp32 step images/s | vs eager fp32 | compiled bf16 step images/s | "
              "vs eager bf16 | compile s |")
        print("|---|---|---|---|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {args.batch_size} | {rate['fp32 compiled']:.1f} | {rate['fp32 compiled'] / rate['fp32']:.2f}x"
                  f" | {rate['bf16 compiled']:.1f} | {rate['bf16 compiled'] / rate['bf16']:.2f}x | "
                  f"{compile_seconds[name]:.0f} |")


if __name__ == "__main__":
    main()
