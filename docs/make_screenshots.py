"""Screenshots of the app's three tabs for the README: `python docs/make_screenshots.py [--model model]`.

Starts `python app.py` on a free local port, drives Debian's chromium with Playwright, writes docs/*.png.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space.local_app import running_app  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--image", default=str(ROOT / "examples" / "cat.png"))
    args = parser.parse_args()
    with running_app(args.model, Path(tempfile.mkdtemp())) as (url, _):
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


if __name__ == "__main__":
    main()
