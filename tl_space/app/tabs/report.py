"""The Training report tab: the run's summary and settings from metrics.json, per-class scores, and its plots."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tl_space.app.served import ServedModel
from tl_space.folder.files import REPORT_PLOTS
from tl_space.folder.summary import PER_CLASS_HEADERS, headline, per_class_rows, run_summary
from tl_space.markdown import code, text
from tl_space.settings import REPORTING_SETTINGS


def page_header(served: ServedModel) -> str:
    """Which model this page serves: its name, and from its metrics.json (the card's own summary) the backbone, the
    strategy, the dataset, the test accuracy and its Hub repo, a link, when it has one."""
    if not served.metrics:
        return f"Model {code(served.name)} (its folder has no metrics.json, so no report)."
    hub_repo_id = served.source.removeprefix("hf-hub:") if not Path(served.source).expanduser().is_dir() else (
        served.metrics["settings"].get("hub_model_id"))
    return f"Model {code(served.name)}: {headline(served.metrics, hub_repo_id, code, text)}."


def report_markdown(served: ServedModel) -> str:
    """Headline numbers and the run's settings, from metrics.json; every value from the folder escaped."""
    metrics = served.metrics
    if not metrics:
        return f"No `metrics.json` in {code(served.name)}: this folder has no training report."
    lines = ["\n\n".join(run_summary(metrics, code, text))]
    settings = metrics["settings"]
    lines.append("\n| setting | value |\n|---|---|")
    lines += [f"| {text(key)} | {text(value)} |" for key, value in list(settings.items())[:60]
              if value is not None and key not in REPORTING_SETTINGS]
    return "\n".join(lines)


def build(served: ServedModel) -> None:
    with gr.Tab("Training report"):
        gr.Markdown(report_markdown(served))
        if served.metrics:
            per_class = [[text(name), *values] for name, *values in per_class_rows(served.metrics["test"])]
            gr.Dataframe(per_class, headers=PER_CLASS_HEADERS, interactive=False,
                         label="Per class: accuracy (recall), precision and F1 on the test split")
        for file, title in REPORT_PLOTS.items():
            if file in served.plots:
                gr.Image(served.plots[file], label=title, interactive=False, type="pil", format="png")
