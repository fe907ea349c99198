"""Cache entries are trusted only when their data matches their digest; a bad entry is recomputed, a failed write
costs the cache, never the run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support.runs import ROOT, tiny_settings
from tl_space import caches
from tl_space.training.run import run


def _features_run(dataset, pretrained_file, output_dir, cache):
    run(tiny_settings(dataset, output_dir, pretrained_file, strategy="linear-probe", epochs=3, lr=0.03,
                      cache_dir=str(cache)))
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.fixture
def cached_run(tiny_dataset, pretrained_file, tmp_path):
    cache = tmp_path / "cache"
    metrics = _features_run(tiny_dataset, pretrained_file, tmp_path / "first", cache)
    entries = sorted((cache / "features").glob("*.safetensors"))
    assert len(entries) == 3  # the training (train and val), test and mirrored test images
    return cache, metrics, entries


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: 8-byte header length, JSON header, then data
    data[header:] = bytes(len(data) - header)  # the data zeroed, the header intact
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_damaged_entry_is_reported_by_path_deleted_and_recomputed(cached_run, how, tiny_dataset, pretrained_file,
                                                                    tmp_path, capsys):
    cache, first, entries = cached_run
    for entry in entries:
        _damage(entry, how)
    capsys.readouterr()
    again = _features_run(tiny_dataset, pretrained_file, tmp_path / "again", cache)
    err = capsys.readouterr().err
    assert all(f"cache entry {entry} is damaged" in err for entry in entries), err[-2000:]
    assert again["test"]["confusion_matrix"] == first["test"]["confusion_matrix"]  # not a model of damaged features
    assert all(caches.load(entry.parent, entry.name.removesuffix(".safetensors")) is not None for entry in entries)


@pytest.mark.slow
def test_a_failed_cache_write_warns_and_the_run_goes_on(tiny_dataset, pretrained_file, tmp_path, monkeypatch, capsys):
    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)  # what a full disk leaves half-written
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(caches, "save_file", disk_full)
    cache = tmp_path / "cache"
    metrics = _features_run(tiny_dataset, pretrained_file, tmp_path / "run", cache)
    err = capsys.readouterr().err
    assert err.count("No space left on device); going on without caching it") == 5  # 2 decoded splits, 3 feature sets
    assert metrics["test"]["accuracy"] > 0 and (tmp_path / "run" / "model.safetensors").is_file()
    assert [path for path in cache.rglob("*") if path.is_file()] == []  # neither entries nor staging leftovers


def test_entries_round_trip_and_old_entries_without_a_digest_are_recomputed(tmp_path, capsys):
    tensors = {"features": torch.randn(5, 3), "labels": torch.arange(5)}
    assert caches.store(tmp_path, "key", tensors)
    loaded = caches.load(tmp_path, "key")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    from safetensors.torch import save_file
    save_file(tensors, str(tmp_path / "old.safetensors"))  # as written before entries carried a digest
    assert caches.load(tmp_path, "old") is None and "it has no digest" in capsys.readouterr().err
    assert not (tmp_path / "old.safetensors").exists()


def test_staging_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / "a.safetensors.partial-999999999-0badc0de"
    old_style = tmp_path / "b.partial-999999999"
    live = tmp_path / f"c.safetensors.partial-{os.getppid()}-1234abcd"  # the parent process: running
    for leftover in (dead, old_style, live):
        leftover.write_bytes(b"half")
    assert caches.store(tmp_path, "d", {"x": torch.ones(2)})
    assert not dead.exists() and not old_style.exists() and live.exists()
    os.utime(live, (time.time() - 3 * 24 * 3600,) * 2)  # days old: stale whatever its process
    caches.store(tmp_path, "e", {"x": torch.ones(2)})
    assert not live.exists()


def test_the_default_cache_dir_honours_xdg_cache_home(tmp_path):
    code = "from tl_space.settings import TrainSettings; print(TrainSettings().cache_dir)"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "xdg" / "tl-space")
    env.pop("XDG_CACHE_HOME")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "~/.cache/tl-space"
