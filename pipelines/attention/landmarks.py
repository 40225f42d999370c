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

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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


def _bins(size: int, out: int) -> list:
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def pooling_matrix(grid: Sequence[int], lgrid: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
    """``P`` (m × N) with ``P @ tokens == pool_tokens(tokens)`` (adaptive-average bins)."""
    h, w = grid[-2:]
    mh, mw = lgrid[-2:]
    plane = torch.zeros(mh * mw, h * w, dtype=torch.float64)
    for i, (r0, r1) in enumerate(_bins(h, mh)):
        for j, (c0, c1) in enumerate(_bins(w, mw)):
            cell = torch.zeros(h, w, dtype=torch.float64)
            cell[r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
            plane[i * mw + j] = cell.flatten()
    frames = grid[0] if len(grid) == 3 else 1
    matrix = torch.block_diag(*([plane] * frames)) if frames > 1 else plane
    return matrix.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class PooledBias:
    """An additive attention bias ``R`` (…, N, N) pooled onto the landmarks.

    ``query_to_landmark`` (…, N, m): ``R`` averaged over each landmark's keys, added to q k̃ᵀ.
    ``landmark_to_key`` (…, m, N): averaged over each landmark's queries, added to q̃ kᵀ.
    ``landmark_to_landmark`` (…, m, m): averaged over both, added to q̃ k̃ᵀ.
    Leading dims broadcast against the attention's leading dims like ``R`` would.
    """

    query_to_landmark: Tensor
    landmark_to_key: Tensor
    landmark_to_landmark: Tensor
    landmark_grid: Grid

    @classmethod
    def from_bias(cls, bias: Tensor, grid: Sequence[int], landmarks: int) -> "PooledBias":
        lgrid = landmark_grid(grid, landmarks)
        n = math.prod(grid)
        if bias.shape[-2:] != (n, n):
            raise ValueError(f"bias must end in ({n}, {n}) for grid {tuple(grid)}, got {tuple(bias.shape)}")
        work = bias.to(torch.promote_types(bias.dtype, torch.float32))
        pool = pooling_matrix(grid, lgrid, dtype=work.dtype, device=work.device)
        to_keys = torch.matmul(work, pool.t())  # (…, N, m)
        # Stored key-major (its transpose is contiguous): the fast kernel computes Bᵀ (N×m).
        from_queries = torch.matmul(work.transpose(-1, -2), pool.t()).transpose(-1, -2)  # (…, m, N)
        both = torch.matmul(from_queries, pool.t())  # (…, m, m)
        return cls(to_keys.contiguous(), from_queries, both.contiguous(), tuple(lgrid))

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "PooledBias":
        # The m×m part feeds the float32 pseudo-inverse: never store it below float32.
        small_dtype = None if dtype is None else torch.promote_types(dtype, torch.float32)
        return PooledBias(
            self.query_to_landmark.to(device=device, dtype=dtype),
            self.landmark_to_key.to(device=device, dtype=dtype),
            self.landmark_to_landmark.to(device=device, dtype=small_dtype),
            self.landmark_grid,
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.query_to_landmark, self.landmark_to_key, self.landmark_to_landmark))
