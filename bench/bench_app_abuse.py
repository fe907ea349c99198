"""What one stranger's requests cost the Space: peak resident memory of the app while 16 huge images go through each
upload endpoint, against the same 16 images at 32x32 px; the app's storage after many teaches in one session and
across sessions, against one teach.

    python bench/bench_app_abuse.py [--model model] [--megapixels 49] [--teaches 50] [--sessions 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tl_space.app import storage as storage_module  # noqa: E402
from tests.support.local_app import resident_memory_mb, running_app  # noqa: E402


def peak_rss_during(pid: int, call) -> float:
    """The process's highest VmRSS (MB), sampled every 20 ms while call() runs."""
    peak, done = [resident_memory_mb(pid)], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(resident_memory_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return max(peak)


def images(folder: Path, side: int, count: int = 16) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        colour = rng.integers(0, 255, 3)
        pixels = np.empty((side, side, 3), np.uint8)
        pixels[:] = colour
        paths.append(folder / f"{['cat', 'dog'][index % 2]}_{index:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def storage_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def classify_latencies(url: str, path: Path, count: int) -> list[float]:
    client = Client(url, verbose=False)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.predict(handle_file(str(path)), api_name="/classify")
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--megapixels", type=float, default=49)
    parser.add_argument("--teaches", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20, help="/classify calls of the other client")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-abuse-"))
    small = images(work / "small", 32)
    huge = images(work / "huge", int((args.megapixels * 1e6) ** 0.5))
    env = {"GRADIO_TEMP_DIR": str(work / "gradio")}
    with running_app(str(Path(args.model).resolve()), work, env=env) as (url, app):
        client = Client(url, verbose=False)
        client.predict(handle_file(str(small[0])), api_name="/classify")  # warm
        print(f"model {Path(args.model).name}; 16 images per request; RSS idle {resident_memory_mb(app.pid):.0f} MB\n")
        print("| endpoint | peak RSS, 16 images of 32x32 px (MB) | peak RSS, 16 images of "
              f"{args.megapixels:.0f} MP (MB) | ratio |")
        print("|---|---|---|---|")
        for endpoint in ("/classify_many", "/teach"):
            peaks = [peak_rss_during(app.pid, lambda paths=paths: client.predict(
                [handle_file(str(path)) for path in paths], api_name=endpoint)) for paths in (small, huge)]
            print(f"| {endpoint} | {peaks[0]:.0f} | {peaks[1]:.0f} | {peaks[1] / peaks[0]:.2f} |")
        folder = work / "gradio" / storage_module.ROOT_NAME / str(app.pid)
        files = [handle_file(str(path)) for path in small]
        client.predict(files, api_name="/teach")
        one = storage_mb(folder)
        for _ in range(args.teaches):
            client.predict(files, api_name="/teach")
        in_one_session = storage_mb(folder)
        for _ in range(args.sessions):
            Client(url, verbose=False).predict(files, api_name="/teach")
        across = storage_mb(folder)
        print(f"\n| storage of the app's folder | MB |\n|---|---|\n| after 1 teach (baseline) | {one:.1f} |\n"
              f"| after {args.teaches} more teaches in one session | {in_one_session:.1f} |\n"
              f"| after one teach in each of {args.sessions} more sessions | {across:.1f} |")
        alone = classify_latencies(url, small[0], args.requests)
        flooder = Client(url, verbose=False)
        heavy = [handle_file(str(path)) for path in huge]
        jobs = [flooder.submit(heavy, api_name="/classify_many") for _ in range(20)]
        flooded = classify_latencies(url, small[0], args.requests)
        refused = 0
        for job in jobs:
            try:
                job.result(timeout=600)
            except Exception:  # the refusals are what is counted
                refused += 1
        print(f"\n| another client's /classify ({args.requests} calls) | p50 (ms) | p95 (ms) |\n|---|---|---|\n"
              f"| alone (baseline) | {percentile(alone, 50):.0f} | {percentile(alone, 95):.0f} |\n"
              f"| while one session floods 20 /classify_many of 16 {args.megapixels:.0f}-MP images ({refused} "
              f"refused) | {percentile(flooded, 50):.0f} | {percentile(flooded, 95):.0f} |")


if __name__ == "__main__":
    main()
