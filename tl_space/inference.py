"""One image in, class probabilities out: robust decoding and the model's own preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tl_space.errors import UserError
from tl_space.hub import LoadedModel
from tl_space.transforms import to_model_input

# Bounds chosen on purpose: a 50-megapixel phone photo passes, a decompression bomb does not.
MAX_IMAGE_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 8


class ImageError(UserError):
    """An input that is not an image this app can classify; the message says why."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and float scaled, alpha and palette transparency laid on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an uploaded file into an upright RGB image, or raise ImageError saying what is wrong with it."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageError("The file is empty (0 bytes); upload a JPEG, PNG, WebP, GIF, BMP or TIFF image.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"The image is {width}x{height} pixels, more than the {max_pixels // 1_000_000} "
                                 "megapixels this app accepts; upload a smaller image.")
            if min(width, height) < MIN_IMAGE_SIDE:
                raise ImageError(f"The image is only {width}x{height} pixels; it needs at least "
                                 f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} to be classified.")
            image.seek(0)  # animated images: the first frame
            image.draft("RGB", (1024, 1024))  # JPEG: decode big photos at a reduced scale, much faster
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError as error:
        raise ImageError("This file is not an image that can be read (JPEG, PNG, WebP, GIF, BMP or TIFF).") from error
    except Image.DecompressionBombError as error:
        raise ImageError("The image declares more pixels than this app accepts (a decompression bomb?); "
                         "upload a smaller image.") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"The image file is truncated or corrupt ({error}).") from error


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A (1, 3, H, W) uint8 tensor: the centre square, shrunk with PIL's antialiasing when larger than size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side > size:  # smaller images are enlarged on the tensor, as in training
        square = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).unsqueeze(0)


@torch.inference_mode()
def class_probabilities(loaded: LoadedModel, image: Image.Image) -> dict[str, float]:
    """Calibrated probability of every class for one image, with the model's own resize, mean and std (averaged
    with its mirror image's logits when the folder enables flip test-time augmentation)."""
    inputs = to_model_input(image_tensor(image, loaded.preprocessing.image_size), loaded.preprocessing)
    if loaded.flip_tta:  # the folder measured a gain from averaging with the mirror image
        inputs = torch.cat([inputs, inputs.flip(-1)])
    logits = loaded.model(inputs).float().mean(dim=0, keepdim=True)
    probabilities = (logits / loaded.temperature).softmax(dim=1)[0]
    return {name: float(p) for name, p in zip(loaded.label_names, probabilities)}
