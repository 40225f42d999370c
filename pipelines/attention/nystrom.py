"""PnP-Nystra: training-free Nyström approximation of window attention (DESIGN §3).

Per window and head, with landmarks q̃, k̃ (average-pooled q, k; see ``landmarks.py``)::

    F = κ(q k̃ᵀ + R_F)   (N×m)    A = κ(q̃ k̃ᵀ + R_A)   (m×m)    B = κ(q̃ kᵀ + R_B)   (m×N)
    Z ≈ A⁺ by Z₀ = Aᵀ / (‖A‖₁‖A‖∞),  Z ← ¼ Z (13I − AZ (15I − AZ (7I − AZ)))   (T times)
    [Y | s] = F · (Z · (B [v | 1])),   out = Y / (s + ε)

with κ(x) = exp(min(x, τ)) + max(x − τ, 0), τ = 5, and R_* the pooled bias (``PooledBias``;
``bias=None`` drops the bias, as the paper does).

Unlike the paper's code, the pseudo-inverse is scaled per window and head (its own
‖A‖₁‖A‖∞), so a window's output does not depend on the other windows in the batch.

Two implementations of the same formulas:
- ``_nystrom_fast`` (no autograd): products ordered to minimise work (B·v, then Z·(Bv), then
  F·(Z Bv)), B kept transposed (N×m) like F, the row sums B·1 taken by a separate product
  with a ones row instead of concatenating [v | 1], the row normalisation applied to F's m
  columns instead of the output's d, κ applied in place on per-thread scratch buffers (a
  single ``exp_`` when no score exceeds τ), half-precision sums kept from overflowing, and
  few, large kernels (each parallel region costs a thread rendezvous, which is what hurts
  when other processes share the cores);
- ``_nystrom_plain``: out-of-place, differentiable, used when autograd is recording.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import guard
from .guard import BiasRows, dense_rows, repair
from .landmarks import Grid, PooledBias, landmark_grid, pool_tokens
from .settings import DEFAULT
from .workspace import scratch, serial

TAU = 5.0
EPS = 1e-12
#: Scores below this are taken as this: exp(-80) ≈ 2e-35 is nothing next to the other terms,
#: while exp of lower scores (e.g. under the -100 shift mask) is a float32 *denormal*, and
#: CPU arithmetic on denormals is tens of times slower (it made masked layers 2.5x slower).
FLOOR = -80.0
#: Window-heads whose scores all lie below this are shifted up (see ``_lifts``).
LIFT_BELOW = -16.0


def kappa(x: Tensor) -> Tensor:
    """κ(x) = exp(min(x, τ)) + max(x − τ, 0): exponential that turns linear above τ (no overflow);
    scores below ``FLOOR`` count as ``FLOOR`` (no denormals)."""
    return torch.exp(x.clamp(min=FLOOR, max=TAU)) + torch.relu(x - TAU)


def _kappa_(x: Tensor, low: Optional[Tensor] = None, high: Optional[Tensor] = None) -> Tensor:
    """κ in place on a buffer we own (bitwise equal to :func:`kappa`); ``low``/``high``: the
    buffer's extremes if already known."""
    if x.numel() == 0:
        return x
    if x.device.type == "cpu":
        # One read-only pass usually proves that all scores lie in [FLOOR, τ]; then κ is one exp_.
        if low is None or high is None:
            low, high = torch.aminmax(x)
        if bool(high <= TAU):
            if bool(low < FLOOR):
                x.clamp_(min=FLOOR)
            return x.exp_()
        # Otherwise the dense form: gathering and scattering just the scores above τ (through
        # boolean indexing) was 2-4x slower even when only 0.1 % of them were (measured on
        # F-sized buffers, 2 threads), and it made models with a few sharp heads slower.
    # (On GPUs a data-dependent branch would synchronise; the dense form is cheap there.)
    linear = (x - TAU).clamp_(min=0)
    return x.clamp_(min=FLOOR, max=TAU).exp_().add_(linear)


def _lifts(f_high: Tensor, b_high: Tensor) -> Tensor:
    """Per window-head shift of all its scores: up to a top score of 0 where every score is below
    ``LIFT_BELOW``, else 0.

    Why: κ is exp below τ, and the Nyström output F·A⁺·B·[v|1] normalised is then unchanged when
    every score of a window-head moves by the same c (F, A, B all scale by e^c, A⁺ by e^-c), just
    as softmax is. A window-head whose scores all lie far below zero (seen in trained models:
    -52 to -22) otherwise has A entries of 1e-23..1e-11 whose float32 products (‖A‖₁‖A‖∞, A·Z, s)
    underflow: NaN outputs. Lifting to a top score of 0 keeps every score below τ, so the
    result is the same formula, computed where float32 has range. A's scores average F's (or
    B's) over landmarks, so the top of F and B bounds them too.
    """
    top = torch.maximum(f_high, b_high).to(torch.float32)
    return torch.where(top < LIFT_BELOW, -top, torch.zeros_like(top))


def _lift_(x: Tensor, lift: Tensor) -> None:
    """Add each item's lift to its rows of a ``(Bf, r, c)`` buffer: on the CPU only the items
    with one (rare), elsewhere all of them (finding the few would synchronise)."""
    if x.device.type != "cpu":
        x.add_(lift.to(x.dtype)[:, None, None])
        return
    items = lift.nonzero().flatten()
    x.index_add_(0, items, lift.index_select(0, items).to(x.dtype)[:, None, None].expand(-1, *x.shape[1:]))


def iterative_pinv(a: Tensor, iters: int) -> Tensor:
    """Pseudo-inverse of each ``(m, m)`` matrix of ``a`` (…, m, m) by the Nyströmformer iteration.

    Z₀ is scaled by each matrix's own ‖A‖₁‖A‖∞ (not the batch maximum).
    """
    shape = a.shape
    a = a.reshape(-1, shape[-2], shape[-1])
    absolute = a.abs()
    norm_1 = absolute.sum(dim=-2).amax(dim=-1)  # max column sum
    norm_inf = absolute.sum(dim=-1).amax(dim=-1)  # max row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[:, None, None]
    eye = torch.eye(shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iters):
        az = torch.bmm(a, z)
        inner = 7.0 * eye - az
        inner = torch.baddbmm(15.0 * eye, az, inner, alpha=-1.0)  # 15I − AZ(7I − AZ)
        inner = torch.baddbmm(13.0 * eye, az, inner, alpha=-1.0)  # 13I − AZ(…)
        z = torch.bmm(z, inner) * 0.25
    return z.reshape(shape)


Terms = Tuple[PooledBias, ...]


def _part(term: PooledBias, which: str) -> Tensor:
    if which == "f":
        return term.query_to_landmark
    if which == "bt":
        return term.landmark_to_key.transpose(-1, -2)
    if which == "b":
        return term.landmark_to_key
    return term.landmark_to_landmark


def _add_terms(x: Tensor, lead, terms: Terms, which: str, in_place: bool = True) -> Tensor:
    """``x`` (Bf, r, c) plus each bias term's ``which`` part, broadcast over the leading dims
    ``lead`` (a term with ``runs`` only onto its windows, along ``lead[-2]``)."""
    for term in terms:
        part = _part(term, which).to(x.dtype)
        view = x.view(*lead, *x.shape[-2:])
        if term.runs is None:
            view = view.add_(part) if in_place else view + part
        else:  # (w, 1, r, c) onto windows w of (..., nW, heads, r, c): one index_add
            axis = len(lead) - 2
            source = part.expand(*lead[:axis], part.shape[0], *lead[axis + 1:], *part.shape[-2:])
            index = term.window_index
            view = view.index_add_(axis, index, source) if in_place else view.index_add(axis, index, source)
        x = view.reshape(x.shape)
    return x


def _check_terms(terms: Terms, lead, lgrid: Grid) -> None:
    for term in terms:
        if tuple(term.landmark_grid) != tuple(lgrid):
            raise ValueError(f"pooled bias is for landmark grid {term.landmark_grid}, not {lgrid}")
        if term.runs is not None and (len(lead) < 2 or (term.runs and term.runs[-1][1] > lead[-2])):
            raise ValueError(f"pooled bias for windows {term.runs} does not fit inputs with lead {tuple(lead)}")


def _pinv_input(q_l: Tensor, k_l: Tensor, lead, terms: Terms, lift: Optional[Tensor]) -> Tensor:
    """A = κ(q̃ k̃ᵀ + R_A + lift) in float32 (or float64 for float64 inputs)."""
    work = torch.promote_types(q_l.dtype, torch.float32)
    a = _add_terms(torch.bmm(q_l.to(work), k_l.to(work).transpose(1, 2)), lead, terms, "a")
    if lift is not None:
        a.add_(lift.to(work)[:, None, None])
    return _kappa_(a)


def _nystrom_fast(q: Tensor, k: Tensor, v: Tensor, grid: Grid, lgrid: Grid, iters: int,
                  terms: Terms) -> Tuple[Tensor, Optional[Tensor]]:
    lead = q.shape[:-2]
    n, d = q.shape[-2:]
    m = math.prod(lgrid)
    dtype, device = q.dtype, q.device
    qf, kf, vf = q.reshape(-1, n, d), k.reshape(-1, n, d), v.reshape(-1, n, v.shape[-1])
    batch, dv = qf.shape[0], vf.shape[-1]
    if batch == 0:
        return v.new_empty(*lead, n, dv), None
    q_l, k_l = pool_tokens(qf, grid, lgrid), pool_tokens(kf, grid, lgrid)

    f = _add_terms(torch.bmm(qf, k_l.transpose(1, 2), out=scratch("f", (batch, n, m), dtype, device)),
                   lead, terms, "f")
    # B is computed transposed (N×m, like F): the kernels for these shapes are faster.
    bt = _add_terms(torch.bmm(kf, q_l.transpose(1, 2), out=scratch("bt", (batch, n, m), dtype, device)),
                    lead, terms, "bt")
    f_low, f_high = _ranges(f)
    b_low, b_high = _ranges(bt)
    lift = None
    # A window-head's scores can all lie below LIFT_BELOW only if the lowest score overall does.
    if device.type != "cpu" or min(float(f_low), float(b_low)) < LIFT_BELOW:
        lift = _lifts(f.amax((1, 2)), bt.amax((1, 2)))
        if device.type == "cpu" and not bool(lift.any()):
            lift = None  # the common case: no window-head needs it
    if lift is not None:
        _lift_(f, lift)
        _lift_(bt, lift)
        # Lifted window-heads top out at 0; the lows only decide whether κ clamps at FLOOR.
        f_high, b_high = f_high.clamp(min=0), b_high.clamp(min=0)
    _kappa_(f, f_low, f_high)
    _kappa_(bt, b_low, b_high)
    # B·[v | 1] (m × (dv+1) per window, small). In half precision the sums over N can
    # overflow, so they are taken as means (×1/N: Y and s scale alike, Y/s is unchanged).
    work = torch.promote_types(dtype, torch.float32)
    # B·1 as a product with a ones row (one parallel region, like B·v; a strided sum is two).
    ones = torch.ones(1, 1, n, dtype=dtype, device=device).expand(batch, 1, n)
    if dtype.itemsize < 4:
        unused = torch.empty(batch, dv, m, dtype=dtype, device=device)
        bv = torch.baddbmm(unused, vf.transpose(1, 2), bt, beta=0.0, alpha=1.0 / n).transpose(1, 2).to(work)
        bs = torch.baddbmm(unused[:, :1], ones, bt, beta=0.0, alpha=1.0 / n).squeeze(1).to(work)
    else:
        bv = torch.bmm(vf.transpose(1, 2), bt).transpose(1, 2)  # (vᵀ Bᵀ)ᵀ = B v
        bs = torch.bmm(ones, bt).squeeze(1)
    # Everything m × m from here to Z·[Bv | B1]: tiny kernels, run without waking the pool.
    with serial(device):
        z = iterative_pinv(_pinv_input(q_l, k_l, lead, terms, lift), iters)
        rhs = torch.cat([bv, bs.unsqueeze(-1)], dim=-1)  # (Bf, m, dv+1): tiny, unlike [v | 1]
        right = torch.bmm(z, rhs).to(dtype)  # Z·[Bv | B1]
        # [Z·B1 | M], M = max_c |Z·Bv| per landmark: F times it gives the row sums s and F·M,
        # which bounds |Y_i| (F ≥ 0) for the breakdown guard (``_suspects``).
        sums_of = torch.stack([right[..., dv], right[..., :dv].abs().amax(-1)], dim=1)  # (Bf, 2, m)
        # A lower bound of max|v| for the guard: each (Bv)_l / (B1)_l is a κ-weighted mean of v
        # (bv is a transposed view: reduce it in its own, contiguous, layout).
        v_low = (bv.transpose(1, 2).abs() / bs.unsqueeze(1)).amax((1, 2))

    # Normalise before the last product: Y/(s+ε) = (diag(1/(s+ε))·F)·(Z Bv), and scaling F's
    # m columns per row is cheaper than scaling the dv columns of the output. The sums are
    # taken as rows, [Z·B1 | M]ᵀ·Fᵀ: 2.5x faster than the column form F·Z·B1 (measured).
    sums = torch.bmm(sums_of, f.transpose(1, 2), out=scratch("s", (batch, 2, n), dtype, device))
    s = sums[:, :1].add_(EPS)
    f.div_(s.transpose(1, 2))
    out = torch.bmm(f, right[..., :dv])
    with serial(device):
        suspects = _suspects(sums[:, 0], sums[:, 1], v_low)
    return out.view(*lead, n, dv), suspects


def _ranges(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(lowest, highest) score of a buffer: one read-only pass (none on GPUs, where κ's dense
    form needs neither)."""
    if x.device.type != "cpu":
        return x.new_full((), -math.inf), x.new_full((), math.inf)
    return torch.aminmax(x)


def _suspects(s: Tensor, fm: Tensor, v_low: Tensor) -> Tensor:
    """Window-heads whose output *may* exceed ``GUARD × max|v|``, from small tensors only.

    ``s`` = row sums + ε and ``fm`` = F·M ≥ 0, both ``(Bf, N)``: |y_i| = |Y_i| / |s_i| ≤
    F_i·M / |s_i|. ``v_low`` ≤ max|v|. An output beyond GUARD × max|v| therefore makes
    max_i |F_i·M / s_i| exceed GUARD × v_low (or something is not finite): every breakdown is
    among the suspects; :func:`.guard.repair` checks the suspects' actual outputs (a few
    windows, not a pass over all of them).
    """
    worst = torch.div(fm, s).abs_().amax(1).float()
    return ~(worst <= guard.GUARD * v_low)


def _nystrom_plain(q: Tensor, k: Tensor, v: Tensor, grid: Grid, lgrid: Grid, iters: int, terms: Terms) -> Tensor:
    lead = q.shape[:-2]
    n, d = q.shape[-2:]
    qf, kf, vf = q.reshape(-1, n, d), k.reshape(-1, n, d), v.reshape(-1, n, v.shape[-1])
    dv = vf.shape[-1]
    q_l, k_l = pool_tokens(qf, grid, lgrid), pool_tokens(kf, grid, lgrid)

    f = _add_terms(qf @ k_l.transpose(1, 2), lead, terms, "f", in_place=False)
    b = _add_terms(q_l @ kf.transpose(1, 2), lead, terms, "b", in_place=False)
    # The same lift as the fast path (a constant per window-head: no gradient through it).
    lift = _lifts(f.detach().flatten(1).amax(1), b.detach().flatten(1).amax(1))
    f, b = kappa(f + lift.to(f.dtype)[:, None, None]), kappa(b + lift.to(b.dtype)[:, None, None])
    work = torch.promote_types(q.dtype, torch.float32)
    a = q_l.to(work) @ k_l.to(work).transpose(1, 2)
    a = kappa(_add_terms(a, lead, terms, "a", in_place=False) + lift.to(work)[:, None, None])
    z = iterative_pinv(a, iters)
    scale = 1.0 / n if q.dtype.itemsize < 4 else 1.0
    bv = ((b * scale) @ vf).to(work)
    bs = b.sum(dim=-1, keepdim=True, dtype=work) * scale
    right = (z @ torch.cat([bv, bs], dim=-1)).to(q.dtype)
    ys = f @ right
    return (ys[..., :dv] / (ys[..., dv:] + EPS)).reshape(*lead, n, dv)


def nystrom_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: Sequence[int],
    landmarks: int = DEFAULT.landmarks,
    iters: int = DEFAULT.iters,
    bias: Union[Tensor, PooledBias, Sequence[PooledBias], None] = None,
    exact_bias: Optional[BiasRows] = None,
) -> Tensor:
    """PnP-Nystra attention of ``(*lead, N, d)`` inputs laid out on the window ``grid``.

    q is already multiplied by ``head_dim**-0.5``. ``grid`` is ``(h, w)`` or ``(t, h, w)`` with
    ``prod(grid) == N``. ``bias``: ``None`` (bias dropped, the paper's behaviour), a dense
    additive bias broadcastable to ``(*lead, N, N)`` (pooled here, on every call), a
    precomputed :class:`PooledBias` (what layers cache), or several of them, summed (e.g. a
    position term and a shift-mask term covering some windows). float32/float16/bfloat16
    inputs (and float64); the pseudo-inverse runs in float32 (float64 for float64 inputs).

    Outside autograd, window-heads where the approximation breaks down numerically (output not
    finite, or beyond ``guard.GUARD`` (1.5) x the window-head's max |v|) are recomputed with
    exact attention and the true bias: the dense ``bias`` itself, or ``exact_bias(items)``
    giving the rows for pooled terms (without it, pooled terms leave such windows as they are).
    """
    grid = tuple(int(g) for g in grid)
    n = q.shape[-2]
    if math.prod(grid) != n:
        raise ValueError(f"window grid {grid} has {math.prod(grid)} tokens, inputs have N = {n}")
    lgrid = landmark_grid(grid, landmarks)
    if exact_bias is None and (bias is None or isinstance(bias, Tensor)):
        exact_bias = dense_rows(bias, q.shape[:-2])
    if isinstance(bias, Tensor):
        bias = PooledBias.from_bias(bias, grid, lgrid=lgrid)
    terms: Terms = () if bias is None else ((bias,) if isinstance(bias, PooledBias) else tuple(bias))
    _check_terms(terms, q.shape[:-2], lgrid)
    terms = tuple(t if t.query_to_landmark.dtype == q.dtype and t.query_to_landmark.device == q.device
                  else t.to(q.device, q.dtype) for t in terms)
    tensors = [q, k, v] + [x for t in terms for x in (t.query_to_landmark, t.landmark_to_key)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _nystrom_plain(q, k, v, grid, lgrid, iters, terms)
    out, suspects = _nystrom_fast(q, k, v, grid, lgrid, iters, terms)
    if exact_bias is not None and suspects is not None:
        repair(out, q, k, v, exact_bias, suspects)
    return out
