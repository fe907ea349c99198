"""The Gradio page: the tabs composed around one served model, and the queue's settings."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tl_space.app.compare import Comparison, TestSample
from tl_space.app.limits import limit_waiting_per_session, refuse_files_not_uploaded
from tl_space.app.served import ServedModel
from tl_space.app.tabs import classify, compare, mistakes, report, study, teach
from tl_space.markdown import text

# Requests one session may have waiting; past it, a sentence instead of a place in the queue.
MAX_WAITING_PER_SESSION = 2
# Files Gradio stored for visitors (uploads, cached examples) are deleted after an hour, checked every 10 minutes.
DELETE_CACHE = (600, 3600)
# Requests waiting at most: past this, a visitor is told the Space is busy instead of waiting minutes.
QUEUE_MAX_SIZE = 64


def build_error_page(message: str) -> gr.Blocks:
    """What a visitor sees when the model could not be loaded: the reason and how to fix it."""
    with gr.Blocks(title="tl-space: model not loaded") as demo:
        gr.Markdown(f"## The model could not be loaded\n\n{message}")
    return demo


def build_demo(served: ServedModel, examples_dir: Path | None = None, pretrained_file: str | None = None,
               queue_max_size: int = QUEUE_MAX_SIZE, comparison: Comparison | None = None,
               teach_sample: TestSample | None = None) -> gr.Blocks:
    """The whole page for one served model, its queue bounded by queue_max_size. pretrained_file: the operator's
    local copy of the backbone's weights, for the feature maps' comparison where the Hub is out of reach;
    comparison: runs to show side by side in a Compare tab; teach_sample: labelled images the Teach tab offers."""
    classes = ", ".join(text(name) for name in served.label_names[:20]) + ("…" if len(served.label_names) > 20 else "")
    with gr.Blocks(title=f"tl-space: {served.name}", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"# What does this classifier see?\n{report.page_header(served)}\n\nIt tells apart "
                    f"{len(served.label_names)} classes: {classes}.")
        classify.build(served, examples_dir, pretrained_file)
        mistakes.build(served)
        report.build(served)
        study.build(served)
        teach.build(served, teach_sample or (comparison.sample if comparison is not None else None), demo)
        if comparison is not None:
            compare.build(comparison, served)
    demo.queue(default_concurrency_limit=1, max_size=queue_max_size)
    limit_waiting_per_session(demo, MAX_WAITING_PER_SESSION)
    refuse_files_not_uploaded(demo)
    return demo
