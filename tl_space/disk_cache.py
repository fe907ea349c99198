"""Tensors kept on disk under a content key, for reruns: decoded images, and a frozen backbone's features."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file


def cache_folder(cache_dir: str, kind: str) -> Path | None:
    """cache_dir/kind (kind: "images" or "features"); None when the cache is off (cache_dir "none")."""
    return None if cache_dir.lower() == "none" else Path(cache_dir).expanduser() / kind


def hash_tensor(digest, tensor: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and bytes to a hashlib digest."""
    tensor = tensor.detach().cpu().contiguous()
    digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def load(folder: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors stored under key, None when there are none."""
    path = folder / f"{key}.safetensors"
    return load_file(str(path)) if path.is_file() else None


def store(folder: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.safetensors"
    partial = path.with_suffix(f".partial-{os.getpid()}")
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(partial))
    partial.replace(path)  # atomic: a reader sees the whole file or none, and concurrent writers the same file


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
