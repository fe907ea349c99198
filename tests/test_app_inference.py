"""Property-based: whatever a visitor uploads, the app's classify answers with probabilities over all classes or
a clear message, never an unhandled exception."""

import io
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import CLASS_NAMES, TINY_MODEL
from tl_space.app.served import ServedModel
from tl_space.transforms import Preprocessing
from tl_space.app.tabs.classify import classify

# Mode and the formats that can store it.
MODES = {"1": ("PNG", "BMP", "TIFF", "GIF"), "L": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
         "P": ("PNG", "BMP", "TIFF", "GIF"), "RGB": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
         "RGBA": ("PNG", "TIFF", "WEBP", "GIF"), "LA": ("PNG", "TIFF"), "I;16": ("PNG", "TIFF"), "I": ("PNG", "TIFF"),
         "F": ("TIFF",), "CMYK": ("JPEG", "TIFF"), "YCbCr": ("JPEG",)}
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def loaded() -> ServedModel:
    torch.manual_seed(0)
    model = timm.create_model(TINY_MODEL, num_classes=len(CLASS_NAMES)).eval()
    preprocessing = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    return ServedModel(model, CLASS_NAMES, preprocessing, {}, [], Path("."), "test")


def _check_answer(loaded: ServedModel, content: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".upload") as upload:
        upload.write(content)
        upload.flush()
        try:
            probabilities, message = classify(loaded, {"path": upload.name})
        except gr.Error as error:  # refused: must say why, in words
            assert len(str(error.message)) > 20 and "Traceback" not in str(error.message)
            return
    assert list(probabilities) == CLASS_NAMES  # every class, so the top 5 of them is the label shown
    values = np.array(list(probabilities.values()))
    assert np.isfinite(values).all() and (values >= 0).all() and values.sum() == pytest.approx(1, abs=1e-5)
    assert message.startswith("Predicted in")


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=4096))
def test_random_bytes_get_probabilities_or_a_clear_error(loaded, content):
    _check_answer(loaded, content)


@st.composite
def encoded_images(draw) -> bytes:
    mode = draw(st.sampled_from(sorted(MODES)))
    image_format = draw(st.sampled_from(MODES[mode]))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    image = Image.frombytes("RGBA", (width, height), pixels.tobytes())
    image = image.convert("RGB").convert(mode) if mode not in ("RGBA", "LA") else image.convert(mode)
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # 16-bit grey: mode I;16
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    content = buffer.getvalue()
    if draw(st.booleans()):  # half of them cut short, as an interrupted upload
        content = content[:draw(st.integers(0, len(content)))]
    return content


@PROPERTY_SETTINGS
@given(content=encoded_images())
def test_random_images_of_any_size_mode_and_format_get_probabilities_or_a_clear_error(loaded, content):
    _check_answer(loaded, content)
