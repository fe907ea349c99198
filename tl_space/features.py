"""Feature cache keys: a frozen backbone's pooled features are stored (tl_space.disk_cache) under a key that covers
everything they depend on.

The key hashes the backbone's weights (not the new head's), the model's architecture, the preprocessing,
the numeric precision and the exact uint8 images, so a changed input never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from tl_space.disk_cache import hash_tensor
from tl_space.transforms import Preprocessing


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
        hash_tensor(digest, tensor)
    return digest.hexdigest()


def images_fingerprint(images: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    hash_tensor(digest, images)
    return digest.hexdigest()


def cache_key(backbone: str, architecture: str, preprocessing: Preprocessing, precision: str, images: str) -> str:
    """One name for one set of features: any part that differs gives another key."""
    parts = {"backbone": backbone, "architecture": architecture, "preprocessing": preprocessing.to_dict(),
             "precision": precision, "images": images, "version": 1}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()
