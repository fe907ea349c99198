"""The "Where it fails" tab: the test split's most confident mistakes, filtered by class, each with its Grad-CAM."""

from __future__ import annotations

import gradio as gr

from tl_space.app.served import ServedModel
from tl_space.app.storage import png_copies
from tl_space.app.tabs import MODEL_QUEUE
from tl_space.app.uploads import refuse, visitor_message

ALL = "all classes"


def caption(record: dict) -> str:
    return f"{record['true_label']} → {record['predicted_label']} ({record['confidence']:.0%})"


def filter_mistakes(served: ServedModel, true_label: str, predicted_label: str) -> list[int]:
    """Indices of the mistakes of true class true_label predicted as predicted_label (ALL: any)."""
    return [index for index, record in enumerate(served.misclassified)
            if true_label in (ALL, record["true_label"]) and predicted_label in (ALL, record["predicted_label"])]


def gallery_items(served: ServedModel, files: list[str], indices: list[int]) -> list[tuple[str, str]]:
    """The mistakes' images as our own decoded copies (files[i] of served.mistake_images[i]): never a path into the
    model folder."""
    return [(files[index], caption(served.misclassified[index])) for index in indices]


def top5_of(record: dict) -> dict[str, float]:
    return {entry["label"]: entry["probability"] for entry in record["top5"]}


@visitor_message
def selected_mistake(served: ServedModel, indices: list[int], position: object):
    """The top 5 of the picked mistake and its Grad-CAM for the true and the predicted class."""
    if not isinstance(position, int) or not 0 <= position < len(indices):
        raise refuse("Pick one of the images shown.")
    index = indices[position]
    record = served.misclassified[index]
    classes = [record["true_label"], record["predicted_label"]]
    overlays = served.heatmaps(served.mistake_images[index], classes)
    return top5_of(record), [(overlays[0], f"true: {classes[0]}"), (overlays[1], f"predicted: {classes[1]}")]


def build(served: ServedModel) -> None:
    with gr.Tab("Where it fails"):
        gr.Markdown(f"The {len(served.misclassified)} most confident mistakes on the test split. "
                    "Pick one to see what the model thought.")
        with gr.Row():
            true_filter = gr.Dropdown([ALL, *served.label_names], value=ALL, label="True class")
            predicted_filter = gr.Dropdown([ALL, *served.label_names], value=ALL, label="Predicted class")
        everything = list(range(len(served.misclassified)))
        mistake_files = png_copies(served.mistake_images)
        shown = gr.State(everything)  # indices into served.misclassified, in gallery order
        with gr.Row():
            gallery = gr.Gallery(gallery_items(served, mistake_files, everything), label="Misclassified test images",
                                 columns=8, height=480, object_fit="contain", allow_preview=True, scale=3,
                                 format="png", elem_id="mistakes-gallery")
            with gr.Column(scale=1):
                selected = gr.Label(num_top_classes=5, label="Top 5 of the selected image")
                mistake_cams = gr.Gallery(label="Grad-CAM: true class | predicted class", columns=2, height=260,
                                          object_fit="contain", elem_id="mistake-cams")

        def refilter(true_label: str, predicted_label: str):
            indices = filter_mistakes(served, true_label, predicted_label)
            return gallery_items(served, mistake_files, indices), indices, None, None

        gr.on([true_filter.change, predicted_filter.change], refilter, inputs=[true_filter, predicted_filter],
              outputs=[gallery, shown, selected, mistake_cams], api_name="filter_mistakes")

        def show_selected(indices: list[int], event: gr.SelectData):
            return selected_mistake(served, indices, event.index)

        gallery.select(show_selected, inputs=shown, outputs=[selected, mistake_cams], api_name=False,
                       concurrency_id=MODEL_QUEUE)
