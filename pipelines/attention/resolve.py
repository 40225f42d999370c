"""From one layer's bias description to what a kernel needs, through the byte-bounded store.

:class:`LayerBiases` answers, for one call of one layer, "the dense position bias", "the
pooled terms for these landmarks", ...: from :data:`~pipelines.attention.store.STORE` when
cached, built otherwise (and kept if the store admits it). :func:`exact_with_bias` runs exact
attention over a layer's windows without ever materialising more than it must:

* no mask: one SDPA call with the ``(heads, N, N)`` position bias; if the store refuses to
  keep that, it is built a few heads at a time (at most ``NYSTRA_BIAS_CHUNK_MB``, default
  256 MB, per piece) and attention runs per head group;
* shifted windows: the mask is zero on every window whose tokens share one region (all but
  the last row and column of windows for Swin), so those windows run together with the
  position bias alone, and only the *mixed* windows get position + mask: cached if admitted,
  else built per call in pieces of at most the same size (the mask rows of mixed windows are
  geometry only and cached once for all layers). Small layers whose full
  ``(nW, heads, N, N)`` bias is at most ``SMALL_FULL_BYTES`` keep the one-call form instead.

Nyström never needs dense biases: its pooled terms come from the table and the labels
(:mod:`.bias`), the position term per layer, the mask term shared by all layers.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Hashable, List, Optional, Tuple

import torch
from torch import Tensor

from .bias import RegionMask, RelativePositionBias, WindowBias, dense_mask_mixed, pooled_dense_mask
from .exact import exact_attention
from .guard import gather_rows
from .landmarks import Grid, PooledBias
from .store import STORE, BiasStore, nbytes_of

#: Largest transient bias piece built per call when a bias is not cached.
CHUNK_BYTES = int(float(os.environ.get("NYSTRA_BIAS_CHUNK_MB", "256")) * 2**20)
#: A shifted layer whose whole (nW, heads, N, N) bias is at most this uses it whole (one call).
SMALL_FULL_BYTES = 64 << 20


class LayerBiases:
    """One call's view of a layer's bias: cached pieces from the store, or built ones.

    ``desc``: the layer's :class:`WindowBias`; ``dense_factory``: instead of ``desc``, a
    function returning an opaque dense bias (models whose ``make_bias`` returns a tensor);
    ``owner`` / ``generation``: the layer's store identity (``owner=None``: cache nothing);
    ``key``: the frozen bias key (names dense terms that cannot be shared across layers).
    """

    def __init__(self, desc: Optional[WindowBias], grid: Grid, device: torch.device, dtype: torch.dtype,
                 owner: Optional[int] = None, generation: int = 0, key: Hashable = None,
                 dense_factory: Optional[Callable[[], Tensor]] = None, store: BiasStore = STORE) -> None:
        self.desc = desc
        self.grid = tuple(grid)
        self.device, self.dtype = device, dtype
        self.owner, self.generation, self.key = owner, generation, key
        self.dense_factory = dense_factory
        self.store = store
        self._mixed: Optional[Tensor] = None

    # -- store plumbing -----------------------------------------------------------------------------

    def _own(self, *parts) -> Hashable:
        return ("layer", self.owner, self.generation, self.device, self.dtype) + parts

    def _shared(self, *parts) -> Hashable:
        return ("shared", self.device, self.dtype) + parts

    def _cached(self, key: Hashable, build: Callable[[], object], owner: Optional[int]) -> object:
        """Look up, else build (and keep it if the store admits a value of its size)."""
        if self.owner is None:
            return build()
        found = self.store.lookup(key)
        if found is not None:
            return found
        value = build()
        if value is not None and self.store.reserve(key, nbytes_of(value)):
            self.store.put(key, value, owner)
        return value

    def _whole(self, key: Hashable, nbytes: int, build: Callable[[], Tensor]) -> Optional[Tensor]:
        """The cached value, or built and kept if the store admits it; None if refused.
        (Shared keys are kept without an owner.)"""
        if self.owner is None:
            return None
        found = self.store.lookup(key)
        if found is not None:
            return found
        if not self.store.reserve(key, nbytes):
            return None
        value = build()
        self.store.put(key, value, None if key[0] == "shared" else self.owner)
        return value

    @property
    def itemsize(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    # -- dense ----------------------------------------------------------------------------------------

    @property
    def opaque(self) -> bool:
        return self.dense_factory is not None

    def opaque_dense(self) -> Optional[Tensor]:
        """An opaque (model-built) dense bias: cached if admitted, else built for this call."""
        return self._cached(self._own("dense", self.key),
                            lambda: _convert(self.dense_factory(), self.device, self.dtype), self.owner)

    def _position_key(self) -> Hashable:
        pos = self.desc.position
        if isinstance(pos, RelativePositionBias):
            return self._own("position", pos.span, pos.grid)
        return self._own("position", self.key)

    def position(self, heads: slice = slice(None)) -> Optional[Tensor]:
        """Rows of the position bias for ``heads``, built now (a transient)."""
        pos = self.desc.position
        if pos is None:
            return None
        if isinstance(pos, RelativePositionBias):
            return pos.dense(heads, self.dtype, self.device)
        pos = _convert(pos, self.device, self.dtype)
        return pos[heads] if pos.dim() == 3 else pos

    def whole_position(self) -> Optional[Tensor]:
        """The whole position bias if the store keeps (or admits) it or it is small enough to
        build for this call (at most ``CHUNK_BYTES``); None otherwise (build it in head groups)."""
        pos = self.desc.position
        if pos is None:
            return None
        nbytes = math.prod(pos.shape) * self.itemsize
        found = self._whole(self._position_key(), nbytes, self.position)
        if found is None and nbytes <= CHUNK_BYTES:
            found = self.position()
        return found

    @property
    def heads(self) -> int:
        pos = self.desc.position
        return pos.shape[-3] if pos is not None and len(pos.shape) == 3 else 1

    @property
    def mixed(self) -> Tensor:
        """Which windows the mask touches (bool per window)."""
        if self._mixed is None:
            mask = self.desc.mask
            self._mixed = mask.mixed if isinstance(mask, RegionMask) else dense_mask_mixed(mask)
        return self._mixed

    def _mask_dense(self, windows: Optional[Tensor]) -> Tensor:
        """``(w, N, N)`` float mask rows of ``windows`` (an index; None: all). Rows of mixed
        windows of a region mask come from the shared cache when admitted (geometry only: one
        copy serves every layer)."""
        mask = self.desc.mask
        if not isinstance(mask, RegionMask):
            rows = mask if windows is None else mask.index_select(0, windows.to(mask.device))
            return _convert(rows, self.device, self.dtype)
        mixed = self.mixed if windows is None else self.mixed.to(windows.device)
        if windows is not None and bool(mixed[windows].all()):
            count, n = int(mixed.sum()), mask.shape[-1]
            rows = self._whole(self._shared("mixed-mask", mask.key), count * n * n * self.itemsize,
                               lambda: mask.dense_rows(mixed.nonzero().flatten(), self.dtype, self.device))
            if rows is not None:
                rank = mixed.long().cumsum(0) - 1  # row of each mixed window in the cached rows
                return rows.index_select(0, rank[windows].to(rows.device))
        return mask.dense_rows(windows, self.dtype, self.device)

    def _mask_rows(self, position: Optional[Tensor], windows: Optional[Tensor]) -> Tensor:
        """``position + mask`` for ``windows``: ``(w, h, N, N)`` (one new tensor besides the rows)."""
        rows = self._mask_dense(windows).unsqueeze(1)
        return rows if position is None else torch.add(rows, position.unsqueeze(0))

    def full(self) -> Optional[Tensor]:
        """The whole (nW, heads, N, N) bias of a small shifted layer if cached or admitted."""
        windows, n = self.desc.mask.shape[0], self.desc.mask.shape[-1]
        nbytes = windows * self.heads * n * n * self.itemsize
        if nbytes > SMALL_FULL_BYTES:
            return None
        return self._whole(self._own("full", self._mask_key()), nbytes,
                           lambda: self._mask_rows(self.whole_position(), None))

    def cached_mixed(self, position: Optional[Tensor]) -> Optional[Tensor]:
        """Position + mask for the mixed windows only, concatenated, if cached or admitted.
        ``position``: the whole position bias if at hand (else it is built)."""
        mixed = self.mixed
        count, n = int(mixed.sum()), self.desc.mask.shape[-1]
        if count == 0:
            return None

        def build() -> Tensor:
            rows = position if position is not None else self.position()
            return self._mask_rows(rows, mixed.nonzero().flatten())

        return self._whole(self._own("mixed", self._mask_key()), count * self.heads * n * n * self.itemsize, build)

    def _mask_key(self) -> Hashable:
        mask = self.desc.mask
        return mask.key if isinstance(mask, RegionMask) else ("dense-mask", self.key)

    # -- pooled ---------------------------------------------------------------------------------------

    def pooled(self, lgrid: Grid) -> Tuple[PooledBias, ...]:
        """The bias pooled onto ``lgrid`` landmarks, as terms for ``nystrom_attention``."""
        lgrid = tuple(lgrid)
        if self.opaque:
            def from_dense() -> Optional[PooledBias]:
                dense = self.dense_factory()
                if dense is None:
                    return None
                return PooledBias.from_bias(dense.to(self.device), self.grid, lgrid=lgrid).to(self.device, self.dtype)

            term = self._cached(self._own("pooled", self.key, lgrid), from_dense, self.owner)
            return () if term is None else (term,)
        terms: List[PooledBias] = []
        pos, mask = self.desc.position, self.desc.mask
        if isinstance(pos, RelativePositionBias):
            terms.append(self._cached(self._own("pooled-position", pos.span, pos.grid, lgrid),
                                      lambda: pos.pooled(lgrid, self.dtype, self.device), self.owner))
        elif pos is not None:
            terms.append(self._cached(
                self._own("pooled-position", self.key, lgrid),
                lambda: PooledBias.from_bias(pos.to(self.device), self.grid, lgrid=lgrid).to(self.device, self.dtype),
                self.owner))
        if isinstance(mask, RegionMask):  # geometry only: shared by every layer
            terms.append(self._cached(self._shared("pooled-mask", mask.key, self.grid, lgrid),
                                      lambda: mask.pooled(self.grid, lgrid, self.dtype, self.device), None))
        elif mask is not None:
            terms.append(self._cached(
                self._own("pooled-mask", self.key, lgrid),
                lambda: pooled_dense_mask(mask.to(self.device), self.grid, lgrid, self.dtype), self.owner))
        return tuple(t for t in terms if t is not None and (t.runs is None or t.runs))

    # -- rows for a few window-heads (Nyström's exact fallback, see .guard) ----------------------------

    def item_rows(self, lead: Tuple[int, ...], items: Tensor) -> Optional[Tensor]:
        """``(S, N, N)`` bias of the window-heads ``items`` (indices into the flattened ``lead``
        of ``(..., nW, heads, N, d)`` inputs), built for just those: no cache, no whole table."""
        if self.opaque:
            dense = self.opaque_dense()
            return None if dense is None else gather_rows(dense, lead, items)
        if self.desc is None:
            return None
        coords = torch.unravel_index(items, tuple(lead))
        rows: Optional[Tensor] = None
        pos, mask = self.desc.position, self.desc.mask
        if isinstance(pos, RelativePositionBias):
            heads = coords[-1].cpu()
            rows = torch.empty(items.numel(), pos.tokens, pos.tokens, dtype=self.dtype, device=self.device)
            for head in heads.unique().tolist():
                at = (heads == head).nonzero().flatten().to(self.device)
                one = pos.dense(slice(head, head + 1), self.dtype, self.device)
                rows.index_copy_(0, at, one.expand(at.numel(), -1, -1))
        elif pos is not None:
            rows = gather_rows(_convert(pos, self.device, self.dtype), lead[-1:], coords[-1])
        if mask is not None:
            windows = coords[-2]
            part = (mask.dense_rows(windows, self.dtype, self.device) if isinstance(mask, RegionMask)
                    else _convert(mask, self.device, self.dtype).index_select(0, windows.to(mask.device)))
            rows = part if rows is None else rows.add_(part)
        return rows

    def layout(self) -> Hashable:
        """What the kernels' cost depends on besides q's shape (for auto's decision key)."""
        if self.opaque:
            return ("opaque", self.key)
        if self.desc is None:
            return None
        mixed = None if self.desc.mask is None else int(self.mixed.sum())
        return (tuple(self.desc.shape), mixed)

    # -- housekeeping -------------------------------------------------------------------------------

    def forget_dense(self) -> None:
        """Drop this layer's dense entries, and the dense rows of its mask (auto chose Nyström)."""
        for kind in ("dense", "position", "full", "mixed"):
            self._forget(kind)
        mask = None if self.desc is None else self.desc.mask
        if self.owner is not None and isinstance(mask, RegionMask):
            self.store.discard(self._shared("mixed-mask", mask.key))

    def forget_pooled(self) -> None:
        """Drop this layer's pooled entries (auto chose exact)."""
        for kind in ("pooled", "pooled-position", "pooled-mask"):
            self._forget(kind)

    def _forget(self, kind: str) -> None:
        if self.owner is None:
            return
        prefix = self._own(kind)
        for key in self.store.keys_with_prefix(prefix):
            self.store.discard(key)


def _convert(bias: Optional[Tensor], device, dtype) -> Optional[Tensor]:
    if bias is None:
        return None
    if bias.dtype == torch.bool:
        return bias.to(device)
    return bias.to(device=device, dtype=dtype)


def _head_chunks(heads: int, per_head: int) -> List[slice]:
    step = max(1, min(heads, CHUNK_BYTES // max(1, per_head)))
    return [slice(h, min(h + step, heads)) for h in range(0, heads, step)]


def exact_with_bias(q: Tensor, k: Tensor, v: Tensor, biases: LayerBiases) -> Tensor:
    """Exact attention of ``(..., nW, heads, N, d)`` inputs with a layer's (factored) bias."""
    if biases.opaque:
        return exact_attention(q, k, v, biases.opaque_dense())
    desc = biases.desc
    if desc is None or (desc.position is None and desc.mask is None):
        return exact_attention(q, k, v)
    if desc.mask is None:
        position = biases.whole_position()
        if position is not None or desc.position is None:
            return exact_attention(q, k, v, position)
        return _by_windows(q, k, v, biases, position, None, None, None)
    if q.dim() < 4 or q.shape[-4] != desc.mask.shape[0]:
        raise ValueError(f"a mask for {desc.mask.shape[0]} windows does not fit q {tuple(q.shape)} "
                         "(expected (..., windows, heads, N, d))")
    full = biases.full()
    if full is not None:
        return exact_attention(q, k, v, full)
    mixed = biases.mixed.to(q.device)
    position = biases.whole_position()
    return _by_windows(q, k, v, biases, position, (~mixed).nonzero().flatten(), mixed.nonzero().flatten(),
                       biases.cached_mixed(position))


def _run_of(windows: Tensor) -> Optional[Tuple[int, int]]:
    """``(start, length)`` if the index is consecutive windows (then a slice is a view)."""
    start = int(windows[0])
    if int(windows[-1]) - start + 1 == windows.numel():
        return start, windows.numel()
    return None


def _by_windows(q: Tensor, k: Tensor, v: Tensor, biases: LayerBiases, position: Optional[Tensor],
                plain: Optional[Tensor], mixed: Optional[Tensor], mixed_bias: Optional[Tensor]) -> Tensor:
    """Exact attention for the windows without mask (``plain``, an index; None: all) and those
    with (``mixed``), one SDPA call per set (and per head group if the position bias is not at
    hand whole; per piece of mixed windows if their bias is built per call), written into one
    output. A set of consecutive windows is a view of q, k, v; others are gathered (O(N·d)
    copies, nothing next to attention's O(N²·d)). At most one bias piece of about
    ``CHUNK_BYTES`` is built at a time."""
    n, heads = q.shape[-2], q.shape[-3]
    axis = q.dim() - 4
    per_head = n * n * biases.itemsize
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    whole = position is not None or biases.desc.position is None
    groups = [None] if whole else _head_chunks(heads, per_head)

    def take(x: Tensor, windows: Optional[Tensor], group: Optional[slice]) -> Tensor:
        if windows is not None:
            run = _run_of(windows)
            x = x.narrow(axis, *run) if run else x.index_select(axis, windows)
        return x if group is None else x[..., group, :, :]

    def run(windows: Optional[Tensor], group: Optional[slice], bias: Optional[Tensor]) -> None:
        value = exact_attention(take(q, windows, group), take(k, windows, group), take(v, windows, group), bias)
        target = out if group is None else out[..., group, :, :]
        if windows is None:
            target.copy_(value)
        elif _run_of(windows):
            target.narrow(axis, *_run_of(windows)).copy_(value)
        else:
            target.index_copy_(axis, windows, value)

    for group in groups:
        rows = position if whole else biases.position(group)
        group_heads = heads if group is None else len(range(heads)[group])
        if plain is None or plain.numel():
            run(plain, group, rows)
        if mixed is None or not mixed.numel():
            continue
        if mixed_bias is not None:
            run(mixed, group, mixed_bias if group is None else mixed_bias[:, group])
            continue
        step = max(1, CHUNK_BYTES // ((group_heads + 1) * per_head))
        for piece in mixed.split(step):  # built per call, a few windows at a time
            run(piece, group, biases._mask_rows(rows, piece))
        del rows
    return out
