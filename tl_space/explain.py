"""Why did it say dog? Grad-CAM heatmaps (torchcam) over the image, for any class of a timm CNN."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchcam.methods import GradCAM
from torchcam.utils import overlay_mask

from tl_space.hub import LoadedModel
from tl_space.inference import image_tensor
from tl_space.transforms import to_model_input

DISPLAY_SIZE = 320
# A heatmap from a 1x1 or 2x2 map says nothing about where: small inputs (CIFAR's 32 px) use an earlier stage.
MIN_CAM_SIDE = 4


def cam_layer(model: torch.nn.Module, image_size: int) -> str:
    """The deepest feature stage timm reports (feature_info) whose map is at least MIN_CAM_SIDE pixels wide."""
    stages = model.feature_info
    wide_enough = [stage for stage in stages if image_size // stage["reduction"] >= MIN_CAM_SIDE]
    return (wide_enough or stages[:1])[-1]["module"]


def class_activation_maps(loaded: LoadedModel, image: Image.Image, class_indices: list[int]) -> torch.Tensor:
    """Grad-CAM of each class for one image, (len(class_indices), S, S) in [0, 1], S the model's input size.

    One forward and one backward pass over the image repeated once per class.
    """
    size = loaded.preprocessing.image_size
    inputs = to_model_input(image_tensor(image, size), loaded.preprocessing).expand(len(class_indices), -1, -1, -1)
    model = loaded.model.eval()
    with torch.enable_grad(), GradCAM(model, target_layer=cam_layer(model, size)) as extractor:
        scores = model(inputs.contiguous())
        maps = extractor(class_idx=list(class_indices), scores=scores)[0]
    maps = F.interpolate(maps.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)
    return maps.squeeze(1).clamp(0, 1)


def heatmap_overlays(loaded: LoadedModel, image: Image.Image, class_names: list[str]) -> list[Image.Image]:
    """The centre square of the image as the model sees it, shown large, with each class's heatmap over it."""
    unknown = [name for name in class_names if name not in loaded.label_names]
    if unknown:
        raise ValueError(f"unknown class {unknown[0]!r}; the model's classes are {', '.join(loaded.label_names)}")
    maps = class_activation_maps(loaded, image, [loaded.label_names.index(name) for name in class_names])
    square = Image.fromarray(image_tensor(image, DISPLAY_SIZE)[0].permute(1, 2, 0).numpy())
    if square.width < DISPLAY_SIZE:  # small images (CIFAR's 32 px) shown enlarged, pixels kept sharp
        square = square.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST)
    # torchcam's overlay takes the map as a float ("F") image in [0, 1], as its docs show.
    return [overlay_mask(square, Image.fromarray(cam.numpy().astype(np.float32), mode="F"), alpha=0.55) for cam in maps]
