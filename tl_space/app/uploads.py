"""A visitor's uploads, untrusted: only files Gradio stored in its upload folder are opened, each decoded with bounds;
and the one way a visitor is told what went wrong."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from tl_space.app.limits import NOT_UPLOADED
from tl_space.errors import UserError
from tl_space.images import ImageError, open_image


def visitor_message(function: Callable) -> Callable:
    """An event handler whose UserError (an ImageError too) reaches the visitor as a gr.Error with its sentence, never
    a traceback."""
    @functools.wraps(function)
    def handler(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from error
    return handler


def refuse(message: str) -> gr.Error:
    """The error a visitor sees: one sentence, no traceback in the log."""
    return gr.Error(message, print_exception=False)


def uploaded_path(payload: str | dict | None) -> str | None:
    """The file behind gr.Image's raw (not preprocessed) value, if Gradio stored it in its upload folder; any other
    path (a forged API call naming a server file) is refused with a gr.Error that names no path."""
    path = payload.get("path") if isinstance(payload, dict) else payload
    if path is None:
        return None
    if not isinstance(path, str) or not Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        raise refuse(NOT_UPLOADED)
    return path


def uploaded_image(payload: str | dict | None, side: int) -> Image.Image:
    """The decoded upload (its centre square, reduced while decoded to under 2 * side px), or a gr.Error saying what
    is wrong with it."""
    path = uploaded_path(payload)
    if path is None:
        raise refuse("Upload an image first.")
    try:
        return open_image(path, side=side)
    except ImageError as error:
        raise refuse(str(error)) from error


def file_paths(value) -> list[str]:
    """File paths from a gr.File (multiple) or an interactive gr.Gallery value."""
    items = value or []
    return [item[0] if isinstance(item, (tuple, list)) else item.get("path") if isinstance(item, dict) else item
            for item in items]


def file_name(path: object) -> str:
    """An upload's own file name, shortened: what a visitor is shown of it."""
    return Path(str(path)).name[:80]


def open_uploads(paths: list[str], limit: int, side: int) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """(file name, image) of each uploaded file that decodes, and a line naming each that does not."""
    if len(paths) > limit:
        raise refuse(f"Give at most {limit} images at once; {len(paths)} were given.")
    opened, skipped = [], []
    for path in paths:
        name = file_name(path)
        try:
            opened.append((name, uploaded_image(path, side)))
        except gr.Error as error:
            skipped.append(f"{name}: {error.message}")
    return opened, skipped
