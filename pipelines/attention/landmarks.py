"""Nyström landmarks of a window: where they sit, how tokens and biases are pooled onto them.

A window's tokens lie on a grid ``(h, w)`` (or ``(t, h, w)`` for video windows), row-major,
``N = prod(grid)``. Landmarks are average-pooled tokens on a coarser grid with
``F.adaptive_avg_pool2d`` semantics: landmark row ``i`` of ``mh`` covers token rows
``floor(i*h/mh) .. ceil((i+1)*h/mh) - 1`` (bins may overlap when ``mh`` does not divide ``h``).

3-D windows: the time axis is never pooled (each frame-slice keeps its own landmarks) and
``landmarks`` is the *total* budget, spread evenly over the ``t`` frames
(``round(landmarks / t)`` per frame, at least 1). This keeps the cost of the paper's RVRT
setting (window (2, 64, 64), m = 32: 2 × 16 landmarks) instead of doubling it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Grid = Tuple[int, ...]


def _factor_pairs(m: int):
    """(a, b) with a * b == m and a <= b, the squarest first."""
    pairs = [(a, m // a) for a in range(1, math.isqrt(m) + 1) if m % a == 0]
    return sorted(pairs, key=lambda p: p[1] - p[0])


def _spatial_landmarks(h: int, w: int, m: int) -> Tuple[int, int]:
    """The (mh, mw) factor pair of ``m`` closest to square that fits in an ``h × w`` grid."""
    if m >= h * w:
        return h, w  # as many landmarks as tokens: every token is its own landmark
    for a, b in _factor_pairs(m):
        # The longer side of the landmark grid goes along the longer side of the window
        # (along w for square windows: 32 -> 4 x 8).
        mh, mw = (b, a) if h > w else (a, b)
        if mh <= h and mw <= w:
            return mh, mw
    # No pair fits (a very elongated window): use fewer landmarks rather than duplicates.
    a, b = _factor_pairs(m)[0]
    return min(a, h), min(b, w)


def landmark_grid(grid: Sequence[int], landmarks: int) -> Grid:
    """The landmark grid for a window grid: ``(mh, mw)`` or ``(t, mh, mw)``."""
    grid = tuple(int(g) for g in grid)
    if landmarks < 1:
        raise ValueError(f"landmarks must be >= 1, got {landmarks}")
    if len(grid) == 2:
        return _spatial_landmarks(grid[0], grid[1], landmarks)
    if len(grid) == 3:
        t, h, w = grid
        per_frame = max(1, round(landmarks / t))
        return (t,) + _spatial_landmarks(h, w, per_frame)
    raise ValueError(f"window grid must be (h, w) or (t, h, w), got {grid}")


def pool_tokens(x: Tensor, grid: Sequence[int], lgrid: Sequence[int]) -> Tensor:
    """Average-pool tokens ``(B, N, d)`` laid out on ``grid`` to landmarks ``(B, m, d)``."""
    batch, n, d = x.shape
    if x.device.type == "cpu" and not x.is_contiguous() and x.stride(-1) == 1:
        # q and k usually arrive as strided views of a fused qkv output: the pooling kernel
        # would first copy them whole (measured at 640x360, embed 32: the copy cost more than
        # the pooling). A product with the (m × N) averaging matrix reads the view in place.
        matrix = _cached_pooling_matrix(tuple(grid), tuple(lgrid), x.dtype, x.device)
        return torch.bmm(matrix.expand(batch, *matrix.shape), x)
    h, w = grid[-2:]
    frames = n // (h * w)
    # (B*t, h, w, d) permuted to (B*t, d, h, w) is a channels-last tensor: the pooling
    # kernel reads it in place, and permuting back gives a contiguous (B*t, mh, mw, d).
    # (Two strided sums over equal bins are ~30 % faster on an idle CPU, but they are four
    # parallel regions instead of one, which costs far more when other processes compete
    # for the cores: each region then waits for a descheduled thread.)
    planes = x.reshape(batch * frames, h, w, d).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(planes, tuple(lgrid[-2:]))
    return pooled.permute(0, 2, 3, 1).reshape(batch, -1, d)


def bins(size: int, out: int) -> List[Tuple[int, int]]:
    """Adaptive-average-pool bins: bin ``i`` covers ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def pooling_matrix(grid: Sequence[int], lgrid: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
    """``P`` (m × N) with ``P @ tokens == pool_tokens(tokens)`` (adaptive-average bins).

    Built with Python loops: cache it (the kernels use it only for strided CPU inputs).
    """
    h, w = grid[-2:]
    mh, mw = lgrid[-2:]
    plane = torch.zeros(mh * mw, h * w, dtype=torch.float64)
    for i, (r0, r1) in enumerate(bins(h, mh)):
        for j, (c0, c1) in enumerate(bins(w, mw)):
            cell = torch.zeros(h, w, dtype=torch.float64)
            cell[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
            plane[i * mw + j] = cell.flatten()
    frames = grid[0] if len(grid) == 3 else 1
    matrix = torch.block_diag(*([plane] * frames)) if frames > 1 else plane
    return matrix.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _cached_pooling_matrix(grid: Grid, lgrid: Grid, dtype: torch.dtype, device: torch.device) -> Tensor:
    return pooling_matrix(grid, lgrid, dtype, device)


def pool_keys(x: Tensor, grid: Sequence[int], lgrid: Sequence[int]) -> Tensor:
    """``(..., R, N)`` averaged over each landmark's tokens along the last axis: ``(..., R, m)``.

    Reads ``x`` once and allocates only the result (no pooling matrix, no copy of ``x``).
    """
    h, w = grid[-2:]
    lead = x.shape[:-1]
    planes = x.reshape(-1, h, w)  # (… * R * frames, h, w); a view for contiguous x
    pooled = F.adaptive_avg_pool2d(planes.unsqueeze(0), tuple(lgrid[-2:]))
    return pooled.reshape(*lead, -1)


def pool_queries(x: Tensor, grid: Sequence[int], lgrid: Sequence[int]) -> Tensor:
    """``(..., N, C)`` averaged over each landmark's tokens along the second-to-last axis: ``(..., m, C)``."""
    n, c = x.shape[-2:]
    lead = x.shape[:-2]
    return pool_tokens(x.reshape(-1, n, c), grid, lgrid).reshape(*lead, -1, c)


@dataclass(frozen=True)
class PooledBias:
    """An additive attention bias ``R`` (…, N, N) pooled onto the landmarks.

    ``query_to_landmark`` (…, N, m): ``R`` averaged over each landmark's keys, added to q k̃ᵀ.
    ``landmark_to_key`` (…, m, N): averaged over each landmark's queries, added to q̃ kᵀ
    (stored key-major: its transpose is contiguous, the kernel computes Bᵀ).
    ``landmark_to_landmark`` (…, m, m): averaged over both, added to q̃ k̃ᵀ (float32 or wider).
    Leading dims broadcast against the attention's leading dims like ``R`` would, except for a
    term with ``runs``: it covers only those windows (``(start, stop)`` ranges along the window
    axis, ``q``'s 4th-from-last), its first dim being their concatenation.
    """

    query_to_landmark: Tensor
    landmark_to_key: Tensor
    landmark_to_landmark: Tensor
    landmark_grid: Grid
    runs: Optional[Tuple[Tuple[int, int], ...]] = None
    window_index: Optional[Tensor] = None  # the windows of ``runs``, as an index

    def __post_init__(self) -> None:
        if self.runs is not None and self.window_index is None:
            index = [w for a, b in self.runs for w in range(a, b)]
            object.__setattr__(self, "window_index",
                               torch.tensor(index, dtype=torch.long, device=self.query_to_landmark.device))

    @classmethod
    def make(cls, to_keys: Tensor, from_queries: Tensor, both: Tensor, lgrid: Sequence[int],
             dtype: Optional[torch.dtype] = None, runs=None) -> "PooledBias":
        """From the three averages (any dtype), laid out and typed as the kernels read them."""
        dtype = dtype or to_keys.dtype
        small = torch.promote_types(dtype, torch.float32)  # A feeds the float32 pseudo-inverse
        return cls(to_keys.to(dtype).contiguous(),
                   from_queries.transpose(-1, -2).to(dtype).contiguous().transpose(-1, -2),
                   both.to(small).contiguous(), tuple(lgrid), runs)

    @classmethod
    def empty(cls, lgrid: Sequence[int], runs=()) -> "PooledBias":
        """A term covering no window."""
        m = math.prod(lgrid)
        nothing = torch.zeros(0, 1, 0, m)
        return cls(nothing, nothing.transpose(-1, -2), torch.zeros(0, 1, m, m), tuple(lgrid), tuple(runs))

    @classmethod
    def from_bias(cls, bias: Tensor, grid: Sequence[int], landmarks: Optional[int] = None,
                  lgrid: Optional[Sequence[int]] = None) -> "PooledBias":
        """Pool a dense bias by averaging over landmark bins (reshape-and-mean semantics of
        adaptive average pooling); no N×N temporary besides ``bias`` itself."""
        lgrid = tuple(lgrid) if lgrid is not None else landmark_grid(grid, landmarks)
        n = math.prod(grid)
        if bias.shape[-2:] != (n, n):
            raise ValueError(f"bias must end in ({n}, {n}) for grid {tuple(grid)}, got {tuple(bias.shape)}")
        work = torch.promote_types(bias.dtype, torch.float32)
        dense = bias if bias.dtype == work else bias.to(work)
        to_keys = pool_keys(dense, grid, lgrid)  # (…, N, m)
        from_queries = pool_queries(dense, grid, lgrid)  # (…, m, N)
        both = pool_queries(to_keys, grid, lgrid)  # (…, m, m)
        return cls.make(to_keys, from_queries, both, lgrid, bias.dtype if bias.is_floating_point() else work)

    @property
    def windows(self) -> Optional[int]:
        """Windows covered by a ``runs`` term (None: a term broadcast over every window)."""
        return None if self.runs is None else sum(b - a for a, b in self.runs)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "PooledBias":
        # The m×m part feeds the float32 pseudo-inverse: never store it below float32.
        small_dtype = None if dtype is None else torch.promote_types(dtype, torch.float32)
        return PooledBias(
            self.query_to_landmark.to(device=device, dtype=dtype),
            self.landmark_to_key.to(device=device, dtype=dtype),
            self.landmark_to_landmark.to(device=device, dtype=small_dtype),
            self.landmark_grid,
            self.runs,
            None if self.window_index is None else self.window_index.to(device),
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.query_to_landmark, self.landmark_to_key, self.landmark_to_landmark))
