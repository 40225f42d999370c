"""Per-thread scratch buffers for the attention kernels.

Nyström's large temporaries (the N×m kernel matrices) are the same shape call after call.
Allocating them fresh costs page faults on every call on CPU (the allocator hands large
blocks back to the OS), which at window 32 is a sizeable share of the kernel's time. Each
thread keeps its own buffers (threads running models concurrently never share one), keyed by
role, shape, dtype, device and inference mode (an inference-mode tensor cannot be written
outside inference mode), and bounded in bytes with least-recently-used eviction.

Buffers are scratch only: a kernel never returns one.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from typing import Hashable, Iterator, Sequence

import torch
from torch import Tensor

#: Per-thread byte budget; set NYSTRA_WORKSPACE_MB=0 to disable reuse.
BUDGET_BYTES = int(float(os.environ.get("NYSTRA_WORKSPACE_MB", "512")) * 2**20)


class _Workspace(threading.local):
    def __init__(self) -> None:
        self.buffers: "OrderedDict[Hashable, Tensor]" = OrderedDict()
        self.nbytes = 0

    def take(self, role: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (role, tuple(shape), dtype, device, torch.is_inference_mode_enabled())
        buf = self.buffers.get(key)
        if buf is not None:
            self.buffers.move_to_end(key)
            return buf
        buf = torch.empty(shape, dtype=dtype, device=device)
        size = buf.numel() * buf.element_size()
        if size > BUDGET_BYTES:
            return buf  # too big to keep: plain temporary
        while self.buffers and self.nbytes + size > BUDGET_BYTES:
            _, old = self.buffers.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()
        self.buffers[key] = buf
        self.nbytes += size
        return buf

    def clear(self) -> None:
        self.buffers.clear()
        self.nbytes = 0


_WORKSPACE = _Workspace()


def scratch(role: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised buffer owned by this thread, reused across calls with the same key.

    CUDA has its own caching allocator, so only CPU buffers are kept.
    """
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    return _WORKSPACE.take(role, shape, dtype, device)


def clear_workspace() -> None:
    """Drop this thread's buffers (e.g. after a run at an unusual size)."""
    _WORKSPACE.clear()


@contextlib.contextmanager
def serial(device: torch.device) -> Iterator[None]:
    """Run a block of *tiny* CPU kernels on this thread alone.

    Every multi-threaded CPU kernel is a parallel region, and with ``OMP_WAIT_POLICY=PASSIVE``
    (which the CLI sets so that idle threads do not spin on shared cores) each region first
    wakes the sleeping pool threads: 30-55 µs, measured, against 2-20 µs of arithmetic for the
    (m × m) pseudo-inverse products. Dropping to one thread for such a block skips the wake-ups
    (a window-32 Nyström call's pinv went from 0.80 to 0.25 ms). Only for small work: large
    kernels must keep every core.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
