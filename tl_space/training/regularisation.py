"""Regularisation of training on images, by timm's own parts: label smoothing, mixup and CutMix (`Mixup`), random
erasing (`RandomErasing`) and an exponential moving average of the weights (`ModelEmaV3`); and airbench's lookahead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.utils import ModelEmaV3
from torch import nn


@dataclass(frozen=True)
class Regularisation:
    """What regularises a stage that trains on images; every default is off."""

    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    random_erasing: float = 0.0  # the probability that an image gets one erased rectangle
    ema_decay: float = 0.0
    lookahead: bool = False

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class BatchRegulariser:
    """A stage's regularisation, applied to each training batch: augmented inputs and their (soft) targets, the loss."""

    def __init__(self, regularisation: Regularisation, num_classes: int, device: torch.device):
        self.label_smoothing = regularisation.label_smoothing
        self.num_classes = num_classes
        # timm's batch mode: one mixing factor per batch, mixup or CutMix with equal chance when both are on.
        self.mixup = Mixup(mixup_alpha=regularisation.mixup_alpha, cutmix_alpha=regularisation.cutmix_alpha,
                           label_smoothing=regularisation.label_smoothing,
                           num_classes=num_classes) if regularisation.mixes else None
        # Per-pixel normal noise, as timm's training script erases (its --remode pixel), on normalised inputs.
        self.erasing = RandomErasing(regularisation.random_erasing, mode="pixel",
                                     device=str(device)) if regularisation.random_erasing > 0 else None

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets: class indices, or class probabilities when mixed."""
        if self.erasing is not None:
            inputs = self.erasing(inputs)
        if self.mixup is not None and len(labels) % 2 == 0:  # timm mixes a batch with its reverse: pairs needed
            return self.mixup(inputs, labels)
        return inputs, labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dtype.is_floating_point:  # mixed: timm's targets already hold the smoothing
            return F.cross_entropy(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


def weight_average(module: nn.Module, decay: float) -> ModelEmaV3 | None:
    """An EMA of module's weights (and buffers), warmed up so early averages follow the weights; None with decay 0."""
    if decay <= 0:
        return None
    return ModelEmaV3(module, decay=decay, use_warmup=True)


class Lookahead:
    """airbench's lookahead (its LookaheadState): every EVERY steps a running average of the weights (and BatchNorm
    statistics) moves toward them by 1 - decay, and the weights are set to it. decay = 0.95^5 progress^3 grows from 0
    to 0.77 over the stage: early steps follow the weights, late ones average them."""

    EVERY = 5

    def __init__(self, module: nn.Module):
        self.average = {name: value.detach().clone() for name, value in module.state_dict().items()
                        if value.is_floating_point()}

    @staticmethod
    def decay(progress: float) -> float:
        return 0.95 ** 5 * min(1.0, max(0.0, progress)) ** 3

    @torch.no_grad()
    def step(self, module: nn.Module, progress: float) -> None:
        """Move the average toward the weights, then set the weights to it."""
        weight = 1 - self.decay(progress)
        for name, value in module.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, weight)
                value.copy_(self.average[name])
