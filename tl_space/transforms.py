"""Batched, device-side preprocessing: augmentation, resize and normalisation of uint8 image batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from tl_space.images import image_tensor

# torch.nn.functional.interpolate modes for timm's interpolation names; PIL-only ones fall back to bicubic.
INTERPOLATION_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}


@dataclass(frozen=True)
class Preprocessing:
    """What turns a uint8 image into model input: taken from the model's pretrained config."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def to_dict(self) -> dict:
        return asdict(self)


def preprocessing_for(data_config: dict, image_size: int | None = None) -> Preprocessing:
    """Preprocessing from a timm data config (resolve_model_data_config), at image_size or the config's own."""
    size = image_size or int(data_config["input_size"][-1])
    return Preprocessing(
        image_size=size,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
        interpolation=str(data_config.get("interpolation", "bicubic")),
    )


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after reflect padding (1/8 of the side, 4 px on CIFAR) and random horizontal flip, per image."""
    count, _, height, width = images.shape
    padding = max(1, min(height, width) // 8)
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect")
    device = images.device
    offset_y = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    offset_x = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    rows = offset_y[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device).expand(count, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + offset_x[:, None]
    batch_index = torch.arange(count, device=device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], columns[:, None, :]]
    return cropped.permute(0, 3, 1, 2).to(images.dtype)


def to_model_input(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float input resized to the model's size and normalised with its mean/std."""
    pixels = images.float().div_(255)
    size = preprocessing.image_size
    if pixels.shape[-2:] != (size, size):
        mode = INTERPOLATION_MODES.get(preprocessing.interpolation, "bicubic")
        downscaling = pixels.shape[-1] > size or pixels.shape[-2] > size
        pixels = F.interpolate(pixels, size=(size, size), mode=mode,
                               antialias=downscaling and mode != "nearest",
                               **({} if mode == "nearest" else {"align_corners": False}))
        pixels = pixels.clamp_(0, 1)  # bicubic overshoots; PIL, which timm's own transforms use, clips
    mean = torch.tensor(preprocessing.mean, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=pixels.device).view(1, -1, 1, 1)
    # channels_last suits convolutions on CPU (oneDNN) and tensor cores alike; other layouts just convert it.
    return ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)


def progressive_size(start: int, end: int, progress: float, multiple: int = 16) -> int:
    """Progressive resizing: the training size at this fraction of a stage, growing linearly from start to end in
    steps of `multiple` px (few distinct shapes, each compiled once by oneDNN), end from the last quarter on."""
    if progress >= 0.75 or start >= end:
        return end
    size = start + (end - start) * progress / 0.75
    return min(end, max(start, int(size // multiple * multiple)))


def images_to_model_input(images: list[Image.Image], preprocessing: Preprocessing) -> torch.Tensor:
    """Decoded images of any sizes as one model input batch: each one's centre square at the model's size."""
    return torch.cat([to_model_input(image_tensor(image, preprocessing.image_size), preprocessing) for image in images])
