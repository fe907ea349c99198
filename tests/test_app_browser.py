"""A real browser (Debian's chromium, headless, driven by Playwright) uses the page as a visitor would."""

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import CLASS_NAMES
from support.local_app import running_app, wait_for_images
from tl_space.folder.files import STUDY_PLOTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]

# CI installs chromium (.ci/run); elsewhere a missing browser skips instead of failing.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                                 reason="Debian's chromium is not installed")]


@pytest.fixture
def page():
    """A fresh page of Debian's chromium, headless, 1280x900."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    return Path(os.environ.get("TL_SPACE_SCREENSHOTS", tmp_path))


def test_page_classifies_an_upload_and_shows_the_gallery(app_url, sample_images, page, screenshots):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(app_url)
    page.get_by_text("What does this classifier see?").wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(sample_images[0]))
    page.get_by_role("button", name="Classify", exact=True).click()
    timing = page.get_by_text("Predicted in")
    timing.wait_for(timeout=60_000)
    bars = page.locator("[data-testid='label-output-value']").first
    expect(bars).to_be_visible()
    shown = page.locator(".output-class, [data-testid='label-output-value'] h2").first.inner_text()
    assert any(name in shown for name in CLASS_NAMES)
    page.screenshot(path=str(screenshots / "classify.png"), full_page=True)

    page.get_by_label("Show where the model looks (Grad-CAM heatmap)").check()
    wait_for_images(page, "#cam-image img")
    page.screenshot(path=str(screenshots / "heatmap.png"), full_page=True)

    page.get_by_role("tab", name="Where it fails").click()
    gallery_images = page.locator("#mistakes-gallery img")
    gallery_images.first.wait_for(timeout=30_000)
    assert gallery_images.count() > 0
    wait_for_images(page, "#mistakes-gallery img")  # every thumbnail served from Gradio's cache, not a placeholder
    gallery_images.first.click()  # the selected mistake: heatmaps of its true and its predicted class
    wait_for_images(page, "#mistake-cams img", count=2)
    page.screenshot(path=str(screenshots / "mistakes.png"), full_page=True)
    assert (screenshots / "classify.png").stat().st_size > 10_000
    assert (screenshots / "heatmap.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def study_app_url(tiny_study, tmp_path_factory):
    """The app with MODEL_ID set to a study folder: its best run, and the Study tab."""
    with running_app(str(tiny_study), tmp_path_factory.mktemp("study-app")) as (url, _):
        yield url


def test_study_tab_shows_findings_table_and_plots(study_app_url, tiny_study, page, screenshots):
    from playwright.sync_api import expect

    record = json.loads((tiny_study / "study.json").read_text())
    findings, first_row = record["findings"], record["summary"][0]
    page.goto(study_app_url)
    page.get_by_role("tab", name="Study").click()
    expect(page.get_by_text(findings[0])).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Every strategy at every shot size").first).to_be_visible()
    # the table's cells are text: a model name's underscores shown as they are, not escaped for Markdown
    model_cell = f"{first_row['model']} ({first_row['image_size']} px)"
    expect(page.get_by_role("gridcell", name=model_cell, exact=True).first).to_be_visible()
    wait_for_images(page, ".study-plot img", count=len(STUDY_PLOTS))
    assert page.locator(".study-plot img").count() == len(STUDY_PLOTS)
    page.screenshot(path=str(screenshots / "study.png"), full_page=True)
    assert (screenshots / "study.png").stat().st_size > 10_000


def test_compare_tab_shows_each_run_and_where_they_disagree(compare_folder, upload, page, screenshots, tmp_path):  # noqa: F811
    with running_app(str(compare_folder / "good"), tmp_path, env={"COMPARE_ID": str(compare_folder)}) as (url, _):
        page.goto(url)
        page.get_by_role("tab", name="Compare").click()
        page.get_by_text("The same image through 2 runs").wait_for(timeout=60_000)
        page.locator("input[type=file]").last.set_input_files(str(upload))
        page.get_by_role("button", name="Compare", exact=True).click()
        wait_for_images(page, ".compare-cam img", count=2)
        page.get_by_role("button", name="Show the test images they disagree on (of 30)").click()
        wait_for_images(page, "#compare-gallery img")
        assert page.locator("#compare-gallery img").count() > 0
        page.screenshot(path=str(screenshots / "compare.png"), full_page=True)
    assert (screenshots / "compare.png").stat().st_size > 10_000


def test_teach_tab_learns_two_classes_from_uploads(app_url, page, screenshots, tmp_path):  # noqa: F811
    from conftest import colour_images

    images, labels = colour_images(4, 16, seed=21)
    files = {"red": [], "blue": []}
    for index, (image, label) in enumerate(zip(images, labels)):
        if CLASS_NAMES[label] in files:
            files[CLASS_NAMES[label]].append(str(tmp_path / f"{index}.png"))
            image.save(files[CLASS_NAMES[label]][-1])
    page.goto(app_url)
    page.get_by_role("tab", name="Teach").click()
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Classes").first.fill("2")
    panel.get_by_label("Classes").first.press("Enter")
    for row, name in reversed(list(enumerate(files))):  # last row first: a filled gallery adds an input of its own
        panel.get_by_label(f"Class {row + 1}", exact=True).fill(name)
        panel.locator("input[type=file]").nth(row).set_input_files(files[name])
    page.wait_for_timeout(1500)  # the galleries take their uploads
    page.get_by_role("button", name="Teach", exact=True).click()
    page.get_by_text("Taught 2 classes").wait_for(timeout=60_000)
    assert page.get_by_text("Cross-validated accuracy").is_visible()
    page.screenshot(path=str(screenshots / "teach.png"), full_page=True)
    assert (screenshots / "teach.png").stat().st_size > 10_000


@pytest.mark.parametrize("width", [1400, 390])  # a desktop window and a phone
def test_clicking_an_example_keeps_the_input_box_its_size(app_url, width):  # noqa: F811
    """An example is a 32-px CIFAR-10 image: the box it lands in keeps its height instead of shrinking to it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(app_url)
        page.get_by_text("What does this classifier see?").wait_for(timeout=60_000)
        box = page.locator("[data-testid='image']").first
        empty = box.bounding_box()
        page.locator("button.gallery-item").first.click()
        page.locator("[data-testid='image'] img").first.wait_for(timeout=30_000)
        page.get_by_text("Predicted in").wait_for(timeout=60_000)
        holding = box.bounding_box()
        browser.close()
    assert empty["height"] >= 300 and holding["height"] == empty["height"] and holding["width"] == empty["width"]
