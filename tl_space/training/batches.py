"""Batches of in-memory splits: index loaders sharded by accelerate, inputs made on the device, gathered outputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from tl_space.transforms import Preprocessing, random_crop_flip, to_model_input

# Maps a batch of split indices, whether it trains and an image size (None: the model's) to what the trained
# module takes: augmented images, or cached features (which have no size).
InputsFn = Callable[..., torch.Tensor]
# Pooled features are short rows: a linear head evaluates them in large batches at no cost in cache misses.
FEATURE_BATCH_SIZE = 1024


def index_loader(count: int, batch_size: int, shuffle: bool, seed: int, min_samples: int = 0) -> DataLoader:
    """Batches of indices into an in-memory split; accelerate shards them across processes.

    When shuffling, an epoch holds at least min_samples indices: a small split is shuffled again and again.
    """
    if not shuffle:
        return DataLoader(range(count), batch_size=batch_size)
    sampler = RandomSampler(range(count), num_samples=max(count, min_samples),
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(range(count), batch_size=batch_size, sampler=sampler)


def image_inputs(images: torch.Tensor, preprocessing: Preprocessing, generator: torch.Generator | None) -> InputsFn:
    """Indices -> model input, augmented (crop + flip) when training, at size (default: preprocessing's)."""
    def inputs(indices: torch.Tensor, training: bool, size: int | None = None) -> torch.Tensor:
        batch = images[indices.to(images.device)]
        if training:
            batch = random_crop_flip(batch, generator)
        return to_model_input(batch, preprocessing if size is None else replace(preprocessing, image_size=size))
    return inputs


@torch.inference_mode()
def predict(accelerator: Accelerator, module: nn.Module, inputs: InputsFn, count: int, batch_size: int,
            description: str = "") -> torch.Tensor:
    """Outputs of module for every index 0..count-1, in order, gathered over processes without duplicates."""
    loader = accelerator.prepare(index_loader(count, batch_size, shuffle=False, seed=0))
    was_training = module.training
    module.eval()
    outputs = []
    for indices in tqdm(loader, desc=description, disable=not description or not accelerator.is_local_main_process,
                        leave=False):
        with accelerator.autocast():
            batch_outputs = module(inputs(indices, False)).float()
        outputs.append(accelerator.gather_for_metrics(batch_outputs))
    module.train(was_training)
    return torch.cat(outputs).cpu()



def feature_inputs(split_features: torch.Tensor) -> InputsFn:
    return lambda indices, training, size=None: split_features[indices.to(split_features.device)]
