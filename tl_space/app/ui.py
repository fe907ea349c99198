"""The Gradio page: classify an image and see where the model looked, browse its mistakes, read its reports."""

from __future__ import annotations

import csv
import functools
import logging
import os
import time
from pathlib import Path

import gradio as gr
from gradio.utils import get_space, get_upload_folder
import torch
from PIL import Image

from tl_space.app import teach as teaching
from tl_space.app.limits import NOT_UPLOADED, limit_waiting_per_session, refuse_files_not_uploaded
from tl_space.app.storage import storage
from tl_space.app.compare import MAX_COMPARED, Comparison, TestSample, disagreements
from tl_space.app import explain as explaining
from tl_space.app.explain import DISPLAY_SIZE, pretrained_backbone
from tl_space.app.inference import batch_probabilities, class_probabilities
from tl_space.markdown import code, text
from tl_space.figures import to_image
from tl_space.folder.files import REPORT_PLOTS, STUDY_PLOTS
from tl_space.folder.plots import confusion_matrix_figure
from tl_space.folder.read import LoadedModel, public_plots
from tl_space.folder.study import load_study
from tl_space.folder.summary import PER_CLASS_HEADERS, headline, per_class_rows, run_summary
from tl_space.images import ImageError, open_image
from tl_space.predict import classify_files
from tl_space.errors import UserError
from tl_space.settings import REPORTING_SETTINGS
from tl_space.study.report import study_overview, summarize

ALL = "all classes"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Events run one at a time per group: quick ones (a prediction, a heatmap) in one, heavy ones (many images, teaching,
# feature maps) in the other, so that a flood of heavy jobs never holds up a visitor's /classify. The model's own lock
# keeps their forward passes (and hooks) apart; heavy jobs take it per batch.
MODEL_QUEUE = "model"
HEAVY_QUEUE = "heavy"
# Requests one session may have waiting; past it, a sentence instead of a place in the queue.
MAX_WAITING_PER_SESSION = 2
# Files Gradio stored for visitors (uploads, cached examples) are deleted after an hour, checked every 10 minutes.
DELETE_CACHE = (600, 3600)
# Requests waiting at most: past this, a visitor is told the Space is busy instead of waiting minutes.
QUEUE_MAX_SIZE = 64
logger = logging.getLogger("tl_space.app")


def heatmap_overlays(loaded: LoadedModel, image: Image.Image, class_names: list[str]) -> list[Image.Image]:
    """explain.heatmap_overlays, its UserErrors (a model without feature maps) shown to the visitor."""
    try:
        return explaining.heatmap_overlays(loaded, image, class_names)
    except UserError as error:
        raise gr.Error(str(error), print_exception=False) from error


def feature_map_figure(image: Image.Image, models: dict, loaded: LoadedModel) -> Image.Image:
    try:
        return explaining.feature_map_figure(image, models, loaded)
    except UserError as error:
        raise gr.Error(str(error), print_exception=False) from error


def uploaded_path(payload: str | dict | None) -> str | None:
    """The file behind gr.Image's raw (not preprocessed) value, if Gradio stored it in its upload folder; any other
    path (a forged API call naming a server file) is refused with a gr.Error that names no path."""
    path = payload.get("path") if isinstance(payload, dict) else payload
    if path is None:
        return None
    if not isinstance(path, str) or not Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        raise gr.Error(NOT_UPLOADED, print_exception=False)
    return path


def classify(loaded: LoadedModel, payload: str | dict | None) -> tuple[dict[str, float], str]:
    """Top classes of an uploaded image and how long the model took, or a gr.Error naming what is wrong.

    Takes gr.Image's raw value (the event runs with preprocess=False), so that our decoding, not Gradio's,
    meets broken files and can say what is wrong with them.
    """
    image = uploaded_image(payload, upload_side(loaded))
    started = time.perf_counter()
    probabilities = class_probabilities(loaded, image)
    milliseconds = (time.perf_counter() - started) * 1000
    width, height = image.info.get("source_size", image.size)
    return probabilities, f"Predicted in {milliseconds:.0f} ms on {width}x{height} px."


def upload_side(loaded: LoadedModel) -> int:
    """How wide an upload's centre square is kept at least: what the model and the heatmaps' display need."""
    return max(DISPLAY_SIZE, loaded.preprocessing.image_size)


def uploaded_image(payload: str | dict | None, side: int) -> Image.Image:
    """The decoded upload (its centre square, reduced while decoded to under 2 * side px), or a gr.Error saying what
    is wrong with it."""
    path = uploaded_path(payload)
    if path is None:
        raise gr.Error("Upload an image first.", print_exception=False)
    try:
        return open_image(path, side=side)
    except ImageError as error:
        raise gr.Error(str(error), print_exception=False) from error


def explain(loaded: LoadedModel, payload: str | dict | None, class_name: str) -> Image.Image:
    """The upload with the Grad-CAM heatmap of class_name over it."""
    image = uploaded_image(payload, upload_side(loaded))
    if class_name not in loaded.label_names:
        raise gr.Error(f"Pick one of the model's classes, not {str(class_name)[:100]!r}.", print_exception=False)
    return heatmap_overlays(loaded, image, [class_name])[0]


def page_header(loaded: LoadedModel) -> str:
    """Which model this page serves: its name, and from its metrics.json (the card's own summary) the backbone, the
    strategy, the dataset, the test accuracy and its Hub repo, a link, when it has one."""
    if not loaded.metrics:
        return f"Model {code(loaded.name)} (its folder has no metrics.json, so no report)."
    hub_repo_id = loaded.source.removeprefix("hf-hub:") if not Path(loaded.source).expanduser().is_dir() else (
        loaded.metrics["settings"].get("hub_model_id"))
    return f"Model {code(loaded.name)}: {headline(loaded.metrics, hub_repo_id, code, text)}."


def top_classes(probabilities: dict[str, float], count: int = 5) -> list[str]:
    return sorted(probabilities, key=probabilities.get, reverse=True)[:count]


def caption(record: dict) -> str:
    return f"{record['true_label']} → {record['predicted_label']} ({record['confidence']:.0%})"


def filter_mistakes(loaded: LoadedModel, true_label: str, predicted_label: str) -> list[int]:
    """Indices of the mistakes of true class true_label predicted as predicted_label (ALL: any)."""
    return [index for index, record in enumerate(loaded.misclassified)
            if true_label in (ALL, record["true_label"]) and predicted_label in (ALL, record["predicted_label"])]


def png_copies(images: list[Image.Image]) -> list[str]:
    """Each image written once as a PNG into the app's storage (inside Gradio's cache, so served from there, never
    copied), removed at exit.

    Given PIL images, Gradio would re-encode and rewrite the same cache file in place on every request, and a visitor
    fetching it meanwhile could get it half-written (bench/bench_app_load.py saw one such answer in 640 mixed
    requests).
    """
    folder = storage().public_folder()
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:03d}.png"
        image.save(path, format="PNG")
        paths.append(str(path))
    return paths


def gallery_items(loaded: LoadedModel, files: list[str], indices: list[int]) -> list[tuple[str, str]]:
    """The mistakes' images as our own decoded copies (files[i] of loaded.mistake_images[i]): never a path into the
    model folder."""
    return [(files[index], caption(loaded.misclassified[index])) for index in indices]


def top5_of(record: dict) -> dict[str, float]:
    return {entry["label"]: entry["probability"] for entry in record["top5"]}


def report_markdown(loaded: LoadedModel) -> str:
    """Headline numbers and the run's settings, from metrics.json; every value from the folder escaped."""
    metrics = loaded.metrics
    if not metrics:
        return f"No `metrics.json` in {code(loaded.name)}: this folder has no training report."
    lines = ["\n\n".join(run_summary(metrics, code, text))]
    settings = metrics["settings"]
    lines.append("\n| setting | value |\n|---|---|")
    lines += [f"| {text(key)} | {text(value)} |" for key, value in list(settings.items())[:60]
              if value is not None and key not in REPORTING_SETTINGS]
    return "\n".join(lines)


def study_table(summary: list[dict]) -> list[list]:
    # A Dataframe's str cells are shown as text, not Markdown: no escaping, only a bound on the length.
    return [[entry["strategy"], f"{str(entry.get('model') or '?')[:100]} ({str(entry.get('image_size') or '?')[:8]} px)",
             entry["shots"],
             round(entry["images_per_class"]), entry["runs"],
             round(entry["mean_test_accuracy"] * 100, 2), round(entry["std_test_accuracy"] * 100, 2),
             round(entry["mean_wall_seconds"]), entry["trainable_parameters"]] for entry in summary]


STUDY_HEADERS = ["strategy", "model", "shots per class", "images per class", "runs", "test accuracy (%)", "spread (± %)",
                 "wall seconds", "trainable parameters"]


def example_images(examples_dir: Path | None) -> list[str]:
    if examples_dir is None or not examples_dir.is_dir():
        return []
    return sorted(str(path) for path in examples_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def build_error_page(message: str) -> gr.Blocks:
    """What a visitor sees when the model could not be loaded: the reason and how to fix it."""
    with gr.Blocks(title="tl-space: model not loaded") as demo:
        gr.Markdown(f"## The model could not be loaded\n\n{message}")
    return demo


def build_demo(loaded: LoadedModel, examples_dir: Path | None = None, pretrained_file: str | None = None,
               queue_max_size: int = QUEUE_MAX_SIZE, comparison: Comparison | None = None,
               teach_sample: TestSample | None = None) -> gr.Blocks:
    """The whole page for one loaded model, its queue bounded by queue_max_size. pretrained_file: the operator's
    local copy of the backbone's weights, for the feature maps' comparison where the Hub is out of reach;
    comparison: runs to show side by side in a Compare tab; teach_sample: labelled images the Teach tab offers."""
    classes = ", ".join(text(name) for name in loaded.label_names[:20]) + ("…" if len(loaded.label_names) > 20 else "")
    with gr.Blocks(title=f"tl-space: {loaded.name}", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"# What does this classifier see?\n{page_header(loaded)}\n\nIt tells apart "
                    f"{len(loaded.label_names)} classes: {classes}.")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    # A fixed height: without one the box shrinks to a clicked example's own 32 px.
                    image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Image",
                                     height=CLASSIFY_IMAGE_HEIGHT)
                    submit = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label = gr.Label(num_top_classes=5, label="Top 5")
                    timing = gr.Markdown()
                    show_cam = gr.Checkbox(False, label="Show where the model looks (Grad-CAM heatmap)")
                    cam_class = gr.Dropdown([], label="Heatmap for the class", visible=False, interactive=True)
                    cam_image = gr.Image(label="Grad-CAM: red is where the evidence for this class lies", visible=False,
                                         interactive=False, type="pil", elem_id="cam-image")
            predict = lambda path: classify(loaded, path)  # noqa: E731

            def refresh_cam(payload: str | dict | None, show: bool):
                """With the toggle on: the top class's heatmap, and the top 5 to pick another from."""
                if not show or uploaded_path(payload) is None:
                    return gr.update(visible=False), gr.update(visible=False, value=None)
                image_now = uploaded_image(payload, upload_side(loaded))
                top5 = top_classes(class_probabilities(loaded, image_now))
                overlay = heatmap_overlays(loaded, image_now, top5[:1])[0]
                return gr.update(choices=top5, value=top5[0], visible=True), gr.update(value=overlay, visible=True)

            model_event = dict(preprocess=False, concurrency_id=MODEL_QUEUE)
            submit.click(predict, inputs=image, outputs=[label, timing], api_name="classify", **model_event).then(
                refresh_cam, inputs=[image, show_cam], outputs=[cam_class, cam_image], api_name=False, **model_event)
            show_cam.change(refresh_cam, inputs=[image, show_cam], outputs=[cam_class, cam_image], api_name=False,
                            **model_event)
            cam_class.input(lambda payload, name: explain(loaded, payload, name), inputs=[image, cam_class],
                            outputs=cam_image, api_name="explain", **model_event)
            with gr.Accordion("Feature maps: what the early, middle and last stages respond to", open=False):
                maps_button = gr.Button("Show the feature maps of this image")
                maps_note = gr.Markdown()
                maps_image = gr.Image(label="Most active channels per stage", interactive=False, type="pil",
                                      elem_id="feature-maps")
            # Loaded on first use, then kept; under the model's lock, so two first uses load it once.
            pretrained = functools.cache(lambda: pretrained_backbone(loaded, pretrained_file))

            def show_feature_maps(payload: str | dict | None):
                image_now = uploaded_image(payload, upload_side(loaded))
                with loaded.lock:
                    backbone, note = pretrained()
                models = {"this model": loaded.model} | ({"pretrained backbone": backbone} if backbone else {})
                return feature_map_figure(image_now, models, loaded), note

            maps_button.click(show_feature_maps, inputs=image, outputs=[maps_image, maps_note], api_name="feature_maps",
                              preprocess=False, concurrency_id=HEAVY_QUEUE)
            examples = example_images(examples_dir)
            if examples:
                gr.Examples(examples=examples, inputs=image, outputs=[label, timing], fn=predict,
                            cache_examples=True, cache_mode="lazy", preprocess=False, label="Examples: one per class")
        with gr.Tab("Where it fails"):
            gr.Markdown(f"The {len(loaded.misclassified)} most confident mistakes on the test split. "
                        "Pick one to see what the model thought.")
            with gr.Row():
                true_filter = gr.Dropdown([ALL, *loaded.label_names], value=ALL, label="True class")
                predicted_filter = gr.Dropdown([ALL, *loaded.label_names], value=ALL, label="Predicted class")
            everything = list(range(len(loaded.misclassified)))
            mistake_files = png_copies(loaded.mistake_images)
            shown = gr.State(everything)  # indices into loaded.misclassified, in gallery order
            with gr.Row():
                gallery = gr.Gallery(gallery_items(loaded, mistake_files, everything), label="Misclassified test images",
                                     columns=8, height=480, object_fit="contain", allow_preview=True, scale=3,
                                     format="png", elem_id="mistakes-gallery")
                with gr.Column(scale=1):
                    selected = gr.Label(num_top_classes=5, label="Top 5 of the selected image")
                    mistake_cams = gr.Gallery(label="Grad-CAM: true class | predicted class", columns=2, height=260,
                                              object_fit="contain", elem_id="mistake-cams")

            def refilter(true_label: str, predicted_label: str):
                indices = filter_mistakes(loaded, true_label, predicted_label)
                return gallery_items(loaded, mistake_files, indices), indices, None, None

            gr.on([true_filter.change, predicted_filter.change], refilter, inputs=[true_filter, predicted_filter],
                  outputs=[gallery, shown, selected, mistake_cams], api_name="filter_mistakes")

            def show_selected(indices: list[int], event: gr.SelectData):
                if not isinstance(event.index, int) or not 0 <= event.index < len(indices):
                    raise gr.Error("Pick one of the images shown.", print_exception=False)
                index = indices[event.index]
                record = loaded.misclassified[index]
                classes = [record["true_label"], record["predicted_label"]]
                overlays = heatmap_overlays(loaded, loaded.mistake_images[index], classes)
                return top5_of(record), [(overlays[0], f"true: {classes[0]}"), (overlays[1], f"predicted: {classes[1]}")]

            gallery.select(show_selected, inputs=shown, outputs=[selected, mistake_cams], api_name=False,
                           concurrency_id=MODEL_QUEUE)
        with gr.Tab("Training report"):
            gr.Markdown(report_markdown(loaded))
            metrics = loaded.metrics
            if metrics:
                per_class = [[text(name), *values] for name, *values in per_class_rows(metrics["test"])]
                gr.Dataframe(per_class, headers=PER_CLASS_HEADERS, interactive=False,
                             label="Per class: accuracy (recall), precision and F1 on the test split")
            for file, title in REPORT_PLOTS.items():
                if file in loaded.plots:
                    gr.Image(loaded.plots[file], label=title, interactive=False, type="pil", format="png")
        add_study_tab(loaded)
        add_teach_tab(loaded, teach_sample or (comparison.sample if comparison is not None else None), demo)
        if comparison is not None:
            add_compare_tab(comparison, loaded)
    demo.queue(default_concurrency_limit=1, max_size=queue_max_size)
    limit_waiting_per_session(demo, MAX_WAITING_PER_SESSION)
    refuse_files_not_uploaded(demo)
    return demo


def add_study_tab(loaded: LoadedModel) -> None:
    """The Study tab, when the model comes with a study whose study.json can be shown."""
    study = load_study(loaded.study_folder)
    if not study or not study["rows"]:
        return
    served = loaded.folder.relative_to(loaded.study_folder) if loaded.folder.is_relative_to(
        loaded.study_folder) else loaded.name
    summary = summarize(study["rows"])  # from the rows, so the tab matches them whatever wrote study.json
    plots = public_plots(loaded.study_folder, STUDY_PLOTS, "the study")
    with gr.Tab("Study"):
        gr.Markdown("\n".join(["### The study", *study_overview(study, summary, str(served), code, text)]))
        gr.Dataframe(study_table(summary), headers=STUDY_HEADERS, label="Every strategy at every shot size",
                     interactive=False)
        for file, title in STUDY_PLOTS.items():
            if file in plots:
                gr.Image(plots[file], label=title, interactive=False, type="pil", format="png",
                         elem_classes="study-plot")


def compare_upload(comparison: Comparison, payload: str | dict | None) -> list:
    """Each compared run's top 5 for the upload, then each run's Grad-CAM of its own top class."""
    image = uploaded_image(payload, max(upload_side(run) for run in comparison.runs))
    tops, heatmaps = [], []
    for run in comparison.runs:
        probabilities = class_probabilities(run, image)
        tops.append(probabilities)
        heatmaps.append(heatmap_overlays(run, image, top_classes(probabilities, 1))[0])
    empty = MAX_COMPARED - len(comparison.runs)
    return tops + [None] * empty + heatmaps + [None] * empty


def add_compare_tab(comparison: Comparison, served: LoadedModel) -> None:
    """The Compare tab: one upload through every compared run, and the sample images they disagree on; it says
    whether the served model is one of them (the same metrics.json: the same run)."""
    served_among = [name for name, run in zip(comparison.names, comparison.runs)
                    if served.metrics and run.metrics == served.metrics]
    whose = (f"which {code(served_among[0])} is the model this page serves" if served_among else
             f"the compare folder, not the model this page serves ({code(served.name)})")
    with gr.Tab("Compare"):
        runs = "; ".join(
            f"**{index + 1}.** {code(name)} ({text(run.metrics.get('settings', {}).get('strategy', '?'))}, "
            + (f"{float(run.metrics['test']['accuracy']):.1%} test)" if run.metrics else "no report)")
            for index, (name, run) in enumerate(zip(comparison.names, comparison.runs)))
        gr.Markdown(f"The same image through {len(comparison.runs)} runs ({whose}): {runs}. Each heatmap shows where "
                    "its run found the evidence for its own top class.")
        with gr.Row():
            image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Image", height=240)
            submit = gr.Button("Compare", variant="primary", scale=0)
        labels, heatmaps = [], []
        with gr.Row():
            for index in range(MAX_COMPARED):
                shown = index < len(comparison.runs)
                with gr.Column(visible=shown):
                    labels.append(gr.Label(num_top_classes=5, label=f"{index + 1}: top 5"))
                    heatmaps.append(gr.Image(label=f"{index + 1}: Grad-CAM of its top class", type="pil",
                                             interactive=False, elem_classes="compare-cam"))
        submit.click(lambda payload: compare_upload(comparison, payload), inputs=image, outputs=labels + heatmaps,
                     api_name="compare", preprocess=False, concurrency_id=MODEL_QUEUE)
        if comparison.sample is not None:
            disagree = gr.Button(f"Show the test images they disagree on (of {len(comparison.sample.labels)})")
            gallery = gr.Gallery(label="One run right, another wrong: true class — each run's prediction", columns=8,
                                 height=420, object_fit="contain", elem_id="compare-gallery")
            # Computed on first use (every run over the sample), then served as files written once.
            @functools.cache
            def disagreement_files() -> list[tuple[str, str]]:
                items = disagreements(comparison)
                return list(zip(png_copies([image for image, _ in items]), [caption for _, caption in items]))

            disagree.click(disagreement_files, outputs=gallery, api_name="compare_disagreements",
                           concurrency_id=HEAVY_QUEUE)


TEACH_ROWS = teaching.MAX_CLASSES
MAX_CLASSIFY_MANY = 200


def open_uploads(paths: list[str], limit: int, side: int) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """(file name, image) of each uploaded file that decodes, and a line naming each that does not."""
    if len(paths) > limit:
        raise gr.Error(f"Give at most {limit} images at once; {len(paths)} were given.", print_exception=False)
    opened, skipped = [], []
    for path in paths:
        name = Path(str(path)).name[:80]
        try:
            opened.append((name, uploaded_image(path, side)))
        except gr.Error as error:
            skipped.append(f"{name}: {error.message}")
    return opened, skipped


def _paths(value) -> list[str]:
    """File paths from a gr.File (multiple) or an interactive gr.Gallery value."""
    items = value or []
    return [item[0] if isinstance(item, (tuple, list)) else item.get("path") if isinstance(item, dict) else item
            for item in items]


def teach_summary_markdown(summary: dict) -> str:
    names = ", ".join(text(name) for name in summary["classes"])
    lines = [f"### Taught {len(summary['classes'])} classes ({names}) in {summary['seconds']:.1f} s"]
    if summary["not_cross_validated"]:
        lines.append(f"Accuracy on the taught images themselves: **{summary['taught_images_accuracy']:.1%}**, "
                     f"{text(summary['not_cross_validated'])}. Give each class 2 images or more to see a "
                     "cross-validated score.")
    else:
        lines.append(f"Cross-validated accuracy ({summary['folds']} folds: each image predicted by a head fitted "
                     f"without it): **{summary['cross_validated_accuracy']:.1%}**, against "
                     f"{summary['class_mean_accuracy']:.1%} for the class means alone and {summary['chance']:.1%} by "
                     "always guessing the largest class.")
    if summary["not_calibrated"]:
        lines.append(f"Probabilities: {text(summary['not_calibrated'])}.")
    if summary["skipped"]:
        lines.append("Left out: " + "; ".join(text(line) for line in summary["skipped"][:20])
                     + ("; …" if len(summary["skipped"]) > 20 else "") + ".")
    return "\n\n".join(lines)


def confusion_figure(summary: dict) -> Image.Image:
    title = "Confusion matrix on the taught images" if summary["not_cross_validated"] else \
        "Cross-validated confusion matrix"
    return to_image(confusion_matrix_figure(summary["confusion_matrix"], summary["classes"], title))


def class_name_of_row(row: int, value: object) -> str:
    """A Teach row's class name, its spaces collapsed; a gr.Error when it is blank."""
    name = " ".join(str(value or "").split())
    if not name:
        raise gr.Error(f"Name class {row + 1}.", print_exception=False)
    if len(name) > teaching.MAX_NAME_LENGTH:
        raise gr.Error(f"Class {row + 1}'s name is longer than {teaching.MAX_NAME_LENGTH} characters.",
                       print_exception=False)
    return name


def files_by_class(paths: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """/teach's files grouped by the class their names start with (cat_01.png: cat), at most MAX_PER_CLASS each;
    a line naming each file left out and why."""
    grouped: dict[str, list[str]] = {}
    skipped: list[str] = []
    for path in paths:
        name = Path(str(path)).name[:80]
        try:
            members = grouped.setdefault(teaching.class_of(name), [])
        except ValueError as error:
            skipped.append(f"{name}: {error}")
            continue
        if len(members) >= teaching.MAX_PER_CLASS:
            skipped.append(f"{name}: its class already has {teaching.MAX_PER_CLASS} images, the most taught")
            continue
        members.append(path)
    return grouped, skipped


def operator_token_allowed(demo: gr.Blocks) -> bool:
    """Whether a push without the visitor's own sign-in may use the server's HF_TOKEN: only where the operator set
    PUSH_WITH_SERVER_TOKEN=1 and the server answers this machine alone (loopback, no share link, not a Space)."""
    loopback = str(getattr(demo, "server_name", None) or "") in ("127.0.0.1", "localhost", "::1")
    return (os.environ.get(PUSH_WITH_SERVER_TOKEN) == "1" and loopback and not getattr(demo, "share", False)
            and not ON_SPACE)


def add_teach_tab(loaded: LoadedModel, sample: TestSample | None, demo: gr.Blocks) -> None:
    """The Teach tab: a visitor's own classes on the served backbone, in seconds; the result is theirs alone."""
    side = upload_side(loaded)

    def forget(taught: teaching.TaughtModel | None) -> None:  # a session ended, or an hour passed
        if taught is not None:
            storage().remove(taught.entry)

    def run_teach(examples: dict[str, list[Image.Image]], skipped: list[str], previous, progress) -> tuple:
        try:
            taught = teaching.teach(loaded, examples, skipped, lambda fraction, what: progress(fraction, desc=what))
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from error
        forget(previous)  # re-teaching replaces the session's earlier model
        return taught, taught.summary, str(taught.archive)

    def teach_from_files(files, previous=None, progress=gr.Progress()):
        """/teach: files named CLASS_anything.png; returns the summary, the zip of the model folder, the state."""
        paths = _paths(files)
        if len(paths) > teaching.MAX_TEACH_IMAGES:
            raise gr.Error(f"Teach at most {teaching.MAX_TEACH_IMAGES} images at once; {len(paths)} were given.",
                           print_exception=False)
        grouped, skipped = files_by_class(paths)
        examples: dict[str, list[Image.Image]] = {}
        for name, members in grouped.items():
            opened, not_opened = open_uploads(members, teaching.MAX_PER_CLASS, side)  # a broken file leaves its class
            examples[name] = [image for _, image in opened]
            skipped += not_opened
        taught, summary, archive = run_teach(examples, skipped, previous, progress)
        return summary, archive, taught

    def teach_from_rows(count: int, previous, *values, progress=gr.Progress()):
        examples: dict[str, list[Image.Image]] = {}
        skipped: list[str] = []
        for row in range(int(count)):
            name_value, gallery, cifar_class, cifar_count = values[4 * row:4 * row + 4]
            name = class_name_of_row(row, name_value)
            if name in examples:
                raise gr.Error(f"Classes {list(examples).index(name) + 1} and {row + 1} are both named {name!r}; give "
                               "each class its own name.", print_exception=False)
            opened, row_skipped = open_uploads(_paths(gallery), teaching.MAX_PER_CLASS, side)
            skipped += row_skipped
            images = [image for _, image in opened]
            if sample is not None and cifar_class in sample.class_names and cifar_count:
                members = torch.nonzero(sample.labels == sample.class_names.index(cifar_class)).flatten()
                wanted = min(max(0, int(cifar_count)), len(members))
                room = teaching.MAX_PER_CLASS - len(images)
                if wanted > room:
                    skipped.append(f"{name}: {wanted - room} of the {wanted} CIFAR-10 images asked for, past the "
                                   f"{teaching.MAX_PER_CLASS} a class is taught")
                images += [sample.image(index) for index in members[:max(0, min(wanted, room))].tolist()]
            examples[name] = images
        taught, summary, archive = run_teach(examples, skipped, previous, progress)
        return summary, archive, taught, teach_summary_markdown(summary), confusion_figure(summary)

    def classify_taught(taught: teaching.TaughtModel | None, payload):
        if taught is None:
            raise gr.Error("Teach some classes first.", print_exception=False)
        image = uploaded_image(payload, side)
        probabilities = teaching.taught_probabilities(loaded, taught, image)
        top = top_classes(probabilities, 1)
        with teaching.taught_head(loaded, taught) as view:  # the shared model wears the taught head, under its lock
            heatmap = heatmap_overlays(view, image, top)[0]
        return probabilities, heatmap

    def classify_many(taught: teaching.TaughtModel | None, files):
        """/classify_many: one row per image (file, top 3 with probabilities), the least sure first, and a CSV.
        predict.classify_files, as `python -m tl_space.predict` runs it: a request holds one batch decoded at a time."""
        paths = _paths(files)
        if len(paths) > MAX_CLASSIFY_MANY:
            raise gr.Error(f"Give at most {MAX_CLASSIFY_MANY} images at once; {len(paths)} were given.",
                           print_exception=False)
        def probabilities_of(images):
            if taught is None:
                return batch_probabilities(loaded, images)
            return teaching.taught_batch_probabilities(loaded, taught, images)
        class_names = loaded.label_names if taught is None else taught.class_names
        predictions, skipped = classify_files(((Path(str(path)).name[:80], path) for path in paths), probabilities_of,
                                              class_names, side, top_k=3, batch_size=MANY_BATCH_SIZE)
        rows = [[prediction.name, *[f"{label} ({probability:.1%})" for label, probability in prediction.ranked],
                 prediction.confidence] for prediction in sorted(predictions, key=lambda found: found.confidence)]
        rows += [[line, "", "", "", None] for line in skipped]
        entry = storage().new_entry("table-")
        with open(entry / "predictions.csv", "w", newline="") as file:
            csv.writer(file).writerows([MANY_HEADERS, *rows])
        storage().add(entry)
        return rows, str(entry / "predictions.csv")

    with gr.Tab("Teach"):
        gr.Markdown("Teach this model your own classes: name 2 to 10 of them and give each 1 to 50 images. The "
                    f"backbone of {code(loaded.name)} turns them into features, and a new head learns them in seconds. "
                    "What you teach stays in your session and is deleted after an hour.")
        count = gr.Slider(teaching.MIN_CLASSES, teaching.MAX_CLASSES, value=3, step=1, label="Classes")
        rows, inputs = [], []
        for row in range(TEACH_ROWS):
            with gr.Row(visible=row < 3) as row_block:
                inputs.append(gr.Textbox(label=f"Class {row + 1}", placeholder="its name", scale=1))
                inputs.append(gr.Gallery(label="Its images (upload, paste or webcam)", type="filepath",
                                         interactive=True, sources=["upload", "webcam", "clipboard"], columns=6,
                                         height=150, scale=3))
                choices = sample.class_names if sample is not None else []
                inputs.append(gr.Dropdown([""] + choices, value="", label="or CIFAR-10 test images of class",
                                          visible=sample is not None, scale=1))
                inputs.append(gr.Number(10, minimum=1, maximum=teaching.MAX_PER_CLASS, precision=0, label="how many",
                                        visible=sample is not None, scale=1))
            rows.append(row_block)
        count.change(lambda value: [gr.update(visible=row < int(value)) for row in range(TEACH_ROWS)], count, rows,
                     api_name=False)
        teach_button = gr.Button("Teach", variant="primary")
        taught = gr.State(None, time_to_live=3600, delete_callback=forget)
        with gr.Row():
            summary_text = gr.Markdown()
            confusion = gr.Image(label="Cross-validated confusion matrix", type="pil", interactive=False, height=320)
        summary = gr.JSON(visible=False)
        archive = gr.File(label="The taught model folder (zip): MODEL_ID=folder python app.py, or "
                                "timm.create_model('local-dir:folder')", interactive=False)
        outputs = [summary, archive, taught, summary_text, confusion]
        teach_button.click(teach_from_rows, inputs=[count, taught, *inputs], outputs=outputs, api_name=False,
                           concurrency_id=HEAVY_QUEUE)
        teach_files = gr.File(file_count="multiple", visible=False)
        gr.Button(visible=False).click(teach_from_files, inputs=[teach_files, taught], outputs=outputs[:3],
                                       api_name="teach", concurrency_id=HEAVY_QUEUE)
        with gr.Row():
            # The visitor's own account. Off a Space, Gradio's login would stand in the server's own token for
            # every visitor, so there is none: a push there needs PUSH_WITH_SERVER_TOKEN=1 on a loopback server.
            if ON_SPACE:
                gr.LoginButton()
            repo_name = gr.Textbox(label="Repo name in your account", placeholder="my-taught-classes")
            push_button = gr.Button("Push to the Hub")
            pushed = gr.Markdown()

        def push(taught_model: teaching.TaughtModel | None, name: str, oauth_token: gr.OAuthToken | None = None):
            if taught_model is None:
                raise gr.Error("Teach some classes first.", print_exception=False)
            try:
                repo_id = teaching.push_taught(taught_model.archive, name, oauth_token.token if oauth_token else None,
                                               operator_token_allowed(demo))
            except UserError as error:
                raise gr.Error(str(error), print_exception=False) from error
            except Exception as error:  # the Hub's own errors: a sentence, never its text
                logger.warning("push of a taught model failed: %s", type(error).__name__)
                raise gr.Error("The push failed; try again later.", print_exception=False) from error
            return f"Pushed to [{repo_id}](https://huggingface.co/{repo_id})."

        push_button.click(push, inputs=[taught, repo_name], outputs=pushed, api_name=False)
        with gr.Row():
            try_image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Try the taught model")
            with gr.Column():
                try_label = gr.Label(num_top_classes=5, label="Top 5 of your classes")
                try_cam = gr.Image(label="Grad-CAM of its top class", type="pil", interactive=False)
        gr.Button("Classify with the taught model").click(
            classify_taught, inputs=[taught, try_image], outputs=[try_label, try_cam], api_name="classify_taught",
            preprocess=False, concurrency_id=MODEL_QUEUE)
        with gr.Accordion("Classify many images at once", open=False):
            many = gr.File(file_count="multiple", label=f"Up to {MAX_CLASSIFY_MANY} images", file_types=["image"])
            many_button = gr.Button("Classify them (with the taught model, once there is one)")
            table = gr.Dataframe(headers=MANY_HEADERS, label="The least sure first", interactive=False)
            table_file = gr.File(label="The table as CSV", interactive=False)
            many_button.click(classify_many, inputs=[taught, many], outputs=[table, table_file],
                              api_name="classify_many", concurrency_id=HEAVY_QUEUE)


MANY_HEADERS = ["file", "top 1", "top 2", "top 3", "top-1 probability"]
CLASSIFY_IMAGE_HEIGHT = 320  # px: the Classify tab's input box, empty or holding any image
MANY_BATCH_SIZE = 8  # images decoded and classified together by /classify_many
# The operator's opt-in to pushes with the server's own HF_TOKEN, honoured on a loopback-only server.
PUSH_WITH_SERVER_TOKEN = "PUSH_WITH_SERVER_TOKEN"
ON_SPACE = get_space() is not None
