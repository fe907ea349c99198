"""Decoding whatever a visitor uploads, and classifying it with the model's own preprocessing."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_space.images import ImageError, image_tensor, open_image


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displays turned 90 degrees clockwise
    path = _save(tmp_path, "rotated.jpg", Image.fromarray(pixels), exif=exif, quality=95)
    image = open_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[0] > 200 and bottom[0] < 60  # the red half is now on top


@pytest.mark.parametrize("name, make", [
    ("sixteen.png", lambda: Image.fromarray(np.full((16, 16), 40000, np.uint16))),
    ("cmyk.jpg", lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0))),
    ("palette.png", lambda: _palette_with_transparency()),
    ("alpha.png", lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 0))),
    ("grey.png", lambda: Image.new("L", (16, 16), 77)),
])
def test_any_mode_becomes_8_bit_rgb(tmp_path, name, make):
    image = open_image(_save(tmp_path, name, make()))
    assert image.mode == "RGB" and image.size == (16, 16)


def _palette_with_transparency():
    image = Image.new("P", (16, 16), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 0
    return image


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    image = open_image(_save(tmp_path, "mid.png", Image.fromarray(np.full((16, 16), 32768, np.uint16))))
    assert 120 <= np.asarray(image)[0, 0, 0] <= 135


def test_transparent_pixels_are_laid_on_white(tmp_path):
    image = open_image(_save(tmp_path, "clear.png", Image.new("RGBA", (16, 16), (255, 0, 0, 0))))
    assert tuple(np.asarray(image)[0, 0]) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.asarray(open_image(path))[0, 0, 0] > 200


@pytest.mark.parametrize("name, content, message", [
    ("empty.png", b"", "The file is empty"),
    ("text.png", b"this is not an image", "not an image that can be read"),
])
def test_unreadable_files_get_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        open_image(path)


def test_truncated_file_gets_a_clear_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "PNG")
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(path)


def test_tiny_and_huge_images_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageError, match="only 1x1 pixels"):
        open_image(_save(tmp_path, "dot.png", Image.new("RGB", (1, 1))))
    large = _save(tmp_path, "large.png", Image.new("1", (8000, 8000)))
    with pytest.raises(ImageError, match="8000x8000 pixels, more than the 50 megapixels"):
        open_image(large)
    bomb = _save(tmp_path, "bomb.png", Image.new("1", (20000, 20000)))  # PIL itself refuses to open it
    with pytest.raises(ImageError, match="more pixels than this app accepts \\(a decompression bomb"):
        open_image(bomb)


def test_image_tensor_crops_the_centre_and_shrinks_large_images():
    pixels = np.zeros((300, 400, 3), np.uint8)
    pixels[:, 50:350] = 200  # the centre square is bright, the side bands dark
    tensor = image_tensor(Image.fromarray(pixels), size=64)
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == torch.uint8
    assert tensor.float().mean() > 190
    assert image_tensor(Image.new("RGB", (32, 32)), size=160).shape == (1, 3, 32, 32)


def test_sixteen_bit_images_keep_their_grey_levels_in_integer_arithmetic(tmp_path):
    levels = np.array([[0, 256, 32768, 65535]], dtype=np.uint16).repeat(8, axis=0).repeat(2, axis=1)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I")  # Pillow keeps the 16 bits
    pixels = np.asarray(open_image(tmp_path / "deep.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (8, 8, 3)
    assert pixels[0, ::2, 0].tolist() == [0, 1, 128, 255]


def test_errors_name_no_server_path(tmp_path):
    for path in (Path("/nonexistent/secret.png"), tmp_path / "gone.png"):
        with pytest.raises(ImageError) as error:
            open_image(path)
        assert "/" not in str(error.value) and "Errno" not in str(error.value)
    (tmp_path / "cut.png").write_bytes(Image.new("RGB", (64, 64)).tobytes()[:10])
    with pytest.raises(ImageError) as error:
        open_image(tmp_path / "cut.png")
    assert str(tmp_path) not in str(error.value)
