"""Screenshots of the app's tabs for the README: `python docs/make_screenshots.py [--model model] [--study study]`.

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

from tests.support.local_app import running_app, wait_for_images  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"]


def teach_screenshot(page) -> None:
    """The Teach tab after teaching cat, dog and ship from 20 CIFAR-10 sample images each."""
    page.get_by_role("tab", name="Teach").click()
    panel = page.get_by_role("tabpanel")
    for row, name in enumerate(("cat", "dog", "ship")):
        panel.get_by_label(f"Class {row + 1}", exact=True).fill(name)
        choice = panel.get_by_label("or CIFAR-10 test images of class").nth(row)
        for _ in range(3):  # a dropdown's choice can be lost while the page still updates the row before it
            choice.fill(name)
            choice.press("Enter")
            panel.get_by_label("how many").nth(row).fill("20")
            time.sleep(0.5)
            if choice.input_value() == name:
                break
    page.get_by_role("button", name="Teach", exact=True).click()
    page.get_by_text("Taught 3 classes").wait_for(timeout=120_000)
    time.sleep(1)
    page.screenshot(path=str(ROOT / "docs" / "teach.png"), full_page=True)


def compare_screenshot(page, image: str) -> None:
    """The Compare tab (the bundled compare/ runs): one upload through each run, and the images they disagree on."""
    page.get_by_role("tab", name="Compare").click()
    panel = page.get_by_role("tabpanel")
    panel.locator("input[type=file]").first.set_input_files(image)
    panel.get_by_role("button", name="Compare", exact=True).click()
    wait_for_images(page, ".compare-cam img", count=3)
    panel.get_by_role("button", name="Show the test images they disagree on").click()
    wait_for_images(page, "#compare-gallery img")
    time.sleep(1)
    page.screenshot(path=str(ROOT / "docs" / "compare.png"), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--study", default=str(ROOT / "study"))
    parser.add_argument("--image", default=str(ROOT / "examples" / "cat.png"))
    parser.add_argument("--tabs", default="classify,mistakes,report,study,teach,compare", help="which screenshots to make")
    args = parser.parse_args()
    tabs = set(args.tabs.split(","))
    with running_app(args.model, Path(tempfile.mkdtemp()), study_id=args.study) as (url, _):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            if "teach" in tabs:
                teach_screenshot(page)
                page.goto(url)
            if "compare" in tabs:
                compare_screenshot(page, args.image)
                page.goto(url)
            if "classify" in tabs:
                page.locator("input[type=file]").first.set_input_files(args.image)
                page.get_by_role("button", name="Classify", exact=True).click()
                page.get_by_text("Predicted in").wait_for(timeout=60_000)
                page.get_by_label("Show where the model looks (Grad-CAM heatmap)").check()
                wait_for_images(page, "#cam-image img")
                page.screenshot(path=str(ROOT / "docs" / "classify.png"), full_page=True)
            if "mistakes" in tabs:
                page.get_by_role("tab", name="Where it fails").click()
                wait_for_images(page, "#mistakes-gallery img")
                page.locator("#mistakes-gallery img").first.click()
                wait_for_images(page, "#mistake-cams img", count=2)
                page.screenshot(path=str(ROOT / "docs" / "mistakes.png"), full_page=True)
            for tab, name, selector in (("Training report", "report", "img"), ("Study", "study", ".study-plot img")):
                if name not in tabs:
                    continue
                page.get_by_role("tab", name=tab).click()
                time.sleep(1)
                # The browser loads images below the fold (loading="lazy") only once they are scrolled to.
                page.evaluate("async () => { for (let y = 0; y < document.body.scrollHeight; y += 400) {"
                              " window.scrollTo(0, y); await new Promise(done => setTimeout(done, 100)); }"
                              " window.scrollTo(0, 0); }")
                wait_for_images(page, selector)
                page.screenshot(path=str(ROOT / "docs" / f"{name}.png"), full_page=True)
            browser.close()


if __name__ == "__main__":
    main()
