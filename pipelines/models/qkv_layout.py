"""How a window-attention layer lays out q, k and v in memory (same values either way).

Token-major: one product ``X·Wᵀ`` over all tokens; q, k, v are strided views of it in which
windows and heads do not fold into one batch dimension, so the Nyström kernel copies all three
on every call. Head-major: each of q, k, v is one product ``W·Xᵀ`` per window, written so that
every (window, head) pair is one contiguous ``(d, N)`` block; the kernel then folds windows and
heads without copying, and at widths from 60 up the product itself is faster too.

Layers carry ``qkv_layout``: ``"auto"`` (head-major for Nyström layers of at least
``HEADS_LAYOUT_MIN_DIM`` channels in CPU inference), ``"tokens"`` or ``"heads"``; SwinIR's
layers default to ``"auto"``, RVRT's to ``"tokens"`` (measured slower there). Training and
autocast always take the plain token-major product.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ..attention.workspace import scratch

#: Whole model, Nyström, CPU, measured: width 180 (SwinIR-M) 3 % / 11 % faster at windows 8 / 32,
#: width 60 (SwinIR-S) 6 % / 17 %; width 32 (the bundled models) 1 % slower. Exact mode stays
#: token-major: SDPA is 1.26x slower on head-major inputs.
HEADS_LAYOUT_MIN_DIM = 60
LAYOUTS = ("auto", "tokens", "heads")


def heads_layout(layer: nn.Module, x: Tensor, dim: int) -> bool:
    """Whether ``layer`` (a window-attention module with ``qkv_layout`` and ``attention_mode``)
    computes q, k, v head-major for input ``x`` this call."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return False
    layout = getattr(layer, "qkv_layout", "auto")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown qkv_layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if layout == "auto":
        return layer.attention_mode == "nystrom" and x.device.type == "cpu" and dim >= HEADS_LAYOUT_MIN_DIM
    return layout == "heads"


def head_major_qkv(layer: nn.Linear, windows: Tensor, n: int, heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v of ``windows`` ``(B, nW*N, C)`` (tokens in window order) through the fused
    ``layer`` (``C -> 3C``), as ``(B, nW, heads, N, d)`` views, each (window, head) pair one
    contiguous ``(d, N)`` block. Inference only: the results live in reused buffers, valid
    until the next call."""
    batch, tokens, channels = windows.shape
    nw = batch * tokens // n
    x_t = windows.reshape(nw, n, channels).transpose(1, 2)  # (nW, C, N), a view
    out = []
    for i, role in enumerate(("q", "k", "v")):
        rows = slice(i * channels, (i + 1) * channels)
        weight = layer.weight[rows].expand(nw, channels, channels)
        buf = scratch("qkv.heads_" + role, (nw, channels, n), windows.dtype, windows.device)
        if layer.bias is None:
            torch.bmm(weight, x_t, out=buf)
        else:
            torch.baddbmm(layer.bias[rows].view(1, channels, 1).expand(nw, channels, n), weight, x_t, out=buf)
        out.append(buf.view(batch, nw // batch, heads, channels // heads, n).transpose(-1, -2))
    return out[0], out[1], out[2]
