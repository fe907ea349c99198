"""Figures drawn with matplotlib's object API (no pyplot, no global backend): saved as PNG files or PIL images."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from PIL import Image

from tl_space import atomic

DPI = 100
# Class names and settings come from visitors and folders: "$x$" is text, never mathtext to parse (a name such as
# "$\\foo$" would raise). Every Text is created by this project's figures, none of which uses mathtext.
matplotlib.rcParams["text.parse_math"] = False


def new_figure(width: float, height: float) -> Figure:
    """A figure of that size in inches, drawn by the Agg canvas: safe in any thread, on machines with no display."""
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Lay out and write the figure as a PNG, replacing path whole."""
    figure.tight_layout()
    return atomic.write_file(Path(path), lambda staging: figure.savefig(staging, format="png", dpi=DPI))


def to_image(figure: Figure) -> Image.Image:
    """The laid-out figure as an RGB PIL image."""
    figure.tight_layout()
    canvas = figure.canvas
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def log_x(axes) -> None:
    """A log-scale x axis whose ticks read as plain numbers (matplotlib's default labels are mathtext, which this
    project turns off)."""
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))


def colour(index: int):
    """The index-th colour of the tab10 palette, so a strategy keeps its colour in every plot."""
    return colormaps["tab10"](index % 10)
