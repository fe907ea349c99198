"""Images from outside (uploads, files of a model folder): decoded robustly, bounded, as upright RGB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from tl_space.errors import UserError

# Bounds chosen on purpose: a 50-megapixel phone photo passes, a decompression bomb does not.
MAX_IMAGE_PIXELS = 50_000_000
MIN_IMAGE_SIDE = 8
# Modes Image.reduce takes; others (palette, 1-bit, 16-bit) are converted to RGB at full size first.
REDUCIBLE_MODES = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr", "PA"}
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose does).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class ImageError(UserError):
    """An input that is not an image this app can classify; the message says why."""


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16- or 32-bit grey levels as 8-bit, in integer arithmetic (a float64 copy of a 50-megapixel image is 400 MB):
    the top 8 bits of 16-bit data; 32-bit integers and floats above 255 as 16-bit, below it as they are."""
    if pixels.dtype.kind == "f":
        top = np.float32(65535 if np.nanmax(pixels, initial=0) > 255 else 255)
        return np.nan_to_num(np.clip(pixels.astype(np.float32, copy=False) * (255 / top), 0, 255)).astype(np.uint8)
    if pixels.dtype.itemsize == 2 or pixels.max(initial=0) > 255:
        return (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit and float scaled, alpha and palette transparency laid on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a width x height image, as a PIL box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def centre_square(image: Image.Image, side: int) -> Image.Image:
    """The centre square of a loaded image (all the model and the heatmaps ever look at), shrunk by an integer factor
    to between side and 2 * side pixels wide when larger: Image.reduce reads only that box into a small new image."""
    if image.mode not in REDUCIBLE_MODES:
        image = _to_rgb(image)
    return image.reduce(max(1, min(image.size) // side), centre_box(*image.size))


def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, side: int | None = None) -> Image.Image:
    """Decode a file into an upright RGB image, or raise ImageError saying what is wrong with it.

    With side (every upload): only the centre square is kept, reduced while it is decoded to at most 2 * side pixels
    wide (JPEG by draft, at 1/2 to 1/8 scale; other formats by Image.reduce right after decoding), so that what a
    request holds per image is a few hundred KB whatever its pixel count. image.info["source_size"] is the upright
    image's width and height as the file holds it.
    """
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as error:  # the message names no path: visitors must not learn which server files exist
        raise ImageError("The file could not be read; upload it again.") from error
    if empty:
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
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            wanted = side or 1024
            image.draft("RGB", (wanted, wanted))  # JPEG: decoded at a reduced scale, still at least wanted px
            image.load()
            decoded = centre_square(image, side) if side else image
            upright = decoded.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else decoded
            result = _to_rgb(upright)
            turned = orientation in (5, 6, 7, 8)  # these orientations swap width and height
            result.info["source_size"] = (height, width) if turned else (width, height)
            return result
    except UnidentifiedImageError as error:
        raise ImageError("This file is not an image that can be read (JPEG, PNG, WebP, GIF, BMP or TIFF).") from error
    except Image.DecompressionBombError as error:
        raise ImageError("The image declares more pixels than this app accepts (a decompression bomb?); "
                         "upload a smaller image.") from error
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's own text may hold the server's path: not shown
        raise ImageError("The image file is truncated or corrupt; upload another copy of it.") from error


def image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A (1, 3, H, W) uint8 tensor: the centre square, shrunk with PIL's antialiasing when larger than size."""
    square = image.crop(centre_box(*image.size))
    side = square.width
    if side > size:  # smaller images are enlarged on the tensor, as in training
        square = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).unsqueeze(0)
