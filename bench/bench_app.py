"""App latency on this machine: start-up to first answer, and prediction p50/p95 through gradio_client vs in-process.

    python bench/bench_app.py [--model model] [--requests 40]

In-process is the baseline measured in the same run; the ratio is what serving through Gradio costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space.app.served import load_served_model  # noqa: E402
from tl_space.images import open_image  # noqa: E402
from tests.support.local_app import running_app  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def make_inputs(folder: Path) -> dict[str, Path]:
    source = Image.open(ROOT / "examples" / "cat.png").convert("RGB")
    small, large = folder / "32x32.png", folder / "1024x768.jpg"
    source.save(small)
    source.resize((1024, 768), Image.Resampling.BICUBIC).save(large, quality=90)
    return {"32x32": small, "1024x768": large}


def time_calls(call, count: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"), help="model folder or Hub id (MODEL_ID)")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per image size and path")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    workdir = Path(tempfile.mkdtemp(prefix="bench-app-"))
    inputs = make_inputs(workdir)
    started = time.perf_counter()
    with running_app(args.model, workdir) as (url, _):
        client = Client(url, verbose=False)
        client.predict(handle_file(str(inputs["32x32"])), api_name="/classify")
        startup = time.perf_counter() - started

        loaded = load_served_model(args.model)
        rows = []
        for name, path in inputs.items():
            served = time_calls(lambda: client.predict(handle_file(str(path)), api_name="/classify"), args.requests)
            local = time_calls(lambda: loaded.class_probabilities(open_image(path)), args.requests)
            rows.append((name, statistics.median(local), percentile(local, 0.95),
                         statistics.median(served), percentile(served, 0.95)))

    print(f"model: {args.model}  ({loaded.preprocessing.image_size} px input)   cores: {os.cpu_count()}")
    print(f"start-up to first answer: {startup:.1f} s\n")
    print("| image | in-process p50 ms | in-process p95 ms | gradio_client p50 ms | gradio_client p95 ms | client / in-process (p50) |")
    print("|---|---|---|---|---|---|")
    for name, local_p50, local_p95, served_p50, served_p95 in rows:
        print(f"| {name} | {local_p50:.1f} | {local_p95:.1f} | {served_p50:.1f} | {served_p95:.1f} | {served_p50 / local_p50:.2f}x |")


if __name__ == "__main__":
    main()
