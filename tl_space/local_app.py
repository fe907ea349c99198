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

APP = Path(__file__).resolve().parent.parent / "app.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(model_id: str, workdir: Path, timeout_s: float = 120,
                study_id: str | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yields (url, process) of the app serving model_id (and study_id), as a user starts it; its output goes to
    workdir/app.log."""
    port = free_port()
    env = {**os.environ, "MODEL_ID": model_id, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
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
