"""Feature cache: a frozen backbone's pooled features, stored under a key that covers everything they depend on.

The key hashes the backbone's weights (not the new head's), the model's architecture, the preprocessing,
the numeric precision and the exact uint8 images, so a changed input never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tl_space.transforms import Preprocessing

def _hash_tensor(digest, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def backbone_fingerprint(model: nn.Module) -> str:
    """Hash of every weight and buffer except the classifier's: the features do not depend on the head."""
    classifier = model.get_classifier()
    head = next(name for name, module in model.named_modules() if module is classifier) + "."
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        if name.startswith(head):
            continue
        digest.update(name.encode())
        _hash_tensor(digest, tensor)
    return digest.hexdigest()


def images_fingerprint(images: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    _hash_tensor(digest, images)
    return digest.hexdigest()


def cache_key(backbone: str, architecture: str, preprocessing: Preprocessing, precision: str, images: str) -> str:
    """One name for one set of features: any part that differs gives another key."""
    parts = {"backbone": backbone, "architecture": architecture, "preprocessing": preprocessing.to_dict(),
             "precision": precision, "images": images, "version": 1}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()


def cached_features(cache_dir: Path | None, key: str, compute: Callable[[], torch.Tensor],
                    write: bool = True) -> tuple[torch.Tensor, bool]:
    """Features from cache_dir/key.safetensors if there, else computed (and stored when write); returns (features, hit)."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"], True
    features = compute()
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        save_file({"features": features.detach().cpu().contiguous()}, str(partial))
        partial.replace(path)  # atomic: a reader sees the whole file or none
    return features, False
