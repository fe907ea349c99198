"""The Compare tab: one upload through every compared run, and the sample images they disagree on."""

from __future__ import annotations

import functools

import gradio as gr

from tl_space.app.compare import MAX_COMPARED, Comparison, disagreements
from tl_space.app.served import ServedModel, top_classes
from tl_space.app.storage import png_copies
from tl_space.app.tabs import HEAVY_QUEUE, MODEL_QUEUE
from tl_space.app.uploads import uploaded_image, visitor_message
from tl_space.markdown import code, text


@visitor_message
def compare_upload(comparison: Comparison, payload: str | dict | None) -> list:
    """Each compared run's top 5 for the upload, then each run's Grad-CAM of its own top class."""
    image = uploaded_image(payload, max(run.upload_side for run in comparison.runs))
    tops, heatmaps = [], []
    for run in comparison.runs:
        probabilities = run.class_probabilities(image)
        tops.append(probabilities)
        heatmaps.append(run.heatmaps(image, top_classes(probabilities, 1))[0])
    empty = MAX_COMPARED - len(comparison.runs)
    return tops + [None] * empty + heatmaps + [None] * empty


def build(comparison: Comparison, served: ServedModel) -> None:
    """The tab; it says whether the served model is one of the runs (the same metrics.json: the same run)."""
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
                with gr.Column(visible=index < len(comparison.runs)):
                    labels.append(gr.Label(num_top_classes=5, label=f"{index + 1}: top 5"))
                    heatmaps.append(gr.Image(label=f"{index + 1}: Grad-CAM of its top class", type="pil",
                                             interactive=False, elem_classes="compare-cam"))
        submit.click(lambda payload: compare_upload(comparison, payload), inputs=image, outputs=labels + heatmaps,
                     api_name="compare", preprocess=False, concurrency_id=MODEL_QUEUE)
        if comparison.sample is None:
            return
        disagree = gr.Button(f"Show the test images they disagree on (of {len(comparison.sample.labels)})")
        gallery = gr.Gallery(label="One run right, another wrong: true class — each run's prediction", columns=8,
                             height=420, object_fit="contain", elem_id="compare-gallery")

        @functools.cache  # computed on first use (every run over the sample), then served as files written once
        def disagreement_files() -> list[tuple[str, str]]:
            items = disagreements(comparison)
            return list(zip(png_copies([image for image, _ in items]), [caption for _, caption in items]))

        disagree.click(disagreement_files, outputs=gallery, api_name="compare_disagreements",
                       concurrency_id=HEAVY_QUEUE)
