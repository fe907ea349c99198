"""Why did it say dog? Grad-CAM heatmaps (torchcam) for any class of a timm CNN, and what its stages respond to.

Functions of a model and its inputs; the served model (app/served.py) calls them under its lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchcam.methods import GradCAM
from torchcam.utils import overlay_mask

from tl_space.markdown import code
from tl_space.errors import UserError
from tl_space.figures import new_figure, to_image
from tl_space.folder import metrics as metrics_schema
from tl_space.images import image_tensor
from tl_space.model import create_model
from tl_space.strategies import strategy_named

DISPLAY_SIZE = 320
# A heatmap from a 1x1 or 2x2 map says nothing about where: small inputs (CIFAR's 32 px) use an earlier stage.
MIN_CAM_SIDE = 4


NOT_FEATURE_MAPS = ("Grad-CAM and feature maps need a model whose stages give feature maps; this model's give "
                    "tokens (a vision transformer), so they are not available for it.")


def check_feature_maps(model: torch.nn.Module) -> None:
    """A UserError for token models (timm's ViTs, Swin, ... embed patches): their stages are not (C, H, W) maps."""
    if hasattr(model, "patch_embed") or not getattr(model, "feature_info", None):
        raise UserError(NOT_FEATURE_MAPS)


def cam_layer(model: torch.nn.Module, image_size: int) -> str:
    """The deepest feature stage timm reports (feature_info) whose map is at least MIN_CAM_SIDE pixels wide."""
    stages = model.feature_info
    wide_enough = [stage for stage in stages if image_size // stage["reduction"] >= MIN_CAM_SIDE]
    return (wide_enough or stages[:1])[-1]["module"]


def class_activation_maps(model: torch.nn.Module, inputs: torch.Tensor, class_indices: list[int],
                          size: int) -> torch.Tensor:
    """Grad-CAM of each class for one image's model input (1, 3, S, S): (len(class_indices), S, S) in [0, 1].

    One forward and one backward pass over the image repeated once per class.
    """
    inputs = inputs.expand(len(class_indices), -1, -1, -1)
    model = model.eval()
    with torch.enable_grad(), GradCAM(model, target_layer=cam_layer(model, size)) as extractor:
        scores = model(inputs.contiguous())
        maps = extractor(class_idx=list(class_indices), scores=scores)[0]
    maps = F.interpolate(maps.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)
    return maps.squeeze(1).clamp(0, 1)


def heatmap_overlays(image: Image.Image, maps: torch.Tensor) -> list[Image.Image]:
    """The centre square of the image as the model sees it, shown large, with each map (S, S) over it."""
    square = Image.fromarray(image_tensor(image, DISPLAY_SIZE)[0].permute(1, 2, 0).numpy())
    if square.width < DISPLAY_SIZE:  # small images (CIFAR's 32 px) shown enlarged, pixels kept sharp
        square = square.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST)
    # torchcam's overlay takes the map as a float ("F") image in [0, 1], as its docs show.
    return [overlay_mask(square, Image.fromarray(cam.numpy().astype(np.float32), mode="F"), alpha=0.55) for cam in maps]


FEATURE_CHANNELS = 8


def stage_picks(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(label, module name) of an early, a middle and the last feature stage (timm's feature_info)."""
    stages = model.feature_info
    picks = {"early": 0, "middle": len(stages) // 2, "last": len(stages) - 1}
    return [(f"{label}: {stages[index]['module']}", stages[index]["module"]) for label, index in picks.items()]


def strongest_feature_maps(model: torch.nn.Module, inputs: torch.Tensor,
                           channels: int = FEATURE_CHANNELS) -> list[tuple[str, torch.Tensor, list[int]]]:
    """Per picked stage: its label, the maps of its most active channels (k, h, w) and their channel numbers."""
    check_feature_maps(model)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    picks = stage_picks(model)
    handles = [modules[name].register_forward_hook(lambda _, __, output, name=name: outputs.__setitem__(name, output))
               for _, name in picks]
    try:
        with torch.inference_mode():
            model.eval()(inputs)
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for label, name in picks:
        maps = outputs[name][0].float()
        strongest = maps.mean(dim=(1, 2)).topk(min(channels, len(maps))).indices
        results.append((label, maps[strongest], strongest.tolist()))
    return results


def pretrained_backbone(metrics: dict, model: torch.nn.Module, class_count: int, pretrained_file: str | None = None
                        ) -> tuple[torch.nn.Module | None, str]:
    """The ImageNet model a served one started from, with a sentence saying which (or why there is none).

    Its architecture is the served model's own (config.json); its weights come from pretrained_file (the operator's
    local copy) or else from the timm Hub repo of the base model the folder's metrics name. No path or model name
    written in the folder's metrics is ever opened.
    """
    strategy = strategy_named(metrics.get("settings", {}).get("strategy"))
    if strategy is None or not strategy.pretrained:
        return None, "This model was trained from scratch (or its folder does not say from what): no pretrained backbone."
    architecture = model.pretrained_cfg.get("architecture", "")
    base_model = metrics_schema.base_model(metrics)
    name = (base_model.removeprefix("timm/") if base_model is not None
            and base_model.startswith(f"timm/{architecture}.") else architecture)
    try:
        backbone = create_model(name, class_count, pretrained=True, pretrained_file=pretrained_file)
    except Exception as error:  # offline, gated, unknown tag: the feature maps of this model are still shown
        logging.getLogger("tl_space.explain").warning("no pretrained backbone for %s: %s", name, error)
        return None, f"The pretrained backbone {code(name)} could not be loaded here."
    source = Path(pretrained_file).name if pretrained_file else name
    return backbone.eval(), f"Left: this model. Right: the pretrained backbone it started from ({code(source)})."


def feature_map_figure(by_model: dict[str, list[tuple[str, torch.Tensor, list[int]]]]) -> Image.Image:
    """A grid: one row per stage (early, middle, last), the strongest channels of each model (strongest_feature_maps)
    side by side."""
    stages = len(next(iter(by_model.values())))
    figure = new_figure(1.3 * FEATURE_CHANNELS * len(by_model), 1.55 * stages + 0.4)
    grid = figure.subplots(stages, FEATURE_CHANNELS * len(by_model), squeeze=False)
    for column_offset, (title, stage_maps) in enumerate(by_model.items()):
        for row, (label, maps, channels) in enumerate(stage_maps):
            for position in range(FEATURE_CHANNELS):
                axes = grid[row, column_offset * FEATURE_CHANNELS + position]
                axes.set_xticks([])
                axes.set_yticks([])
                if position >= len(maps):
                    axes.axis("off")
                    continue
                axes.imshow(maps[position].numpy(), cmap="viridis")
                axes.set_title(f"ch {channels[position]}", fontsize=7)
                if position == 0:
                    axes.set_ylabel(label, fontsize=7)
            grid[0, column_offset * FEATURE_CHANNELS].annotate(
                title, (0, 1.45), xycoords="axes fraction", fontsize=10, fontweight="bold")
    return to_image(figure)
