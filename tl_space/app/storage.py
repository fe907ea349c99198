"""The app's files on disk: one folder per process inside Gradio's cache, so that what it serves is never copied a
second time; bounded in bytes, oldest evicted first; removed at exit, on SIGTERM, and, for a killed process, at the
next start."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from gradio.utils import get_upload_folder

from tl_space.atomic import process_running

ROOT_NAME = "tl-space"
# What visitors' taught models and tables may hold on disk at once, in all; TAUGHT_STORAGE_MB changes it.
MAX_STORED_BYTES = 1024 * 1024 * 1024
logger = logging.getLogger("tl_space.app")


def app_root() -> Path:
    """Where every app process on this machine keeps its folder: Gradio's cache (GRADIO_TEMP_DIR)/tl-space."""
    return Path(get_upload_folder()) / ROOT_NAME


def remove_leftovers(root: Path | None = None) -> int:
    """Remove the folders of app processes that are gone (killed before their exit could); returns how many."""
    root = root or app_root()
    removed = 0
    for folder in root.glob("*") if root.is_dir() else []:
        gone = folder.name.isdigit() and int(folder.name) != os.getpid() and not process_running(int(folder.name))
        if folder.is_dir() and gone:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Storage:
    """This process's folder: public files written once (gallery images), and visitors' entries (a taught model's
    zip, a predictions table), each its own subfolder, whose total size is kept under max_bytes by removing the
    oldest."""

    def __init__(self, folder: Path, max_bytes: int = MAX_STORED_BYTES):
        self.folder = folder
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Path, int] = OrderedDict()
        self._lock = threading.Lock()

    def new_entry(self, prefix: str) -> Path:
        """A fresh, empty subfolder to write one visitor's entry into; call add() once it is written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.folder))

    def public_folder(self) -> Path:
        """A fresh subfolder for files written once and served for the process's lifetime (not counted)."""
        return self.new_entry("public-")

    def add(self, entry: Path) -> None:
        """Count a written entry; evict the oldest others while the total is over max_bytes."""
        size = sum(path.stat().st_size for path in entry.rglob("*") if path.is_file())
        with self._lock:
            self._entries[entry] = size
            while sum(self._entries.values()) > self.max_bytes and len(self._entries) > 1:
                oldest, _ = self._entries.popitem(last=False)
                shutil.rmtree(oldest, ignore_errors=True)
                logger.info("storage over %d MB: removed the oldest entry", self.max_bytes // 2**20)

    def remove(self, entry: Path) -> None:
        with self._lock:
            self._entries.pop(entry, None)
        shutil.rmtree(entry, ignore_errors=True)

    def stored_bytes(self) -> int:
        with self._lock:
            return sum(self._entries.values())

    def remove_all(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_storage: Storage | None = None
_storage_lock = threading.Lock()


def storage() -> Storage:
    """The process's Storage, made on first use: leftovers of dead processes removed first, its own folder removed at
    exit and on SIGTERM."""
    global _storage
    with _storage_lock:
        if _storage is None:
            remove_leftovers()
            limit = int(os.environ.get("TAUGHT_STORAGE_MB", MAX_STORED_BYTES // 2**20)) * 2**20
            _storage = Storage(app_root() / str(os.getpid()), limit)
            atexit.register(_storage.remove_all)
            _remove_on_sigterm(_storage)
        return _storage


def _remove_on_sigterm(store: Storage) -> None:
    """On SIGTERM (a Space stopping, `kill`, a test's terminate) remove the folder, then stop as Ctrl-C does, so that
    Gradio closes its server; the signal can only be handled from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        store.remove_all()
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def png_copies(images: list) -> list[str]:
    """Each image (PIL) written once as a PNG into the app's storage (inside Gradio's cache, so served from there,
    never copied), removed at exit.

    Given PIL images, Gradio would re-encode and rewrite the same cache file in place on every request, and a visitor
    fetching it meanwhile could get it half-written (bench/bench_app_load.py saw one such answer in 640 mixed
    requests).
    """
    folder = storage().public_folder()
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:03d}.png"
        image.save(path, format="PNG")
        paths.append(str(path))
    return paths
