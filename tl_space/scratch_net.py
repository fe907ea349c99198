"""A small CNN for 32-px images, the baseline of training from scratch, registered in timm as `tl_scratch_cnn`.

A 3x3 stem, then three stages that each halve the resolution (32 → 16 → 8 → 4 px) and run two 3x3 convolutions, BatchNorm and GELU,
then global max pooling and a linear head: the shape of the fast CIFAR-10 baselines, small enough to train for
several epochs in minutes on a CPU. Importing this module registers it, so `timm.create_model("tl_scratch_cnn")` and
a model folder of it (`local-dir:`, `hf-hub:`) load like any other timm model.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.GELU()]


class ConvStage(nn.Sequential):
    """2x2 max pool, then two convolutions, each followed by BatchNorm and GELU: pooling first runs both at the
    stage's own resolution, about twice as fast on a CPU as pooling after the first."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), *_conv_bn(in_channels, out_channels), *_conv_bn(out_channels, out_channels))


class ScratchCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128),
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.stem = nn.Sequential(*_conv_bn(in_chans, widths[0]))
        self.stages = nn.Sequential(*[ConvStage(a, b) for a, b in zip((widths[0], *widths[:-1]), widths)])
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")] + [
            dict(num_chs=width, reduction=2 ** (index + 1), module=f"stages.{index}") for index, width in enumerate(widths)]
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(inputs))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.drop(features.amax(dim=(2, 3)))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(inputs))


default_cfgs = generate_default_cfgs({
    "tl_scratch_cnn": dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
                           interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="stem.0",
                           classifier="head"),
})


@register_model
def tl_scratch_cnn(pretrained: bool = False, **kwargs) -> ScratchCNN:
    """The scratch baseline: 32-64-128 channels, 0.3 M parameters; it has no pretrained weights."""
    return build_model_with_cfg(ScratchCNN, "tl_scratch_cnn", pretrained, **kwargs)
