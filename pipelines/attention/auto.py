"""``auto`` mode: per layer shape, exact attention unless Nyström is measured clearly faster.

Nothing is guessed from FLOP counts, and noise must not buy an approximation:

* a per-process **floor**: the first time a layer with a small window (N ≤ 256) asks, exact and
  Nyström are timed on reference shapes (6 heads, head dim 32, 4096 tokens, a relative
  position bias) at N = 64, 144, 256; below the smallest N from which Nyström wins at every
  larger reference N, auto always runs exact, without measuring (at window 8 Nyström gains
  nothing on CPUs; a shared, loaded CPU must not make a layer there pick it by chance);
* above it, each new layer shape is **measured**: both kernels on synthetic inputs of exactly
  that shape with the layer's own biases, after a warm-up call each, in alternating order
  (exact-Nyström, Nyström-exact, ...) for 3 to 9 rounds (stopping early once the verdict is
  plain, or after about ``TIME_BUDGET_S``). Nyström is chosen only if its best time *and* its
  median are both more than ``MARGIN`` below exact's: load inflates times but never deflates
  them, so the best times are the robust comparison, and the median guards against one
  lucky run. Ties and noise go to exact.

Decisions are process-wide, keyed by device, dtype, window grid, N, heads, head dim,
landmarks, iters, bias layout, the number of windows rounded up to a power of two and the CPU
thread count. The first call of each auto layer shape pays the measurement.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, List, Optional, Sequence

import torch

from .bias import RelativePositionBias
from .exact import exact_attention
from .landmarks import landmark_grid
from .nystrom import nystrom_attention

MARGIN = 0.15  # Nyström must be more than 15 % faster (best and median) to be chosen
MIN_ROUNDS, MAX_ROUNDS = 3, 9
TIME_BUDGET_S = 4.0  # stop adding rounds once a measurement has taken this long
FLOOR_LADDER = (8, 12, 16)  # reference windows (N = 64, 144, 256) for the per-process floor
FLOOR_SHAPE = {"heads": 6, "head_dim": 32, "tokens": 4096}


@dataclass(frozen=True)
class Decision:
    choice: str  # "exact" | "nystrom"
    reason: str  # "measured" | "below floor N=…" | "landmarks >= N/2" | "grad enabled" | "fixed"
    exact_ms: Optional[float] = None
    nystrom_ms: Optional[float] = None


_decisions: Dict[Hashable, Decision] = {}
_floors: Dict[Hashable, int] = {}
_lock = threading.Lock()


def decision_key(q: torch.Tensor, grid, landmarks: int, iters: int, bias_layout: Hashable) -> Hashable:
    lead = q.shape[:-3]
    windows = math.prod(lead) if lead else 1
    bucket = 1 << max(0, windows - 1).bit_length()
    heads = q.shape[-3] if q.dim() >= 3 else 1
    return (str(q.device), q.dtype, tuple(grid), q.shape[-2], heads, q.shape[-1], landmarks, iters,
            bias_layout, bucket, _threads(q.device))


def _threads(device: torch.device) -> Optional[int]:
    return torch.get_num_threads() if device.type == "cpu" else None


def _timed(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _plain(exact_ms: Sequence[float], nystrom_ms: Sequence[float]) -> bool:
    """The verdict cannot change: Nyström's best no better than exact's best, or every
    Nyström run far (2 × MARGIN) faster than every exact run."""
    return (min(nystrom_ms) >= min(exact_ms)
            or max(nystrom_ms) < (1.0 - 2 * MARGIN) * min(exact_ms))


def measure(run_exact: Callable[[], object], run_nystrom: Callable[[], object], device: torch.device,
            min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS) -> Decision:
    """Time both, after a warm-up call each, in alternating order, and pick one (see ``choose``)."""
    exact: List[float] = []
    nystrom: List[float] = []
    with torch.inference_mode():
        run_exact()
        run_nystrom()
        start = time.perf_counter()
        for round_ in range(max_rounds):
            if round_ % 2 == 0:
                exact.append(_timed(run_exact, device))
                nystrom.append(_timed(run_nystrom, device))
            else:
                nystrom.append(_timed(run_nystrom, device))
                exact.append(_timed(run_exact, device))
            if round_ + 1 >= min_rounds and (_plain(exact, nystrom)
                                             or time.perf_counter() - start > TIME_BUDGET_S):
                break
    return choose(exact, nystrom)


def choose(exact_ms: Sequence[float], nystrom_ms: Sequence[float]) -> Decision:
    """Nyström only if both its best and its median time beat exact's by more than ``MARGIN``."""
    exact, nystrom = statistics.median(exact_ms), statistics.median(nystrom_ms)
    clear_win = nystrom < (1.0 - MARGIN) * exact and min(nystrom_ms) < (1.0 - MARGIN) * min(exact_ms)
    choice = "nystrom" if clear_win else "exact"
    return Decision(choice, "measured", round(exact, 3), round(nystrom, 3))


def decide(key: Hashable, run_exact: Callable[[], object], run_nystrom: Callable[[], object],
           device: torch.device) -> Decision:
    """The cached decision for ``key``, measured on first use (one measurement at a time)."""
    return _cached(_decisions, key, lambda: measure(run_exact, run_nystrom, device))


def _cached(store: dict, key: Hashable, compute: Callable[[], object]):
    """``store[key]``, computed under the lock on first use: measurements never overlap (they
    would time each other), and a value is measured once however many threads ask."""
    found = store.get(key)
    if found is not None:
        return found
    with _lock:
        found = store.get(key)
        if found is None:
            found = store[key] = compute()
    return found


# -- the per-process floor ----------------------------------------------------------------------


def _reference_runs(window: int, landmarks: int, iters: int, dtype: torch.dtype, device: torch.device):
    """Exact and Nyström on a reference Swin-like shape with a relative position bias."""
    gen = torch.Generator().manual_seed(window)
    heads, d, n = FLOOR_SHAPE["heads"], FLOOR_SHAPE["head_dim"], window * window
    shape = (max(1, FLOOR_SHAPE["tokens"] // n), heads, n, d)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    q = q * d**-0.5
    grid = (window, window)
    table = torch.randn((2 * window - 1) ** 2, heads, generator=gen) * 0.5
    position = RelativePositionBias(table, grid, grid)
    dense = position.dense(dtype=dtype, device=device)
    pooled = position.pooled(landmark_grid(grid, landmarks), dtype, device)
    return (lambda: exact_attention(q, k, v, dense),
            lambda: nystrom_attention(q, k, v, grid, landmarks, iters, bias=pooled))


def nystrom_floor(device: torch.device, dtype: torch.dtype, landmarks: int, iters: int) -> int:
    """Smallest N at which auto may consider Nyström (measured once per process and setting)."""
    def ladder() -> int:
        floor = FLOOR_LADDER[-1] ** 2 + 1  # Nyström wins nowhere on the ladder: measure above it
        for window in reversed(FLOOR_LADDER):
            if 2 * landmarks >= window * window:
                break
            if measure(*_reference_runs(window, landmarks, iters, dtype, device), device).choice != "nystrom":
                break
            floor = window * window
        return floor

    return _cached(_floors, (str(device), dtype, landmarks, iters, _threads(device)), ladder)


def floor_decision(q: torch.Tensor, grid: Sequence[int], landmarks: int, iters: int) -> Optional[Decision]:
    """Exact, without measuring, for windows below the floor; None where a measurement decides."""
    n = math.prod(grid)
    if n > FLOOR_LADDER[-1] ** 2:
        return None
    floor = nystrom_floor(q.device, q.dtype, landmarks, iters)
    return Decision("exact", f"below floor N={floor}") if n < floor else None


def auto_decisions() -> Dict[Hashable, Decision]:
    """A copy of every decision taken so far in this process."""
    return dict(_decisions)


def auto_floors() -> Dict[Hashable, int]:
    """The floors measured so far in this process."""
    return dict(_floors)


def reset_auto_decisions() -> None:
    with _lock:
        _decisions.clear()
        _floors.clear()
