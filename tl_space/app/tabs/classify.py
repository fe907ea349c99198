"""The Classify tab: an upload's top 5, where the model looked (Grad-CAM), its feature maps, and the examples."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
from PIL import Image

from tl_space.app.served import ServedModel, top_classes
from tl_space.app.tabs import HEAVY_QUEUE, MODEL_QUEUE
from tl_space.app.uploads import uploaded_image, uploaded_path, visitor_message

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CLASSIFY_IMAGE_HEIGHT = 320  # px: the input box, empty or holding any image


def classify(served: ServedModel, payload: str | dict | None) -> tuple[dict[str, float], str]:
    """Top classes of an uploaded image and how long the model took, or a gr.Error naming what is wrong.

    Takes gr.Image's raw value (the event runs with preprocess=False), so that our decoding, not Gradio's,
    meets broken files and can say what is wrong with them.
    """
    image = uploaded_image(payload, served.upload_side)
    started = time.perf_counter()
    probabilities = served.class_probabilities(image)
    milliseconds = (time.perf_counter() - started) * 1000
    width, height = image.info.get("source_size", image.size)
    return probabilities, f"Predicted in {milliseconds:.0f} ms on {width}x{height} px."


@visitor_message
def explain(served: ServedModel, payload: str | dict | None, class_name: str) -> Image.Image:
    """The upload with the Grad-CAM heatmap of class_name over it."""
    image = uploaded_image(payload, served.upload_side)
    return served.heatmaps(image, [class_name if isinstance(class_name, str) else str(class_name)])[0]


@visitor_message
def refresh_cam(served: ServedModel, payload: str | dict | None, show: bool):
    """With the toggle on: the top class's heatmap, and the top 5 to pick another from."""
    if not show or uploaded_path(payload) is None:
        return gr.update(visible=False), gr.update(visible=False, value=None)
    image = uploaded_image(payload, served.upload_side)
    top5 = top_classes(served.class_probabilities(image))
    overlay = served.heatmaps(image, top5[:1])[0]
    return gr.update(choices=top5, value=top5[0], visible=True), gr.update(value=overlay, visible=True)


@visitor_message
def feature_maps(served: ServedModel, payload: str | dict | None, pretrained_file: str | None):
    return served.feature_maps(uploaded_image(payload, served.upload_side), pretrained_file)


def example_images(examples_dir: Path | None) -> list[str]:
    if examples_dir is None or not examples_dir.is_dir():
        return []
    return sorted(str(path) for path in examples_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)


def build(served: ServedModel, examples_dir: Path | None, pretrained_file: str | None) -> None:
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
        predict = lambda payload: classify(served, payload)  # noqa: E731
        cam = lambda payload, show: refresh_cam(served, payload, show)  # noqa: E731
        model_event = dict(preprocess=False, concurrency_id=MODEL_QUEUE)
        submit.click(predict, inputs=image, outputs=[label, timing], api_name="classify", **model_event).then(
            cam, inputs=[image, show_cam], outputs=[cam_class, cam_image], api_name=False, **model_event)
        show_cam.change(cam, inputs=[image, show_cam], outputs=[cam_class, cam_image], api_name=False, **model_event)
        cam_class.input(lambda payload, name: explain(served, payload, name), inputs=[image, cam_class],
                        outputs=cam_image, api_name="explain", **model_event)
        with gr.Accordion("Feature maps: what the early, middle and last stages respond to", open=False):
            maps_button = gr.Button("Show the feature maps of this image")
            maps_note = gr.Markdown()
            maps_image = gr.Image(label="Most active channels per stage", interactive=False, type="pil",
                                  elem_id="feature-maps")
        maps_button.click(lambda payload: feature_maps(served, payload, pretrained_file), inputs=image,
                          outputs=[maps_image, maps_note], api_name="feature_maps", preprocess=False,
                          concurrency_id=HEAVY_QUEUE)
        examples = example_images(examples_dir)
        if examples:
            gr.Examples(examples=examples, inputs=image, outputs=[label, timing], fn=predict,
                        cache_examples=True, cache_mode="lazy", preprocess=False, label="Examples: one per class")
