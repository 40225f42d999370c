"""Switch every window-attention layer of a model between attention kernels.

NOTE: minimal bootstrap version; the attention-core work completes it (auto mode).
"""
from __future__ import annotations

from torch import nn

from .module import WindowAttentionBase

MODES = ("exact", "nystrom", "auto")


def patch_attention(model: nn.Module, mode: str, landmarks: int = 16, iters: int = 2) -> nn.Module:
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r} (choose from {', '.join(MODES)})")
    for module in model.modules():
        if isinstance(module, WindowAttentionBase):
            module.attention_mode = mode
            module.landmarks = landmarks
            module.iters = iters
    return model


def unpatch(model: nn.Module) -> nn.Module:
    return patch_attention(model, "exact")
