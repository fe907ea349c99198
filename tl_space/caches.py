"""Tensors kept on disk under a content key, for reruns: decoded images, and a frozen backbone's features.

A features key hashes the backbone's weights (not the new head's), the model's architecture, the preprocessing, the
numeric precision and the exact uint8 images, so a changed input never reuses a stale file. Every entry stores a digest
of its data, checked when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from tl_space import atomic
from tl_space.transforms import Preprocessing


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/tl-space, or ~/.cache/tl-space where it is unset."""
    return str(Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "tl-space")


def cache_folder(cache_dir: str, kind: str) -> Path | None:
    """cache_dir/kind (kind: "images" or "features"); None when the cache is off (cache_dir "none")."""
    return None if cache_dir.lower() == "none" else Path(cache_dir).expanduser() / kind


def hash_tensor(digest, tensor: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and bytes to a hashlib digest."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


DIGEST_KEY = "tl_space.blake2b"  # in each entry's safetensors metadata: the digest of its tensors


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for name in sorted(tensors):
        digest.update(name.encode())
        hash_tensor(digest, tensors[name])
    return digest.hexdigest()


def _warn(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def load(folder: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors stored under key, None when there are none. An entry that cannot be read or whose data does not
    match its digest is reported by path, deleted, and reads as none: the caller computes it again."""
    path = folder / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as entry:
            expected = (entry.metadata() or {}).get(DIGEST_KEY)
            tensors = {name: entry.get_tensor(name) for name in entry.keys()}
        if expected is None or tensors_digest(tensors) != expected:
            raise ValueError("its data does not match its digest" if expected else "it has no digest")
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        _warn(f"cache entry {path} is damaged ({error}); deleting it and computing it again")
        path.unlink(missing_ok=True)
        return None
    return tensors


def store(folder: Path, key: str, tensors: dict[str, torch.Tensor]) -> bool:
    """Write tensors under key with their digest; a failed write (disk full, read-only) warns and returns False."""
    path = folder / f"{key}.safetensors"
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.sweep_stale_staging(folder)
        metadata = {DIGEST_KEY: tensors_digest(tensors)}
        atomic.write_file(path, lambda staging: save_file(tensors, str(staging), metadata=metadata))
    except (OSError, SafetensorError) as error:  # safetensors reports its own I/O errors as SafetensorError
        reason = getattr(error, "strerror", None) or str(error).split(" at path ")[0]
        _warn(f"could not write cache entry {path} ({reason}); going on without caching it")
        return False
    return True


def cached_tensors(folder: Path | None, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                   write: bool = True) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors stored under key in folder if there, else compute() (stored when write); returns (tensors, hit)."""
    if folder is None:
        return compute(), False
    stored = load(folder, key)
    if stored is not None:
        return stored, True
    tensors = compute()
    if write:
        store(folder, key, tensors)
    return tensors, False


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


def features_key(backbone: str, architecture: str, preprocessing: Preprocessing, precision: str, images: str) -> str:
    """One name for one set of features: any part that differs gives another key."""
    parts = {"backbone": backbone, "architecture": architecture, "preprocessing": preprocessing.to_dict(),
             "precision": precision, "images": images, "version": 2}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()
