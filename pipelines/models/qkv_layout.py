"""How a window-attention layer lays out q, k and v in memory (same values either way).

Token-major: one product ``X·Wᵀ`` over all tokens; q, k, v are strided views of it in which
windows and heads do not fold into one batch dimension, so the Nyström kernel copies all three
on every call. Head-major: each of q, k, v is one product ``W·Xᵀ`` per window, written so that
every (window, head) pair is one contiguous ``(d, N)`` block; the kernel then folds windows and
heads without copying, and at widths from 60 up the product itself is faster too.

Layers carry ``qkv_layout``: ``"auto"`` (head-major in CPU inference for layers of at least
``HEADS_LAYOUT_MIN_DIM`` channels, unless SDPA runs them: see ``heads_layout``), ``"tokens"`` or
``"heads"``. SwinIR's layers default to ``"auto"``, RVRT's to ``"tokens"`` (measured slower
there). Training and autocast always take the plain token-major product.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ..attention.exact import MATERIALISED_MAX_N
from ..attention.workspace import scratch
from .layers import plain_linear

#: Whole model, Nyström, CPU, measured: width 180 (SwinIR-M) 3 % / 11 % faster at windows 8 / 32,
#: width 60 (SwinIR-S) 6 % / 17 %; width 32 (the bundled models) 1 % slower (and 24 % slower
#: in exact mode).
HEADS_LAYOUT_MIN_DIM = 60
LAYOUTS = ("auto", "tokens", "heads")


def heads_layout(layer: nn.Module, x: Tensor, dim: int, n: int, qkv: nn.Module) -> bool:
    """Whether ``layer`` (a window-attention module with ``qkv_layout`` and ``attention_mode``)
    computes q, k, v head-major for input ``x`` (``dim`` channels, windows of ``n`` tokens)
    through its fused ``qkv`` projection (never when that is not a plain Linear: int8).

    ``auto``: on the CPU, for layers at least ``HEADS_LAYOUT_MIN_DIM`` wide, whenever the kernel
    is not SDPA, i.e. for Nyström and for exact attention on windows it materialises (in exact
    mode the whole model is then 11 % faster at window 8, but SDPA is 1.26x slower at window 32).
    In ``auto`` attention mode the layer's previous choice stands in for this call's.
    """
    if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return False
    if not plain_linear(qkv):   # e.g. dynamically quantised (int8): its weight is packed
        return False
    layout = getattr(layer, "qkv_layout", "auto")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown qkv_layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if layout != "auto":
        return layout == "heads"
    if x.device.type != "cpu" or dim < HEADS_LAYOUT_MIN_DIM:
        return False
    mode = layer.attention_mode
    if mode == "auto":
        mode = layer.last_decision.choice if layer.last_decision is not None else "exact"
    return mode == "nystrom" or (n <= MATERIALISED_MAX_N and x.dtype in (torch.float32, torch.float64))


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
