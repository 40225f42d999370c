"""``auto`` mode: per layer shape, the measured-faster of exact and Nyström attention.

Nothing is guessed from FLOP counts: the first time a shape is seen, both kernels are timed on
synthetic inputs of exactly that shape with the layer's own (cached) biases, interleaved, and
Nyström is chosen only if its median is clearly lower (by ``MARGIN``); ties and noise go to
exact, so auto is never meaningfully slower than exact. Decisions are process-wide, keyed by
device, dtype, window grid, N, heads, head dim, landmarks, iters, bias layout, the number of
windows rounded up to a power of two, and the CPU thread count. Measuring costs a few calls
of the layer, once per key (and the first call of each auto layer pays it).
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Optional, Sequence

import torch

MARGIN = 0.10  # Nyström must be at least 10 % faster to be chosen
_REPEATS = 3


@dataclass(frozen=True)
class Decision:
    choice: str  # "exact" | "nystrom"
    reason: str  # "measured" | "landmarks >= N/2" | "grad enabled"
    exact_ms: Optional[float] = None
    nystrom_ms: Optional[float] = None


_decisions: Dict[Hashable, Decision] = {}
_lock = threading.Lock()


def decision_key(q: torch.Tensor, grid, landmarks: int, iters: int, bias_layout: Hashable) -> Hashable:
    lead = q.shape[:-3]
    windows = math.prod(lead) if lead else 1
    bucket = 1 << max(0, windows - 1).bit_length()
    heads = q.shape[-3] if q.dim() >= 3 else 1
    threads = torch.get_num_threads() if q.device.type == "cpu" else None
    return (str(q.device), q.dtype, tuple(grid), q.shape[-2], heads, q.shape[-1], landmarks, iters,
            bias_layout, bucket, threads)


def _timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(run_exact: Callable[[], object], run_nystrom: Callable[[], object], device: torch.device) -> Decision:
    """Time both (interleaved, after a warm-up call each) and pick one."""
    with torch.inference_mode():
        first = _timed(run_exact, device)
        _timed(run_nystrom, device)
        repeats = 1 if first > 1000 else _REPEATS
        exact, nystrom = [], []
        for _ in range(repeats):
            exact.append(_timed(run_exact, device))
            nystrom.append(_timed(run_nystrom, device))
    return choose(exact, nystrom)


def choose(exact_ms: Sequence[float], nystrom_ms: Sequence[float]) -> Decision:
    """Nyström only if both its median and its best time beat exact's by more than ``MARGIN``."""
    exact, nystrom = statistics.median(exact_ms), statistics.median(nystrom_ms)
    clear_win = nystrom < (1.0 - MARGIN) * exact and min(nystrom_ms) < (1.0 - MARGIN) * min(exact_ms)
    choice = "nystrom" if clear_win else "exact"
    return Decision(choice, "measured", round(exact, 3), round(nystrom, 3))


def decide(key: Hashable, run_exact: Callable[[], object], run_nystrom: Callable[[], object],
           device: torch.device) -> Decision:
    """The cached decision for ``key``, measured on first use (one measurement at a time)."""
    found = _decisions.get(key)
    if found is not None:
        return found
    with _lock:
        found = _decisions.get(key)
        if found is None:
            found = measure(run_exact, run_nystrom, device)
            _decisions[key] = found
    return found


def auto_decisions() -> Dict[Hashable, Decision]:
    """A copy of every decision taken so far in this process."""
    return dict(_decisions)


def reset_auto_decisions() -> None:
    with _lock:
        _decisions.clear()
