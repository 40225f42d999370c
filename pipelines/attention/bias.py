"""Window-attention biases in factored form: what they are, never more of them than needed.

A window layer's additive bias is a relative position bias ``R`` (heads, N, N), the same for
every window, plus, for shifted windows, a mask ``M`` (nW, N, N) that depends on geometry only
(-100 between tokens that were not neighbours before the cyclic shift). Materialised together
they are ``(nW, heads, N, N)``: gigabytes per layer at large windows. So models describe them
instead (``make_bias`` returns a :class:`WindowBias`), and the attention core builds only what
a kernel needs:

* :class:`RelativePositionBias`: the learnt table and the window geometry. Dense rows are
  gathered on demand, a few heads at a time if need be; the pooled (Nyström) form is computed
  from the table by box sums over offsets, without any N×N tensor.
* :class:`RegionMask`: per-window region labels ``(nW, N)``. Only *mixed* windows (tokens from
  more than one region; for Swin, the last row and column of windows) have a non-zero mask;
  its pooled form comes from per-landmark label fractions, again without N×N.

A dense ``Tensor`` is accepted wherever a term is (e.g. a checkpoint's stored mask); it is
pooled by averaging (adaptive-average-pool semantics).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Hashable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .landmarks import Grid, PooledBias, bins, pool_tokens

Runs = Tuple[Tuple[int, int], ...]


def window_runs(selected: Tensor) -> Runs:
    """Maximal runs ``(start, stop)`` of consecutive True entries of a 1-D bool tensor."""
    flags = selected.to("cpu", torch.bool).tolist()
    runs, start = [], None
    for i, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return tuple(runs)


def _offset_strides(span: Sequence[int]) -> List[int]:
    """Row strides of the table's offsets, row-major over axes of extent ``2s - 1``."""
    strides, step = [], 1
    for s in reversed(span):
        strides.append(step)
        step *= 2 * s - 1
    return strides[::-1]


def _coords(grid: Sequence[int], device) -> Tensor:
    """(len(grid), N) coordinates of the grid's tokens, row-major."""
    axes = [torch.arange(g, device=device) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)


@dataclass(frozen=True, eq=False)
class RelativePositionBias:
    """``R[h, i, j] = table[offset(i − j), h]`` for tokens ``i, j`` of a window ``grid``.

    ``table``: ``(prod(2s − 1 for s in span), heads)``, rows row-major over the per-axis offsets
    ``i_a − j_a + s_a − 1`` (the Swin / Uformer / RVRT layout). ``span``: the window the table
    was made for (``grid`` may be smaller, e.g. an input smaller than the window).
    ``index``: optionally the model's own ``(N, N)`` row index for this grid (saves computing
    it when gathering dense rows).
    """

    table: Tensor
    span: Grid
    grid: Grid
    index: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if len(self.span) != len(self.grid) or any(g > s for g, s in zip(self.grid, self.span)):
            raise ValueError(f"grid {self.grid} does not fit the table's window {self.span}")
        if self.table.shape[0] != math.prod(2 * s - 1 for s in self.span):
            raise ValueError(f"table has {self.table.shape[0]} rows, not prod(2s-1) for window {self.span}")

    @property
    def heads(self) -> int:
        return self.table.shape[1]

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.heads, self.tokens, self.tokens)

    def dense(self, heads: slice = slice(None), dtype: Optional[torch.dtype] = None,
              device=None) -> Tensor:
        """``(h, N, N)`` rows of the bias for the heads ``heads`` (differentiable in the table)."""
        table = self.table.t()[heads]
        if device is not None or dtype is not None:
            table = table.to(device=device, dtype=dtype)
        table = table.contiguous()
        n = self.tokens
        if self.index is not None:
            index = self.index.to(table.device).reshape(-1)
        else:  # row of (i, j) = base(i) - step(j): no stored index needed
            strides = torch.tensor(_offset_strides(self.span), device=table.device)
            coords = _coords(self.grid, table.device)
            span = torch.tensor(self.span, device=table.device)
            base = ((coords + (span - 1)[:, None]) * strides[:, None]).sum(0)
            step = (coords * strides[:, None]).sum(0)
            index = (base[:, None] - step[None, :]).reshape(-1)
        return table.index_select(1, index).view(-1, n, n)

    def pooled(self, lgrid: Sequence[int], dtype: torch.dtype = torch.float32, device=None) -> PooledBias:
        """The bias pooled onto landmarks, straight from the table (no N×N tensor).

        The F part for query ``i`` and landmark ``l`` is the mean of ``R[i, j]`` over ``l``'s
        keys, i.e. the mean of the table over a box of offsets: computed with a summed-area
        table (float64) for every (query, landmark) at once. B likewise over each landmark's
        queries; A is F averaged over each landmark's queries.
        """
        device = self.table.device if device is None else device
        lgrid = tuple(lgrid)
        dims = len(self.grid)
        table = self.table.detach().to(device=device, dtype=torch.float64).t()
        table = table.reshape(self.heads, *[2 * s - 1 for s in self.span])

        def box_means(to_keys: bool) -> Tensor:
            """(heads, N, m): per token, the bias averaged over each landmark's bin of tokens on
            the other side. A box mean over offsets is separable: one interval mean per axis."""
            x = table
            for axis, (g, lg, s) in enumerate(zip(self.grid, lgrid, self.span)):
                coord = torch.arange(g, device=device)[:, None]
                edges = torch.tensor(bins(g, lg), device=device)
                lo, hi = edges[:, 0][None, :], edges[:, 1][None, :]
                if to_keys:  # offsets i - j + s - 1 over keys j in [lo, hi), for each query i
                    start, stop = coord + s - hi, coord + s - lo
                else:  # over queries i in [lo, hi), for each key j
                    start, stop = lo + s - 1 - coord, hi + s - 1 - coord
                summed = torch.nn.functional.pad(x.cumsum(1 + axis), (0, 0) * (dims - 1 - axis) + (1, 0))
                width = (stop - start).reshape(-1).to(torch.float64).view([-1] + [1] * (dims - 1 - axis))
                x = (summed.index_select(1 + axis, stop.reshape(-1))
                     - summed.index_select(1 + axis, start.reshape(-1))) / width
            # (heads, g0*m0, g1*m1, ...) -> (heads, g0, g1, ..., m0, m1, ...)
            x = x.reshape(self.heads, *[v for g, lg in zip(self.grid, lgrid) for v in (g, lg)])
            order = [0] + [1 + 2 * a for a in range(dims)] + [2 + 2 * a for a in range(dims)]
            return x.permute(order).reshape(self.heads, self.tokens, -1)

        to_keys = box_means(True)
        from_queries = box_means(False)  # (heads, N_keys, m): stored key-major, like the kernel's Bᵀ
        both = pool_tokens(to_keys, self.grid, lgrid)
        return PooledBias.make(to_keys, from_queries.transpose(-1, -2), both, lgrid, dtype)


@dataclass(frozen=True, eq=False)
class RegionMask:
    """``M[w, i, j] = value`` where ``labels[w, i] != labels[w, j]``, else 0 (shifted windows).

    ``labels``: ``(nW, N)`` integer region of every token of every window. ``key``: names the
    geometry (equal keys mean equal labels), so that every layer with the same geometry shares
    one cached copy of whatever is derived from it; by default a digest of the labels.
    """

    labels: Tensor
    value: float = -100.0
    key: Hashable = None
    mixed: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.labels.dim() != 2:
            raise ValueError(f"region labels must be (windows, N), got {tuple(self.labels.shape)}")
        labels = self.labels.detach()
        if not labels.is_floating_point() and labels.numel() and -128 <= int(labels.min()) and int(labels.max()) < 128:
            labels = labels.to(torch.int8)  # a few regions: kept small (one per token per window)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "mixed", labels.amin(1) != labels.amax(1))
        if self.key is None:
            digest = hashlib.blake2b(labels.to("cpu", torch.int64).numpy().tobytes(), digest_size=16).hexdigest()
            object.__setattr__(self, "key", ("regions", tuple(labels.shape), float(self.value), digest))

    @property
    def windows(self) -> int:
        return self.labels.shape[0]

    @property
    def shape(self) -> Tuple[int, int, int]:
        n = self.labels.shape[1]
        return (self.windows, n, n)

    def dense_rows(self, windows: Optional[Tensor] = None, dtype: torch.dtype = torch.float32,
                   device=None) -> Tensor:
        """``(w, N, N)`` mask of the windows ``windows`` (an index; None: all)."""
        labels = self.labels if windows is None else self.labels.index_select(0, windows.to(self.labels.device))
        labels = labels.to(device)
        differ = labels[:, :, None] != labels[:, None, :]
        return torch.zeros(differ.shape, dtype=dtype, device=differ.device).masked_fill_(differ, self.value)

    def pooled(self, grid: Sequence[int], lgrid: Sequence[int], dtype: torch.dtype = torch.float32,
               device=None) -> PooledBias:
        """The mask pooled onto landmarks for the mixed windows only (the others' is 0).

        With ``p[w, l, r]`` the fraction of landmark ``l``'s tokens in region ``r``, the F part
        is ``value · (1 − p[w, l, label(i)])``; the mask is symmetric with the same bins on both
        sides, so B is F transposed, and A is F averaged over each landmark's queries.
        """
        runs = window_runs(self.mixed)
        labels = self.labels[self.mixed].to(device)
        if labels.shape[0] == 0:
            return PooledBias.empty(lgrid, runs)
        _, compact = torch.unique(labels, return_inverse=True)
        onehot = torch.nn.functional.one_hot(compact).to(torch.float64)  # (nMixed, N, regions)
        fractions = pool_tokens(onehot, grid, lgrid)  # (nMixed, m, regions)
        to_keys = self.value * (1.0 - onehot @ fractions.transpose(-1, -2))  # (nMixed, N, m)
        both = pool_tokens(to_keys, grid, lgrid)
        return PooledBias.make(to_keys.unsqueeze(1), to_keys.transpose(-1, -2).unsqueeze(1), both.unsqueeze(1),
                               lgrid, dtype, runs=runs)


def dense_mask_mixed(mask: Tensor) -> Tensor:
    """Which windows of a dense ``(nW, N, N)`` mask are not all zero."""
    return mask.reshape(mask.shape[0], -1).ne(0).any(1)


def pooled_dense_mask(mask: Tensor, grid: Sequence[int], lgrid: Sequence[int],
                      dtype: torch.dtype = torch.float32) -> PooledBias:
    """A dense ``(nW, N, N)`` mask pooled for its non-zero windows (one window at a time)."""
    mixed = dense_mask_mixed(mask)
    runs = window_runs(mixed)
    if not runs:
        return PooledBias.empty(lgrid, runs)
    parts = [PooledBias.from_bias(mask[w:w + 1], grid, lgrid=lgrid) for w in mixed.nonzero().flatten().tolist()]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts]).unsqueeze(1)  # noqa: E731
    return PooledBias.make(cat("query_to_landmark"), cat("landmark_to_key"), cat("landmark_to_landmark"),
                           lgrid, dtype, runs=runs)


Position = Union[RelativePositionBias, Tensor, None]
Mask = Union[RegionMask, Tensor, None]


@dataclass(frozen=True, eq=False)
class WindowBias:
    """A window layer's additive bias as two terms: ``position`` (heads, N, N) + ``mask`` (nW, N, N).

    What ``make_bias`` returns in factored form (a plain dense tensor is accepted too). The mask
    applies along the window axis of the attention inputs (``q`` is ``(..., nW, heads, N, d)``).
    """

    position: Position = None
    mask: Mask = None

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape the bias would have if materialised."""
        pos = () if self.position is None else tuple(self.position.shape)
        if self.mask is None:
            return pos
        heads = pos[-3] if len(pos) == 3 else 1
        return (self.mask.shape[0], heads) + tuple(self.mask.shape[-2:])

    def dense(self) -> Optional[Tensor]:
        """Everything materialised (small windows, training): ``(heads, N, N)`` or ``(nW, heads, N, N)``."""
        pos = self.position.dense() if isinstance(self.position, RelativePositionBias) else self.position
        if self.mask is None:
            return pos
        mask = self.mask
        if isinstance(mask, RegionMask):
            rows = mask.dense_rows(dtype=torch.float32 if pos is None else pos.dtype,
                                   device=None if pos is None else pos.device).unsqueeze(1)
            return rows if pos is None else rows + (pos if pos.dim() == 3 else pos.unsqueeze(0))
        if pos is None:
            return mask.unsqueeze(1)
        return (pos if pos.dim() == 3 else pos.unsqueeze(0)).unsqueeze(0) + mask.to(pos.dtype).unsqueeze(1)
