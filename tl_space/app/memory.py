"""A server's memory kept flat: glibc's allocator told to return large buffers and not to grow one heap per thread."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Measured by bench/bench_app_load.py (16 clients x 40 mixed requests): with glibc's defaults the app's resident memory
# grew by 126 MB over the second half of the load; with these settings it stayed within a few MB, at the same speed.
ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024


def bound_native_memory() -> bool:
    """Tell glibc to keep at most ARENA_MAX heaps and to give every buffer of MMAP_THRESHOLD bytes or more its own
    mapping, returned to the system when freed. Gradio runs requests on a pool of threads: by default each thread
    that allocates gets a heap of its own, and freed image and tensor buffers stay in them as fragments.

    Does nothing where the allocator is not glibc's, or where MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ set it
    already; returns whether it applied the settings.
    """
    if "MALLOC_ARENA_MAX" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
