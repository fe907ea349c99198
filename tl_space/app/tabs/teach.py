"""The Teach tab: a visitor's own classes on the served backbone, in seconds; the result is theirs alone."""

from __future__ import annotations

import os

import gradio as gr
from gradio.utils import get_space
from PIL import Image

from tl_space.app import teach as teaching
from tl_space.app.compare import TestSample
from tl_space.app.served import ServedModel, top_classes
from tl_space.app.storage import storage
from tl_space.app.tabs import HEAVY_QUEUE, MODEL_QUEUE
from tl_space.app.uploads import file_name, file_paths, open_uploads, refuse, uploaded_image, visitor_message
from tl_space.figures import to_image
from tl_space.folder.plots import confusion_matrix_figure
from tl_space.markdown import code, text
from tl_space.predict import classify_files

TEACH_ROWS = teaching.MAX_CLASSES
# The operator's opt-in to pushes with the server's own HF_TOKEN, honoured on a loopback-only server.
PUSH_WITH_SERVER_TOKEN = "PUSH_WITH_SERVER_TOKEN"
ON_SPACE = get_space() is not None


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


def operator_token_allowed(demo: gr.Blocks) -> bool:
    """Whether a push without the visitor's own sign-in may use the server's HF_TOKEN: only where the operator set
    PUSH_WITH_SERVER_TOKEN=1 and the server answers this machine alone (loopback, no share link, not a Space)."""
    loopback = str(getattr(demo, "server_name", None) or "") in ("127.0.0.1", "localhost", "::1")
    return (os.environ.get(PUSH_WITH_SERVER_TOKEN) == "1" and loopback and not getattr(demo, "share", False)
            and not ON_SPACE)


def forget(taught: teaching.TaughtModel | None) -> None:
    """A session ended, an hour passed, or the visitor taught again: the taught model's files go."""
    if taught is not None:
        storage().remove(taught.entry)


def build(served: ServedModel, sample: TestSample | None, demo: gr.Blocks) -> None:
    side = served.upload_side

    def run_teach(examples: dict[str, list[Image.Image]], skipped: list[str], previous, progress) -> tuple:
        taught = teaching.teach(served, examples, skipped, lambda fraction, what: progress(fraction, desc=what))
        forget(previous)  # re-teaching replaces the session's earlier model
        return taught, taught.summary, str(taught.archive)

    @visitor_message
    def teach_from_files(files, previous=None, progress=gr.Progress()):
        """/teach: files named CLASS_anything.png; returns the summary, the zip of the model folder, the state."""
        paths = file_paths(files)
        if len(paths) > teaching.MAX_TEACH_IMAGES:
            raise refuse(f"Teach at most {teaching.MAX_TEACH_IMAGES} images at once; {len(paths)} were given.")
        grouped, skipped = teaching.files_by_class([(file_name(path), path) for path in paths])
        examples: dict[str, list[Image.Image]] = {}
        for name, members in grouped.items():
            opened, not_opened = open_uploads(members, teaching.MAX_PER_CLASS, side)  # a broken file leaves its class
            examples[name] = [image for _, image in opened]
            skipped += not_opened
        taught, summary, archive = run_teach(examples, skipped, previous, progress)
        return summary, archive, taught

    @visitor_message
    def teach_from_rows(count: int, previous, *values, progress=gr.Progress()):
        examples: dict[str, list[Image.Image]] = {}
        skipped: list[str] = []
        for row in range(int(count)):
            name_value, gallery, cifar_class, cifar_count = values[4 * row:4 * row + 4]
            name = teaching.class_name_of_row(row, name_value)
            if name in examples:
                raise refuse(f"Classes {list(examples).index(name) + 1} and {row + 1} are both named {name!r}; give "
                             "each class its own name.")
            opened, row_skipped = open_uploads(file_paths(gallery), teaching.MAX_PER_CLASS, side)
            images = [image for _, image in opened]
            picked, not_picked = teaching.sample_images(sample, cifar_class, cifar_count,
                                                        teaching.MAX_PER_CLASS - len(images), name)
            examples[name] = images + picked
            skipped += row_skipped + not_picked
        taught, summary, archive = run_teach(examples, skipped, previous, progress)
        return summary, archive, taught, teach_summary_markdown(summary), confusion_figure(summary)

    @visitor_message
    def classify_taught(taught: teaching.TaughtModel | None, payload):
        if taught is None:
            raise refuse("Teach some classes first.")
        image = uploaded_image(payload, side)
        probabilities = teaching.taught_probabilities(served, taught, image)
        return probabilities, teaching.taught_heatmaps(served, taught, image, top_classes(probabilities, 1))[0]

    @visitor_message
    def classify_many(taught: teaching.TaughtModel | None, files):
        """/classify_many: one row per image (file, top 3 with probabilities), the least sure first, and a CSV.
        predict.classify_files, as `python -m tl_space.predict` runs it: a request holds one batch decoded at a time."""
        paths = file_paths(files)
        if len(paths) > teaching.MAX_CLASSIFY_MANY:
            raise refuse(f"Give at most {teaching.MAX_CLASSIFY_MANY} images at once; {len(paths)} were given.")

        def probabilities_of(images):
            if taught is None:
                return served.probabilities(images)
            return teaching.taught_batch_probabilities(served, taught, images)
        class_names = served.label_names if taught is None else taught.class_names
        predictions, skipped = classify_files(((file_name(path), path) for path in paths), probabilities_of,
                                              class_names, side, top_k=3, batch_size=teaching.MANY_BATCH_SIZE)
        rows, table = teaching.predictions_table(predictions, skipped)
        return rows, str(table)

    @visitor_message
    def push(taught_model: teaching.TaughtModel | None, name: str, oauth_token: gr.OAuthToken | None = None):
        if taught_model is None:
            raise refuse("Teach some classes first.")
        repo_id = teaching.push_taught(taught_model.archive, name, oauth_token.token if oauth_token else None,
                                       operator_token_allowed(demo))
        return f"Pushed to [{repo_id}](https://huggingface.co/{repo_id})."

    with gr.Tab("Teach"):
        gr.Markdown("Teach this model your own classes: name 2 to 10 of them and give each 1 to 50 images. The "
                    f"backbone of {code(served.name)} turns them into features, and a new head learns them in seconds. "
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
            many = gr.File(file_count="multiple", label=f"Up to {teaching.MAX_CLASSIFY_MANY} images",
                           file_types=["image"])
            many_button = gr.Button("Classify them (with the taught model, once there is one)")
            table = gr.Dataframe(headers=teaching.MANY_HEADERS, label="The least sure first", interactive=False)
            table_file = gr.File(label="The table as CSV", interactive=False)
            many_button.click(classify_many, inputs=[taught, many], outputs=[table, table_file],
                              api_name="classify_many", concurrency_id=HEAVY_QUEUE)
