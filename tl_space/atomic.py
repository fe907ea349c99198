"""Files and folders that readers see whole or not at all, even across a kill or a power cut.

Every write goes to a staging name unique to its writer, is fsynced, and is then renamed over the target; the parent
folder is fsynced after the rename. Staging leftovers of writers that died are removed by the next writer.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

STAGING_MARK = ".partial-"
# A leftover whose writer still runs on this machine is kept unless it is this old: it may be another machine's.
STALE_SECONDS = 24 * 3600


def staging_path(target: Path) -> Path:
    """A hidden sibling of target, unique to this process and call: .<name>.partial-<pid>-<random>."""
    return target.with_name(f".{target.name}{STAGING_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under folder, the folder itself last."""
    for root, folders, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        for name in folders:
            fsync_path(Path(root) / name)
    fsync_path(folder)


def write_file(target: Path, write: Callable[[Path], None]) -> Path:
    """Call write(staging_path), then put that file in place of target; no reader ever sees a partial target."""
    target = Path(target)
    remove_stale_staging(target)
    staging = staging_path(target)
    try:
        write(staging)
        fsync_path(staging)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)
    return target


def write_text(target: Path, text: str) -> Path:
    return write_file(target, lambda path: path.write_text(text))


def previous_path(target: Path) -> Path:
    """Where replace_folder keeps target's old content between its two renames."""
    return target.with_name(f".{target.name}.previous")


def replace_folder(staging: Path, target: Path, previous: Path | None = None) -> Path:
    """Swap a fully written staging folder in for target. A kill between the two renames leaves the old target
    at previous (default previous_path(target)), which recover_folder puts back."""
    fsync_tree(staging)
    previous = previous or previous_path(target)
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
        fsync_path(target.parent)
    staging.rename(target)
    fsync_path(target.parent)
    shutil.rmtree(previous, ignore_errors=True)
    return target


def recover_folder(target: Path) -> bool:
    """Undo a replace_folder killed between its renames: the old target comes back. Returns whether it did."""
    previous = previous_path(target)
    if target.exists() or not previous.is_dir():
        return False
    previous.rename(target)
    fsync_path(target.parent)
    return True


def _writer_pid(path: Path) -> int | None:
    try:
        return int(path.name.rsplit(STAGING_MARK, 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def process_running(pid: int) -> bool:
    """Whether a process of that id runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """A staging leftover whose writer no longer runs here, or older than STALE_SECONDS."""
    pid = _writer_pid(path)
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return pid is None or not process_running(pid) or age > STALE_SECONDS


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging leftovers of target's earlier writers that died; returns what was removed."""
    return _remove_stale(Path(target).parent, f".{Path(target).name}{STAGING_MARK}*")


def sweep_stale_staging(folder: Path) -> list[Path]:
    """Delete every staging leftover in folder whose writer died (a cache folder's, say)."""
    return _remove_stale(Path(folder), f"*{STAGING_MARK}*")


def _remove_stale(folder: Path, pattern: str) -> list[Path]:
    removed = []
    if not folder.is_dir():
        return removed
    for leftover in folder.glob(pattern):
        if _writer_pid(leftover) == os.getpid() or not is_stale(leftover):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed
