"""Process-level settings that CPU inference depends on, applied by the CLI (and the benchmarks).

Kept out of import time: a library must not change process-wide behaviour by being imported.
Call :func:`configure_allocator` once, early, in a program that runs models on the CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

#: ``NYSTRA_MALLOC=system`` leaves the C allocator as the platform configures it.
ENV = "NYSTRA_MALLOC"

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_BYTES = 2**31 - 1  # mallopt takes an int: give memory back only past 2 GiB of free top

_lock = threading.Lock()
_state = {"done": False, "applied": False}


def configure_allocator() -> bool:
    """Keep large freed blocks in the process instead of handing them back to the OS (glibc).

    Why: glibc serves every block above 32 MiB with a fresh ``mmap`` and returns it with
    ``munmap`` on free, so each large temporary of a forward pass (a 640x360 frame's
    activations are 30-90 MB at embed 32) page-faults on first touch, on every frame. Measured on
    the 2-core CPU with the bundled x4 model at 640x360: 0.41 s -> 0.32 s a frame (LayerNorm
    alone 54 -> 25 ms), other models alike. With mmap off, freed blocks go back to the heap and
    the next frame reuses them; memory stays flat because frames repeat the same sizes, and the
    heap is trimmed past 2 GiB of free space at its top. (Threads other than the main one keep
    their own arenas, whose heaps hold blocks up to 64 MiB; larger ones still fall back to
    mmap there. Forcing one arena instead made SDPA at window 8 ~1.5x slower: its threads
    allocate inside parallel regions and then contend for the arena's lock.)

    Returns whether the settings were applied: not on other C libraries (musl, macOS,
    Windows), nor with ``NYSTRA_MALLOC=system``. Idempotent; applies to the calling process
    only (worker processes call it themselves).
    """
    with _lock:
        if _state["done"]:
            return _state["applied"]
        _state["done"] = True
        if os.environ.get(ENV, "").strip().lower() == "system":
            return False
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = all(mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_BYTES)))
        _state["applied"] = ok
        return ok
