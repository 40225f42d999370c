"""Exact window attention through ``F.scaled_dot_product_attention``.

PyTorch's fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``) is 2-4x faster
than the math fallback, but it is only chosen for 4-D ``(B, H, N, d)`` inputs whose additive
mask is 2-D or 4-D with each leading dim either 1 or equal to the inputs' (a 3-D mask, 5-D
inputs, or a mask that requires grad fall back to the math path). Broadcast (stride-0) and
transposed masks are fine. So window attention's shapes are folded into that form here: e.g.
shifted windows, q ``(B, nW, heads, N, d)`` with bias ``(nW, heads, N, N)``, become
``(B, nW*heads, N, d)`` with mask ``(1, nW*heads, N, N)`` — or, for B = 1,
``(nW, heads, N, d)`` with mask ``(nW, heads, N, N)``, which keeps q, k, v as views.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .workspace import scratch


def _fold(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Reshape ``(*lead, N, d)`` inputs and their bias to the 4-D form the fused kernel takes."""
    lead = tuple(q.shape[:-2]) or (1,)
    n_q, n_k = q.shape[-2], k.shape[-2]

    def four_d(x: Tensor, batch: int, heads: int) -> Tensor:
        return x.reshape(batch, heads, *x.shape[-2:])

    if bias is None:
        batch, heads = math.prod(lead[:-1]), lead[-1]
        return four_d(q, batch, heads), four_d(k, batch, heads), four_d(v, batch, heads), None
    if bias.dim() - 2 > len(lead):
        raise ValueError(f"bias {tuple(bias.shape)} has more leading dims than q {tuple(q.shape)}")
    blead = (1,) * (len(lead) + 2 - bias.dim()) + tuple(bias.shape[:-2])
    if any(b not in (1, n) for b, n in zip(blead, lead)):
        raise ValueError(f"bias {tuple(bias.shape)} does not broadcast to q {tuple(q.shape)}")

    def broadcast_in(part: slice) -> Optional[bool]:
        """False: bias is full over these dims; True: broadcast over all; None: mixed."""
        if all(b == 1 for b in blead[part]):
            return True
        if all(b == n for b, n in zip(blead[part], lead[part])):
            return False
        return None

    # Split the leading dims into (batch | heads) so that the bias is full or broadcast over
    # each part; try "heads = last dim only" first since it keeps q, k, v views.
    for split in range(len(lead) - 1, -1, -1):
        pre, post = broadcast_in(slice(0, split)), broadcast_in(slice(split, None))
        if pre is not None and post is not None:
            break
    else:  # mixed pattern such as (nW, 1) against (B, nW, heads): materialise the bias
        bias = bias.expand(lead + (n_q, n_k))
        split, pre, post = len(lead) - 1, False, False
    batch, heads = math.prod(lead[:split]), math.prod(lead[split:])
    mask = bias.reshape(1 if pre else batch, 1 if post else heads, n_q, n_k)
    return four_d(q, batch, heads), four_d(k, batch, heads), four_d(v, batch, heads), mask


#: Up to this many tokens per window, CPU float32/64 inference materialises the scores instead
#: of calling SDPA: measured on the 2-core CPU (6 heads, head dim 30, 16k tokens, Swin bias,
#: 2 threads) it is 1.8x faster at N = 36, 1.3x at 64, 1.2-1.5x at 100-196, and 1.2x slower
#: at 256 (SDPA's fused kernel wins from there; it also never holds N×N scores).
MATERIALISED_MAX_N = 196
#: Windows are processed in chunks whose scores take about this much memory: small enough to
#: stay in cache between the product, the softmax and the second product (8 MB measured best
#: among 2-32 MB), and memory stays bounded however many windows a frame has.
CHUNK_BYTES = 8 << 20


def _materialise(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor]) -> bool:
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and q.shape[-2] == k.shape[-2] <= MATERIALISED_MAX_N
            and (bias is None or bias.dtype == q.dtype)
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))))


def _exact_materialised(q4: Tensor, k4: Tensor, v4: Tensor, mask: Optional[Tensor]) -> Tensor:
    """softmax(q kᵀ + mask) v on 4-D ``(batch, heads, N, d)`` inputs, ``batch`` in chunks."""
    batch, heads, n, _ = q4.shape
    out = torch.empty(batch, heads, n, v4.shape[-1], dtype=v4.dtype, device=v4.device)
    step = max(1, CHUNK_BYTES // (heads * n * n * q4.element_size()))
    buffer = scratch("exact.scores", (min(step, batch), heads, n, n), q4.dtype, q4.device)
    for start in range(0, batch, step):
        stop = min(batch, start + step)
        scores = torch.matmul(q4[start:stop], k4[start:stop].transpose(-1, -2), out=buffer[:stop - start])
        if mask is not None:
            scores.add_(mask if mask.shape[0] == 1 else mask[start:stop])
        torch.matmul(torch.softmax(scores, dim=-1), v4[start:stop], out=out[start:stop])
    return out


def exact_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``softmax(q kᵀ + bias) v`` over the last two dims (q already scaled).

    q, k, v: ``(*lead, N, d)`` with any number of leading dims (e.g. ``(B, nW, heads)``);
    bias: additive float (or boolean keep-) mask broadcastable to ``(*lead, N, N)``.
    Returns ``(*lead, N, d)``. Small windows on the CPU take the materialised path
    (``MATERIALISED_MAX_N``), everything else PyTorch's fused SDPA.
    """
    if bias is not None and bias.dtype != torch.bool and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if _materialise(q, k, v, bias):
        out_shape = tuple(q.shape[:-1]) + (v.shape[-1],)
        q4, k4, v4, mask = _fold(q, k, v, bias)
        return _exact_materialised(q4, k4, v4, mask).reshape(out_shape)
    return sdpa_attention(q, k, v, bias)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """:func:`exact_attention` always through ``F.scaled_dot_product_attention`` (any size)."""
    if bias is not None and bias.dtype != torch.bool and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if q.dim() == 4 and (
        bias is None
        or bias.dim() == 2
        or (bias.dim() == 4 and all(b in (1, n) for b, n in zip(bias.shape[:2], q.shape[:2])))
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    out_shape = tuple(q.shape[:-1]) + (v.shape[-1],)
    q4, k4, v4, mask = _fold(q, k, v, bias)
    return F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask, scale=1.0).reshape(out_shape)
