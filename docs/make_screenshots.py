"""Screenshots of the app's three tabs for the README: `python docs/make_screenshots.py [--model model]`.

Starts `python app.py` on a free local port, drives Debian's chromium with Playwright, writes docs/*.png.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--image", default=str(ROOT / "examples" / "cat.png"))
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MODEL_ID": args.model, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=tempfile.mkdtemp(), env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(args.image)
            page.get_by_role("button", name="Classify", exact=True).click()
            page.get_by_text("Predicted in").wait_for(timeout=60_000)
            page.screenshot(path=str(ROOT / "docs" / "classify.png"))
            for tab, name in (("Where it fails", "mistakes.png"), ("Training report", "report.png")):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_function("() => [...document.querySelectorAll('#mistakes-gallery img')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
                time.sleep(1)
                page.screenshot(path=str(ROOT / "docs" / name), full_page=tab == "Training report")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
