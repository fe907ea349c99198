"""The Study tab: when the model comes with a study, its question, findings, table and plots."""

from __future__ import annotations

import gradio as gr

from tl_space.app.served import ServedModel
from tl_space.folder.files import STUDY_PLOTS
from tl_space.folder.read import public_plots
from tl_space.folder.study import load_study
from tl_space.markdown import code, text
from tl_space.study.report import budget_text, study_overview, summarize

STUDY_HEADERS = ["budget", "strategy", "model", "shots per class", "images per class", "runs", "test accuracy (%)",
                 "spread (± %)", "wall seconds", "trainable parameters"]


def study_table(summary: list[dict]) -> list[list]:
    # A Dataframe's str cells are shown as text, not Markdown: no escaping, only a bound on the length.
    return [[budget_text(entry["minutes"]), entry["strategy"],
             f"{str(entry.get('model') or '?')[:100]} ({str(entry.get('image_size') or '?')[:8]} px)", entry["shots"],
             round(entry["images_per_class"]), entry["runs"],
             round(entry["mean_test_accuracy"] * 100, 2), round(entry["std_test_accuracy"] * 100, 2),
             round(entry["mean_wall_seconds"]), entry["trainable_parameters"]] for entry in summary]


def build(served: ServedModel) -> None:
    """The tab, when the model comes with a study whose study.json can be shown."""
    study = load_study(served.study_folder)
    if not study or not study["rows"]:
        return
    served_run = served.folder.relative_to(served.study_folder) if served.folder.is_relative_to(
        served.study_folder) else served.name
    summary = summarize(study["rows"])  # from the rows, so the tab matches them whatever wrote study.json
    plots = public_plots(served.study_folder, STUDY_PLOTS, "the study")
    with gr.Tab("Study"):
        gr.Markdown("\n".join(["### The study", *study_overview(study, summary, str(served_run), code, text)]))
        gr.Dataframe(study_table(summary), headers=STUDY_HEADERS, label="Every strategy at every shot size and budget",
                     interactive=False)
        for file, title in STUDY_PLOTS.items():
            if file in plots:
                gr.Image(plots[file], label=title, interactive=False, type="pil", format="png",
                         elem_classes="study-plot")
