"""App under load: many concurrent gradio_client visitors on loopback; answered, failed, latency and the app's memory.

    python bench/bench_app_load.py [--model model] [--clients 16] [--requests 50] [--time-limit 900]

First one client alone sends --requests requests (the baseline, same run), then --clients clients send --requests
each at once, every client with its own gradio_client connection and a mix of the example images (a 32x32 PNG up
to a 1024x768 JPEG). The app's resident memory is read from /proc after the warm-up (the baseline requests), after
the first half of the load and at the end: flat after warm-up means no leak per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_app import make_inputs, percentile  # noqa: E402
from tl_space.local_app import resident_memory_mb, running_app  # noqa: E402


def visitor(url: str, images: list[Path], requests: int, offset: int, deadline: float,
            on_request=lambda: None) -> tuple[list[float], list[str]]:
    """One visitor's latencies (ms) of answered requests, and the errors of the others."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    latencies, errors = [], []
    for number in range(requests):
        if time.monotonic() > deadline:
            errors.append("not sent: time limit")
            continue
        started = time.perf_counter()
        try:
            labels, _ = client.predict(handle_file(str(images[(offset + number) % len(images)])), api_name="/classify")
            if len(labels["confidences"]) != 5:
                raise ValueError(f"{len(labels['confidences'])} labels instead of 5")
            latencies.append((time.perf_counter() - started) * 1000)
        except Exception as error:  # a failed request is a result to count, not a crash of the bench
            errors.append(f"{type(error).__name__}: {error}"[:200])
        on_request()
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"), help="model folder or Hub id (MODEL_ID)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds; requests not sent by then count as failed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-app-load-"))
    inputs = make_inputs(workdir)
    images = [inputs["32x32"], inputs["1024x768"], *sorted((ROOT / "examples").glob("*.png"))]
    with running_app(args.model, workdir) as (url, process):
        deadline = time.monotonic() + args.time_limit
        alone, alone_errors = visitor(url, images, args.requests, 0, deadline)
        memory = {"after warm-up": resident_memory_mb(process.pid)}
        total = args.clients * args.requests
        sent = {"count": 0}
        lock = threading.Lock()

        def count_request() -> None:  # memory half-way through the load
            with lock:
                sent["count"] += 1
                if sent["count"] == total // 2:
                    memory["half-way"] = resident_memory_mb(process.pid)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda index: visitor(url, images, args.requests, index, deadline, count_request),
                                    range(args.clients)))
        wall = time.perf_counter() - started
        memory["end"] = resident_memory_mb(process.pid)
    latencies = [value for result in results for value in result[0]]
    errors = [error for result in results for error in result[1]]
    if not alone:
        raise SystemExit(f"no request answered: {alone_errors[:3]}")
    print(f"model: {args.model}   {args.clients} clients x {args.requests} requests, loopback, "
          f"app queue concurrency 1\n")
    print("| load | answered | failed | p50 ms | p95 ms | max ms | requests/s | p50 / alone p50 |")
    print("|---|---|---|---|---|---|---|---|")
    alone_p50 = statistics.median(alone)
    print(f"| 1 client (baseline) | {len(alone)} | {len(alone_errors)} | {alone_p50:.0f} | {percentile(alone, 0.95):.0f} | "
          f"{max(alone):.0f} | {1000 / statistics.mean(alone):.1f} | 1.00x |")
    if latencies:
        print(f"| {args.clients} clients | {len(latencies)} | {len(errors)} | {statistics.median(latencies):.0f} | "
              f"{percentile(latencies, 0.95):.0f} | {max(latencies):.0f} | {len(latencies) / wall:.1f} | "
              f"{statistics.median(latencies) / alone_p50:.2f}x |")
    print("\n| app memory (RSS) | MB |\n|---|---|")
    for moment, value in memory.items():
        print(f"| {moment} | {value:.0f} |")
    growth = memory["end"] - memory.get("half-way", memory["after warm-up"])
    print(f"\ngrowth over the second half of the load: {growth:+.0f} MB")
    for error in sorted(set(errors + alone_errors))[:10]:
        print("error:", error)


if __name__ == "__main__":
    main()
