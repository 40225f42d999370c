"""Keep Nyström's numerical breakdowns out of the output: exact attention where it fails.

Why: exact attention averages v, so every output value lies within ``max|v|`` of its window
and head. The Nyström formula has no such guarantee: when a window's landmark matrix A is
ill-conditioned (seen in a trained model: every score of a window between -52 and -22, so A
spans 1e-23 to 1e-11 with condition number ~1e12), two pinv iterations leave a Z whose
float32 products cancel, the normaliser s reaches zero or below, and the output becomes NaN
or many times larger than anything in v: a patch of garbage pixels in a frame. A window-head
whose Nyström output is not finite or exceeds ``GUARD × max|v|`` is therefore recomputed
with exact attention (and its true bias). The test looks at the window-head alone, so a
window's output still does not depend on the rest of the batch. It is cheap: the Nyström
kernel bounds every output from quantities it forms anyway (``nystrom._suspects``), and only
the few window-heads that bound cannot clear have their outputs checked here. On the bundled
models' held-out photos it recomputes no window-head except those that had broken down (three
of 64 in one sr4 layer on one photo, up to 22x max|v|).

(Window-heads whose scores all lie far below zero, which float32 once turned into NaN here,
are handled before this, by lifting their scores: see ``nystrom._lifts``.)
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .exact import exact_attention


def _guard_from_env() -> float:
    raw = os.environ.get("NYSTRA_NYSTROM_GUARD", "1.5")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ValueError(f"NYSTRA_NYSTROM_GUARD must be a number >= 0 (inf: never fall back), got {raw!r}")
    return value


#: Nyström output beyond this multiple of the window-head's max |v| counts as broken down
#: (``NYSTRA_NYSTROM_GUARD``; ``inf`` turns the fallback off, 0 sends every window-head to it).
GUARD = _guard_from_env()

_count_lock = threading.Lock()
_fallbacks = 0


def fallback_count() -> int:
    """Window-heads recomputed exactly in this process so far (all layers, all threads)."""
    return _fallbacks


#: Largest bias piece built at once for the recomputed window-heads.
CHUNK_BYTES = 64 << 20

#: ``rows(items)`` -> the ``(S, N, N)`` additive bias of the flattened window-heads ``items``
#: (indices into the inputs' leading dims, flattened), or None for no bias.
BiasRows = Callable[[Tensor], Optional[Tensor]]


def broken(out: Tensor, v: Tensor) -> Tensor:
    """Which window-heads of ``(*lead, N, dv)`` Nyström output broke down (bool, flattened lead)."""
    n, dv = v.shape[-2:]
    out_low, out_high = torch.aminmax(out.reshape(-1, n * dv), dim=1)
    v_low, v_high = torch.aminmax(v.reshape(-1, n * dv), dim=1)
    bound = torch.maximum(v_high, -v_low).mul_(GUARD)
    # NaN compares false, so "not within bounds" catches it along with ±inf and overshoots.
    return ~((out_high <= bound) & (-out_low <= bound))


def gather_rows(bias: Tensor, lead: Sequence[int], items: Tensor) -> Tensor:
    """``(S, N, N)`` rows of a dense bias broadcastable to ``(*lead, N, N)`` for flattened items."""
    full = bias.reshape((1,) * (len(lead) + 2 - bias.dim()) + tuple(bias.shape))
    coords = torch.unravel_index(items.to(full.device), tuple(lead))
    index = tuple(c if full.shape[i] != 1 else torch.zeros_like(c) for i, c in enumerate(coords))
    return full[index]


def dense_rows(bias: Optional[Tensor], lead: Sequence[int]) -> BiasRows:
    """:data:`BiasRows` for a dense bias (or None)."""
    return lambda items: None if bias is None else gather_rows(bias, lead, items)


def repair(out: Tensor, q: Tensor, k: Tensor, v: Tensor, rows: BiasRows, suspects: Optional[Tensor] = None) -> int:
    """Recompute, with exact attention, the window-heads of ``out`` where Nyström broke down.

    ``suspects``: a cheap superset of them (bool per flattened window-head; None: all), whose
    outputs alone are checked. ``out`` is written in place; returns how many window-heads were
    recomputed. Costs a host sync on GPUs (one per call), which deciding anything costs there.
    """
    if suspects is not None and not bool(suspects.any()):
        return 0
    lead = tuple(q.shape[:-2])
    n, dv = v.shape[-2:]
    flat_out = out.view(-1, n, dv)
    if suspects is None:
        candidates = torch.arange(flat_out.shape[0], device=out.device)
    else:
        candidates = suspects.nonzero().flatten()
    # Window-heads are gathered by their index per leading dim (v[coords]): q, k, v are usually
    # strided views of a fused projection, which a flattening reshape would copy whole.
    coords = torch.unravel_index(candidates, lead)
    items = candidates[broken(flat_out.index_select(0, candidates), v[coords])]
    if items.numel() == 0:
        return 0
    global _fallbacks
    with _count_lock:
        _fallbacks += int(items.numel())
    step = max(1, CHUNK_BYTES // (n * n * 4))
    for start in range(0, items.numel(), step):
        chunk = items[start:start + step]
        bias = rows(chunk)
        if bias is not None:
            bias = bias.to(device=q.device, dtype=q.dtype).unsqueeze(1)
        at = torch.unravel_index(chunk, lead)
        fixed = exact_attention(q[at].unsqueeze(1), k[at].unsqueeze(1), v[at].unsqueeze(1), bias)
        flat_out.index_copy_(0, chunk, fixed.squeeze(1).to(out.dtype))
    return int(items.numel())
