"""The model folder's plots: training curves, confusion matrix, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tl_space.figures import new_figure, save_png


def plot_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy vs epoch, train and validation, with stage changes marked."""
    epochs = [entry["epoch"] for entry in history]
    figure = new_figure(10, 4)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, [entry[f"train_{metric}"] for entry in history], "o-", label="train")
        axes.plot(epochs, [entry[f"val_{metric}"] for entry in history], "o-", label="validation")
        for previous, entry in zip(history, history[1:]):
            if entry["stage"] != previous["stage"]:
                axes.axvline(entry["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
                axes.text(entry["epoch"] - 0.4, axes.get_ylim()[1], entry["stage"], va="top", fontsize=8, color="grey")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric.capitalize())
        axes.grid(alpha=0.3)
        axes.legend()
    accuracy_axes.set_ylim(0, 1)
    return save_png(figure, path)


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    return save_png(confusion_matrix_figure(matrix, class_names, "Confusion matrix (test)"), path)


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str) -> Figure:
    """Counts, rows = true class, columns = predicted class, labelled; cells annotated when they fit."""
    counts = np.asarray(matrix)
    size = max(5.0, 0.5 * len(class_names) + 2)
    figure = new_figure(size + 1, size)
    axes = figure.subplots()
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if len(class_names) <= 20:
        threshold = counts.max() / 2
        for row in ticks:
            for column in ticks:
                axes.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=7,
                          color="white" if counts[row, column] > threshold else "black")
    return figure


def plot_reliability(report: dict, path: Path) -> Path:
    """Accuracy vs confidence per bin, before and after temperature scaling, against the diagonal of perfect
    calibration (report: metrics.json's calibration section)."""
    figure = new_figure(10, 4.4)
    panels = figure.subplots(1, 2, sharey=True)
    titles = {"before": "Before (T = 1)", "after": f"After temperature scaling (T = {report['temperature']:.2f})"}
    for axes, name in zip(panels, ("before", "after")):
        table = report[f"reliability_{name}"]
        width = 1 / report["bins"]
        axes.bar([entry["low"] for entry in table], [entry["accuracy"] for entry in table], width=width, align="edge",
                 edgecolor="black", linewidth=0.5, label="accuracy")
        axes.bar([entry["low"] for entry in table], [entry["confidence"] - entry["accuracy"] for entry in table],
                 bottom=[entry["accuracy"] for entry in table], width=width, align="edge", color="tab:red", alpha=0.3,
                 label="gap to confidence")
        axes.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence of the top class")
        axes.set_title(f"{titles[name]}: ECE {report[f'test_ece_{name}']:.2%}", fontsize=10)
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("accuracy (test)")
    panels[0].legend(loc="upper left", fontsize=8)
    return save_png(figure, path)
