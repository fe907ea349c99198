"""The precision a run computes in: the accelerator's, or fp32 where runs of one process (a study) share an
accelerator made for a run that wants bf16 (the speedrun net gains 2.3x from bf16 on a CPU with AMX, while the
EfficientNet-Lites lose a fifth: bench/bench_backbone_step.py)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs

from tl_space.errors import UserError
from tl_space.settings import MixedPrecision

REDUCED = (MixedPrecision.BF16, MixedPrecision.FP16)


def cpu_description() -> str:
    """The CPU's model name and cores, and how it computes bf16: a run's speed, and bf16's gain, differ between
    machines that report the same name, so a run's record says which it ran on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else (
        "native" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "emulated")  # the CPU's, not a GPU's
    return f"{name}, {os.cpu_count()} cores, bf16: {bf16}"


def accelerator_precision(wanted: str) -> str | None:
    """What an Accelerator is built with for --mixed-precision: auto is bf16 on a GPU that has it, else None (what
    `accelerate launch` / `accelerate config` chose)."""
    if wanted != MixedPrecision.AUTO:
        return str(wanted)
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None


def shared_precision(wanted: list[str]) -> str:
    """The one precision for an accelerator that runs with these --mixed-precision values share: a reduced one if
    any asks for it (the others then compute in fp32 under it), else auto."""
    reduced = {MixedPrecision(value) for value in wanted} & set(REDUCED)
    if len(reduced) > 1:
        raise UserError(f"runs of one process can share one reduced precision, not {sorted(map(str, reduced))}")
    return str(reduced.pop()) if reduced else str(MixedPrecision.AUTO)


def use_run_precision(accelerator: Accelerator, wanted: str) -> None:
    """Set the accelerator's autocast for this run: off where the run asks for fp32 (no) of an accelerator made in a
    reduced precision for another run, else the accelerator's own (accelerate's documented override)."""
    current = str(accelerator.mixed_precision)
    if wanted in REDUCED and current != wanted:
        raise UserError(f"--mixed-precision {wanted}: the runs share an accelerator that computes in {current}")
    turned_off = wanted == MixedPrecision.NO and current in REDUCED
    accelerator.autocast_handler = AutocastKwargs(enabled=False) if turned_off else None


def run_precision(accelerator: Accelerator) -> str:
    """The precision the current run's autocast computes in: no, bf16 or fp16."""
    handler = accelerator.autocast_handler
    return MixedPrecision.NO.value if handler is not None and not handler.enabled else str(accelerator.mixed_precision)
