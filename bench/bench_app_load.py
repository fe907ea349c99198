"""App under load: many concurrent gradio_client visitors calling every endpoint on loopback; each answer is checked
against the same call made alone; latency per endpoint and the app's memory.

    python bench/bench_app_load.py [--model model] [--clients 16] [--requests 20] [--time-limit 900]

First one client alone makes every distinct call once (the baseline, same run): /classify and /explain on a mix of
images (a 32x32 PNG up to a 1024x768 JPEG and the examples), /feature_maps on a few, /filter_mistakes per class.
Then --clients clients, each with its own connection, make --requests calls each at once, cycling through the same
calls from different offsets; an answer that differs from the baseline's (probabilities by 1e-5, image pixels by 2
levels) counts as wrong. The app's resident memory is read from /proc after the baseline, at each quarter of the load and
at the end.

With --allocator both (the default) the whole load runs twice, in two fresh app processes: first with glibc's default
allocator settings (MALLOC_ARENA_MAX set to glibc's own default, 8 per core, which makes the app leave the allocator
alone), then with the app's own (tl_space/app/memory.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_app import make_inputs, percentile  # noqa: E402
from tl_space.app.served import load_served_model  # noqa: E402
from tests.support.local_app import answer_values, resident_memory_mb, running_app, same_answer  # noqa: E402

SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def planned_calls(images: list[Path], class_names: list[str]) -> list[tuple[str, tuple]]:
    calls = [("/classify", (image,)) for image in images]
    calls += [("/explain", (image, class_names[index % len(class_names)])) for index, image in enumerate(images)]
    calls += [("/feature_maps", (image,)) for image in images[:3]]
    calls += [("/filter_mistakes", (name, "all classes")) for name in class_names[:4]]
    return calls


def call(client, endpoint: str, arguments: tuple):
    from gradio_client import handle_file

    sent = [handle_file(str(value)) if isinstance(value, Path) else value for value in arguments]
    return answer_values(endpoint, client.predict(*sent, api_name=endpoint))


def visitor(url: str, calls: list, expected: list, requests: int, offset: int, deadline: float,
            on_request=lambda: None) -> list[tuple[str, float | None, str]]:
    """(endpoint, latency ms or None, outcome: ok, wrong or the error) of each of one visitor's requests."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    results = []
    for number in range(requests):
        index = (offset + number) % len(calls)
        endpoint, arguments = calls[index]
        if time.monotonic() > deadline:
            results.append((endpoint, None, "not sent: time limit"))
            continue
        started = time.perf_counter()
        try:
            answer = call(client, endpoint, arguments)
            latency = (time.perf_counter() - started) * 1000
            results.append((endpoint, latency, "ok" if same_answer(endpoint, expected[index], answer) else "wrong"))
        except Exception as error:  # a failed request is a result to count, not a crash of the bench
            results.append((endpoint, None, f"{type(error).__name__}: {error}"[:200]))
        on_request()
    return results


ALLOCATORS = {"default": {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))}, "bounded": {}}


def load_round(args, calls: list, workdir: Path, env: dict) -> tuple[list, dict, dict, float]:
    """One app process under the whole load: (results, alone latencies, memory by moment, wall seconds)."""
    with running_app(args.model, workdir, env=env) as (url, process):
        from gradio_client import Client

        memory = {"started": resident_memory_mb(process.pid)}
        alone_client, alone, expected = Client(url, verbose=False), defaultdict(list), []
        for endpoint, arguments in calls:
            started = time.perf_counter()
            expected.append(call(alone_client, endpoint, arguments))
            alone[endpoint].append((time.perf_counter() - started) * 1000)
        memory["after the baseline"] = resident_memory_mb(process.pid)
        total, sent, lock = args.clients * args.requests, {"count": 0}, threading.Lock()

        def count_request() -> None:  # memory at each quarter of the load
            with lock:
                sent["count"] += 1
                for quarter in (1, 2, 3):
                    if sent["count"] == total * quarter // 4:
                        memory[f"{quarter}/4 of the load"] = resident_memory_mb(process.pid)

        deadline = time.monotonic() + args.time_limit
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = [result for visitor_results in pool.map(
                lambda offset: visitor(url, calls, expected, args.requests, offset * 7, deadline, count_request),
                range(args.clients)) for result in visitor_results]
        wall = time.perf_counter() - started
        memory["end"] = resident_memory_mb(process.pid)
    return results, alone, memory, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"), help="model folder or Hub id (MODEL_ID)")
    parser.add_argument("--pretrained-file", default=str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else None,
                        help="PRETRAINED_FILE for the feature maps' backbone (default: ../shared's lite0 weights)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds; requests not sent by then count as failed")
    parser.add_argument("--allocator", choices=("both", *ALLOCATORS), default="both",
                        help="default: glibc's settings; bounded: the app's; both: one round each, default first")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-app-load-"))
    inputs = make_inputs(workdir)
    images = [inputs["32x32"], inputs["1024x768"], *sorted((ROOT / "examples").glob("*.png"))]
    calls = planned_calls(images, load_served_model(args.model).label_names)
    env = {"PRETRAINED_FILE": args.pretrained_file} if args.pretrained_file else {}
    memories = {}
    for allocator in ALLOCATORS if args.allocator == "both" else [args.allocator]:
        results, alone, memory, wall = load_round(args, calls, workdir, {**env, **ALLOCATORS[allocator]})
        memories[allocator] = memory
        print(f"## allocator: {allocator}\n\nmodel: {args.model}   {args.clients} clients x {args.requests} requests, "
              f"mixed endpoints, loopback; {len(results) / wall:.1f} requests/s\n")
        print_latencies(calls, results, alone)
        for error in sorted({outcome for _, _, outcome in results if outcome not in ("ok", "wrong")})[:10]:
            print("error:", error)
        print()
    print("| app memory (RSS, MB) | " + " | ".join(memories) + " |\n|---|" + "---|" * len(memories))
    for moment in next(iter(memories.values())):
        print(f"| {moment} | " + " | ".join(f"{memory[moment]:.0f}" for memory in memories.values()) + " |")
    print("| growth over the second half of the load | " + " | ".join(
        f"{memory['end'] - memory['2/4 of the load']:+.0f}" for memory in memories.values()) + " |")


def print_latencies(calls: list, results: list, alone: dict) -> None:
    print("| endpoint | alone p50 ms | answered | failed | wrong | p50 ms | p95 ms | p50 / alone p50 |")
    print("|---|---|---|---|---|---|---|---|")
    for endpoint in dict.fromkeys(endpoint for endpoint, _ in calls):
        mine = [result for result in results if result[0] == endpoint]
        latencies = [latency for _, latency, outcome in mine if latency is not None]
        failed = sum(latency is None for _, latency, _ in mine)
        wrong = sum(outcome == "wrong" for _, _, outcome in mine)
        alone_p50 = statistics.median(alone[endpoint])
        row = (f"{statistics.median(latencies):.0f} | {percentile(latencies, 0.95):.0f} | "
               f"{statistics.median(latencies) / alone_p50:.1f}x" if latencies else "- | - | -")
        print(f"| {endpoint} | {alone_p50:.0f} | {len(latencies)} | {failed} | {wrong} | {row} |")


if __name__ == "__main__":
    main()
