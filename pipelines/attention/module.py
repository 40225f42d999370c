"""Base class for window self-attention layers whose attention kernel can be switched.

Model files (SwinIR, Uformer, RVRT) subclass :class:`WindowAttentionBase` for every
window-attention layer and call :meth:`WindowAttentionBase.attend` with their
(already scaled) q, k, v. :func:`pipelines.attention.patch_attention` then switches
every such layer between ``exact``, ``nystrom`` and ``auto`` without touching the
state dict (the mode lives in plain attributes, never in parameters or buffers).

NOTE: minimal bootstrap version (exact only, no caching); the attention-core work
replaces the body of ``attend`` while keeping this interface.
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional, Sequence

import torch
from torch import Tensor, nn


class WindowAttentionBase(nn.Module):
    """A window self-attention layer with a switchable attention kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_mode: str = "exact"  # exact | nystrom | auto
        self.landmarks: int = 16
        self.iters: int = 2

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        grid: Sequence[int],
        make_bias: Optional[Callable[[], Optional[Tensor]]] = None,
        bias_key: Optional[Hashable] = None,
    ) -> Tensor:
        """Attention of one layer over all its windows.

        q, k, v: ``(..., heads, N, d)``; q already multiplied by ``head_dim**-0.5``.
        grid: the window's token grid, ``(h, w)`` or ``(t, h, w)``, ``prod(grid) == N``.
        make_bias: returns the additive bias broadcastable to ``(..., heads, N, N)``
            (relative position bias plus shift mask) or None; called only when the
            cached value for ``bias_key`` is missing.
        bias_key: hashable naming what ``make_bias`` depends on besides this layer's
            parameters (e.g. padded feature size and shift); ``None`` disables caching.
        Returns ``(..., heads, N, d)``.
        """
        bias = make_bias() if make_bias is not None else None
        if bias is not None:
            bias = bias.to(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
