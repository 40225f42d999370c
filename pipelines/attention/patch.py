"""Switch every window-attention layer of a model between attention kernels."""
from __future__ import annotations

from typing import List

from torch import nn

from .module import MODES, WindowAttentionBase


def patch_attention(model: nn.Module, mode: str, landmarks: int = 16, iters: int = 2,
                    bias_aware: bool = True) -> nn.Module:
    """Set every :class:`WindowAttentionBase` of ``model`` to ``mode`` in place; return ``model``.

    ``mode``: ``exact`` (SDPA), ``nystrom`` (PnP-Nystra with ``landmarks`` and ``iters``) or
    ``auto`` (per layer, whichever is measured faster on this device for the layer's shape).
    ``bias_aware=False`` makes Nyström drop relative position biases and shift masks, as the
    paper does. Only plain attributes change: ``state_dict()`` keys and values are untouched.
    """
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r} (choose from {', '.join(MODES)})")
    if landmarks < 1 or iters < 0:
        raise ValueError(f"need landmarks >= 1 and iters >= 0, got {landmarks} and {iters}")
    for module in model.modules():
        if isinstance(module, WindowAttentionBase):
            module.attention_mode = mode
            module.landmarks = int(landmarks)
            module.iters = int(iters)
            module.nystrom_bias = bool(bias_aware)
            module.last_decision = None
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Back to exact attention everywhere (the models' own behaviour)."""
    return patch_attention(model, "exact")


def attention_plan(model: nn.Module) -> List[dict]:
    """Per window-attention layer: its mode and what its latest call ran (auto's decisions).

    ``ran`` is None for layers that have not run since they were patched; for ``auto``,
    ``reason`` says why (``measured`` with both timings in ms, ``landmarks >= N/2``, ...).
    ``exact_fallbacks``: window-heads this layer has recomputed exactly after a Nyström
    breakdown (see :mod:`.guard`), over its lifetime.
    """
    plan = []
    for name, module in model.named_modules():
        if not isinstance(module, WindowAttentionBase):
            continue
        decision = module.last_decision
        window = module.last_window
        plan.append({
            "layer": name,
            "mode": module.attention_mode,
            "landmarks": module.landmarks,
            "iters": module.iters,
            "grid": None if window is None else list(window[0]),
            "ran": None if decision is None else decision.choice,
            "reason": None if decision is None else decision.reason,
            "exact_ms": None if decision is None else decision.exact_ms,
            "nystrom_ms": None if decision is None else decision.nystrom_ms,
            "exact_fallbacks": module.exact_fallbacks,  # window-heads Nyström broke down on, so far
        })
    return plan
