"""Float64 reference formulas for the attention tests, written out plainly (loops allowed).

Deliberately independent of ``pipelines.attention``: landmark bins are computed here from the
adaptive-average-pool definition, the kernel, pseudo-inverse iteration and normalisation from
DESIGN §3, one window and head at a time.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

TAU = 5.0


def kappa(x: Tensor) -> Tensor:
    return torch.exp(torch.clamp(x, max=TAU)) + torch.clamp(x - TAU, min=0.0)


def adaptive_bins(size: int, out: int):
    """Adaptive average pooling: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


def pooling_rows(grid: Sequence[int], lgrid: Sequence[int]) -> Tensor:
    """(m, N) float64: row l averages the tokens of landmark l (frames are never mixed)."""
    h, w = grid[-2:]
    mh, mw = lgrid[-2:]
    frames = grid[0] if len(grid) == 3 else 1
    rows = []
    for f in range(frames):
        for r0, r1 in adaptive_bins(h, mh):
            for c0, c1 in adaptive_bins(w, mw):
                row = torch.zeros(frames, h, w, dtype=torch.float64)
                row[f, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
                rows.append(row.flatten())
    return torch.stack(rows)


def pinv_iteration(a: Tensor, iters: int) -> Tensor:
    """Z0 = A^T / (||A||_1 ||A||_inf) for this one matrix, then the Nystromformer iteration."""
    norm_1 = a.abs().sum(dim=0).max()
    norm_inf = a.abs().sum(dim=1).max()
    z = a.t() / (norm_1 * norm_inf)
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _bias_for(bias: Optional[Tensor], index: Tuple[int, ...]) -> Optional[Tensor]:
    if bias is None:
        return None
    lead = bias.shape[:-2]
    own = index[len(index) - len(lead):]
    return bias[tuple(0 if size == 1 else i for size, i in zip(lead, own))].double()


def nystrom_reference(q: Tensor, k: Tensor, v: Tensor, grid, lgrid, iters: int,
                      bias: Optional[Tensor] = None, eps: float = 1e-12) -> Tensor:
    """PnP-Nystra in float64, one (window, head) at a time; ``bias`` dense (..., N, N)."""
    pool = pooling_rows(grid, lgrid)
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    for index in itertools.product(*(range(s) for s in q.shape[:-2])):
        qi, ki, vi = q[index].double(), k[index].double(), v[index].double()
        q_l, k_l = pool @ qi, pool @ ki
        r = _bias_for(bias, index)
        r_f = 0 if r is None else r @ pool.t()
        r_b = 0 if r is None else pool @ r
        r_a = 0 if r is None else pool @ r @ pool.t()
        f = kappa(qi @ k_l.t() + r_f)
        a = kappa(q_l @ k_l.t() + r_a)
        b = kappa(q_l @ ki.t() + r_b)
        z = pinv_iteration(a, iters)
        ones = torch.ones(vi.shape[0], 1, dtype=torch.float64)
        ys = f @ z @ (b @ torch.cat([vi, ones], dim=1))
        out[index] = ys[:, :-1] / (ys[:, -1:] + eps)
    return out


def softmax_reference(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    scores = q.double() @ k.double().transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.double()
    return torch.softmax(scores, dim=-1) @ v.double()


def swin_relative_position_index(window: int) -> Tensor:
    """(N, N) index into a ((2w-1)^2, heads) table, built the way Swin builds it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def gather_bias(table: Tensor, index: Tensor) -> Tensor:
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()


def realistic_table(window: int, heads: int, generator: torch.Generator) -> Tensor:
    """A bias table like trained Swin ones: favours nearby tokens (per-head slope) plus noise."""
    span = torch.arange(-(window - 1), window, dtype=torch.float32)
    dist = (span[:, None] ** 2 + span[None, :] ** 2).sqrt().flatten()  # ((2w-1)^2,)
    slopes = torch.linspace(0.2, 1.0, heads)
    return -dist[:, None] * slopes[None, :] + 0.1 * torch.randn(dist.numel(), heads, generator=generator)


def shift_regions(height: int, width: int, window: int, shift: int) -> Tensor:
    """(nW, N) Swin shifted-window region label of every token of every window."""
    region = torch.zeros(height, width)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    windows = region.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    return windows.reshape(-1, window * window).long()


def shift_mask(height: int, width: int, window: int, shift: int) -> Tensor:
    """(nW, N, N) Swin shifted-window mask: 0 within a region, -100 across regions."""
    windows = shift_regions(height, width, window, shift)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))
