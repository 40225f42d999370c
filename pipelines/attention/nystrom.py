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
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

from .landmarks import Grid, PooledBias, landmark_grid, pool_tokens
from .workspace import scratch, serial

TAU = 5.0
EPS = 1e-12
#: Scores below this are taken as this: exp(-80) ≈ 2e-35 is nothing next to the other terms,
#: while exp of lower scores (e.g. under the -100 shift mask) is a float32 *denormal*, and
#: CPU arithmetic on denormals is tens of times slower (it made masked layers 2.5x slower).
FLOOR = -80.0


def kappa(x: Tensor) -> Tensor:
    """κ(x) = exp(min(x, τ)) + max(x − τ, 0): exponential that turns linear above τ (no overflow);
    scores below ``FLOOR`` count as ``FLOOR`` (no denormals)."""
    return torch.exp(x.clamp(min=FLOOR, max=TAU)) + torch.relu(x - TAU)


def _kappa_(x: Tensor) -> Tensor:
    """κ in place on a buffer we own (bitwise equal to :func:`kappa`)."""
    if x.numel() == 0:
        return x
    if x.device.type == "cpu":
        # One read-only pass usually proves that all scores lie in [FLOOR, τ]; then κ is one exp_.
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


def _pinv_input(q_l: Tensor, k_l: Tensor, lead, terms: Terms) -> Tensor:
    """A = κ(q̃ k̃ᵀ + R_A) in float32 (or float64 for float64 inputs)."""
    work = torch.promote_types(q_l.dtype, torch.float32)
    a = torch.bmm(q_l.to(work), k_l.to(work).transpose(1, 2))
    return _kappa_(_add_terms(a, lead, terms, "a"))


def _nystrom_fast(q: Tensor, k: Tensor, v: Tensor, grid: Grid, lgrid: Grid, iters: int, terms: Terms) -> Tensor:
    lead = q.shape[:-2]
    n, d = q.shape[-2:]
    m = math.prod(lgrid)
    dtype, device = q.dtype, q.device
    qf, kf, vf = q.reshape(-1, n, d), k.reshape(-1, n, d), v.reshape(-1, n, v.shape[-1])
    batch, dv = qf.shape[0], vf.shape[-1]
    q_l, k_l = pool_tokens(qf, grid, lgrid), pool_tokens(kf, grid, lgrid)

    f = torch.bmm(qf, k_l.transpose(1, 2), out=scratch("f", (batch, n, m), dtype, device))
    _kappa_(_add_terms(f, lead, terms, "f"))
    # B is computed transposed (N×m, like F): the kernels for these shapes are faster.
    bt = torch.bmm(kf, q_l.transpose(1, 2), out=scratch("bt", (batch, n, m), dtype, device))
    _kappa_(_add_terms(bt, lead, terms, "bt"))
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
        z = iterative_pinv(_pinv_input(q_l, k_l, lead, terms), iters)
        rhs = torch.cat([bv, bs.unsqueeze(-1)], dim=-1)  # (Bf, m, dv+1): tiny, unlike [v | 1]
        right = torch.bmm(z, rhs).to(dtype)  # Z·[Bv | B1]

    # Normalise before the last product: Y/(s+ε) = (diag(1/(s+ε))·F)·(Z Bv), and scaling F's
    # m columns per row is cheaper than scaling the dv columns of the output.
    s = torch.bmm(f, right[..., dv:], out=scratch("s", (batch, n, 1), dtype, device))
    f.div_(s.add_(EPS))
    out = torch.bmm(f, right[..., :dv])
    return out.view(*lead, n, dv)


def _nystrom_plain(q: Tensor, k: Tensor, v: Tensor, grid: Grid, lgrid: Grid, iters: int, terms: Terms) -> Tensor:
    lead = q.shape[:-2]
    n, d = q.shape[-2:]
    qf, kf, vf = q.reshape(-1, n, d), k.reshape(-1, n, d), v.reshape(-1, n, v.shape[-1])
    dv = vf.shape[-1]
    q_l, k_l = pool_tokens(qf, grid, lgrid), pool_tokens(kf, grid, lgrid)

    f = kappa(_add_terms(qf @ k_l.transpose(1, 2), lead, terms, "f", in_place=False))
    b = kappa(_add_terms(q_l @ kf.transpose(1, 2), lead, terms, "b", in_place=False))
    work = torch.promote_types(q.dtype, torch.float32)
    a = q_l.to(work) @ k_l.to(work).transpose(1, 2)
    a = kappa(_add_terms(a, lead, terms, "a", in_place=False))
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
    landmarks: int = 16,
    iters: int = 2,
    bias: Union[Tensor, PooledBias, Sequence[PooledBias], None] = None,
) -> Tensor:
    """PnP-Nystra attention of ``(*lead, N, d)`` inputs laid out on the window ``grid``.

    q is already multiplied by ``head_dim**-0.5``. ``grid`` is ``(h, w)`` or ``(t, h, w)`` with
    ``prod(grid) == N``. ``bias``: ``None`` (bias dropped, the paper's behaviour), a dense
    additive bias broadcastable to ``(*lead, N, N)`` (pooled here, on every call), a
    precomputed :class:`PooledBias` (what layers cache), or several of them, summed (e.g. a
    position term and a shift-mask term covering some windows). float32/float16/bfloat16
    inputs (and float64); the pseudo-inverse runs in float32 (float64 for float64 inputs).
    """
    grid = tuple(int(g) for g in grid)
    n = q.shape[-2]
    if math.prod(grid) != n:
        raise ValueError(f"window grid {grid} has {math.prod(grid)} tokens, inputs have N = {n}")
    lgrid = landmark_grid(grid, landmarks)
    if isinstance(bias, Tensor):
        bias = PooledBias.from_bias(bias, grid, lgrid=lgrid)
    terms: Terms = () if bias is None else ((bias,) if isinstance(bias, PooledBias) else tuple(bias))
    _check_terms(terms, q.shape[:-2], lgrid)
    terms = tuple(t if t.query_to_landmark.dtype == q.dtype and t.query_to_landmark.device == q.device
                  else t.to(q.device, q.dtype) for t in terms)
    tensors = [q, k, v] + [x for t in terms for x in (t.query_to_landmark, t.landmark_to_key)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _nystrom_plain(q, k, v, grid, lgrid, iters, terms)
    return _nystrom_fast(q, k, v, grid, lgrid, iters, terms)
