"""A frozen backbone's pooled features: computed once per set of images (compiled where that pays), kept in the cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from tl_space import caches
from tl_space import model as model_module
from tl_space.data import LabelledImages
from tl_space.training.batches import image_inputs, predict
from tl_space.training.precision import run_precision
from tl_space.transforms import Preprocessing


class PooledFeatures(nn.Module):
    """The backbone up to the classifier's input, as a module predict() can run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return model_module.pooled_features(self.model, inputs)


class FixedBatch(nn.Module):
    """Runs module on batches padded to one size, so a compiled module never recompiles for the last, short batch."""

    def __init__(self, module: nn.Module, batch_size: int):
        super().__init__()
        self.module, self.batch_size = module, batch_size

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        count = len(inputs)
        if count < self.batch_size:
            inputs = torch.cat([inputs, inputs[-1:].expand(self.batch_size - count, *inputs.shape[1:])])
        return self.module(inputs)[:count]


def feature_extractor(model: nn.Module, batch_size: int, compile_it: bool) -> nn.Module:
    """The frozen backbone's pooled features as a module; compiled for fixed-size batches when compile_it."""
    backbone = PooledFeatures(model)
    if not compile_it:
        return backbone
    return FixedBatch(torch.compile(backbone, dynamic=False), batch_size)


@dataclass
class FrozenFeatures:
    """Gives a split's pooled features from model's frozen backbone: from the cache folder when the same features
    were made before, else computed (compiled for splits of at least compile_min_images; None: never) and stored."""

    accelerator: Accelerator
    model: nn.Module
    preprocessing: Preprocessing
    batch_size: int
    compile_min_images: int | None
    cache_folder: Path | None

    def __post_init__(self) -> None:
        # Seconds the cache saved: what computing the features it gave took when they were made. A study charges
        # them to its runs, so a run that found them is timed as one on a fresh machine would be.
        self.saved_seconds = 0.0
        self.fingerprint = caches.backbone_fingerprint(self.model)
        # The timm name, not just the class: tf_efficientnet_lite0 and efficientnet_lite0 share weights' shapes only.
        self.architecture = self.model.pretrained_cfg.get("architecture", type(self.model).__name__)

    def __call__(self, split: LabelledImages) -> torch.Tensor:
        accelerator = self.accelerator
        key = caches.features_key(self.fingerprint, self.architecture, self.preprocessing,
                                  run_precision(accelerator), caches.images_fingerprint(split.images))
        stored, hit = caches.cached_tensors(self.cache_folder, key, lambda: self._compute_timed(split),
                                            write=accelerator.is_main_process)
        accelerator.wait_for_everyone()  # the file is whole before any process looks for the next one
        if hit and accelerator.is_main_process:
            tqdm.write(f"features of {len(split)} images from the cache ({self.cache_folder})")
        if hit:
            self.saved_seconds += float(stored.get("seconds", torch.zeros(())))
        return stored["features"].to(accelerator.device)

    def _compute_timed(self, split: LabelledImages) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        features = self._compute(split)
        return {"features": features, "seconds": torch.tensor(time.perf_counter() - started, dtype=torch.float64)}

    def _compute(self, split: LabelledImages) -> torch.Tensor:
        inputs = image_inputs(split.images.to(self.accelerator.device), self.preprocessing, generator=None)
        description = f"features ({len(split)} images)"
        if self.compile_min_images is not None and len(split) >= self.compile_min_images:
            try:
                return predict(self.accelerator, feature_extractor(self.model, self.batch_size, True), inputs,
                               len(split), self.batch_size, description=description + ", compiled")
            except Exception as error:  # e.g. no C++ compiler for inductor: eager mode gives the same features
                tqdm.write(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                           "computing features without it (--compile no skips trying)")
        return predict(self.accelerator, feature_extractor(self.model, self.batch_size, False), inputs, len(split),
                       self.batch_size, description=description)
