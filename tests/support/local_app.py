"""Start `python app.py` on a free loopback port and wait until it answers: for tests, benchmarks and screenshots."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

APP = Path(__file__).resolve().parents[2] / "app.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(model_id: str, workdir: Path, timeout_s: float = 120, study_id: str | None = None,
                env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (url, process) of the app serving model_id (and study_id), as a user starts it, with env added to its
    environment; its output goes to workdir/app.log."""
    port = free_port()
    env = {**os.environ, "MODEL_ID": model_id, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    if study_id:
        env["STUDY_ID"] = study_id
    log_path = Path(workdir) / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(APP)], cwd=workdir, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the app did not start within {timeout_s:.0f} s:\n{log_path.read_text()}")
                    time.sleep(0.3)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def resident_memory_mb(pid: int) -> float:
    """A process's resident memory (VmRSS) in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def wait_for_images(page, selector: str, count: int = 1, timeout_ms: int = 60_000) -> None:
    """Wait until a Playwright page shows at least count images matching selector, every one of them loaded
    (not a placeholder)."""
    page.wait_for_function(f"() => {{ const images = [...document.querySelectorAll({selector!r})];"
                           f" return images.length >= {count} && images.every(i => i.complete && i.naturalWidth > 0); }}",
                           timeout=timeout_ms)


def answer_values(endpoint: str, answer) -> object:
    """A gradio_client answer of one of the app's endpoints as values that can be compared between calls:
    probabilities, pixels of returned images, captions and bytes of gallery images."""
    import numpy as np
    from PIL import Image

    def pixels(path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)

    if endpoint == "/classify":
        return {entry["label"]: entry["confidence"] for entry in answer[0]["confidences"]}
    if endpoint == "/explain":
        return pixels(answer)
    if endpoint == "/feature_maps":
        return pixels(answer[0]), answer[1]
    return [(item["caption"], Path(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]).read_bytes())
            for item in answer[0]]


def same_answer(endpoint: str, expected, answer) -> bool:
    """Whether two answer_values of endpoint agree: probabilities within 1e-5, image pixels within 2 levels."""
    if endpoint == "/classify":
        return answer.keys() == expected.keys() and all(abs(answer[key] - expected[key]) < 1e-5 for key in expected)
    if endpoint == "/explain":
        return answer.shape == expected.shape and int(abs(answer - expected).max()) <= 2
    if endpoint == "/feature_maps":
        return (answer[1] == expected[1] and answer[0].shape == expected[0].shape
                and int(abs(answer[0] - expected[0]).max()) <= 2)
    return answer == expected
