"""Switch every window-attention layer of a model between attention kernels."""
from __future__ import annotations

from typing import List, Optional, Union

from torch import nn

from .module import WindowAttentionBase
from .settings import DEFAULT, AttentionSettings


def patch_attention(model: nn.Module, mode: Union[str, AttentionSettings], landmarks: Optional[int] = None,
                    iters: Optional[int] = None, bias_aware: Optional[bool] = None) -> nn.Module:
    """Set every :class:`WindowAttentionBase` of ``model`` to ``mode`` in place; return ``model``.

    ``mode``: ``exact`` (SDPA), ``nystrom`` (PnP-Nystra with ``landmarks`` and ``iters``) or
    ``auto`` (per layer, whichever is measured faster on this device for the layer's shape),
    or an :class:`AttentionSettings` (whose ``window`` is the loader's business: a model is
    built at its window, see ``pipelines.load_model``). Arguments left out keep
    :data:`~pipelines.attention.settings.DEFAULT`'s values (or the settings object's).
    ``bias_aware=False`` makes Nyström drop relative position biases and shift masks, as the
    paper does. Only plain attributes change: ``state_dict()`` keys and values are untouched.
    """
    base = mode if isinstance(mode, AttentionSettings) else DEFAULT
    settings = AttentionSettings(
        mode=base.mode if isinstance(mode, AttentionSettings) else mode,
        landmarks=base.landmarks if landmarks is None else landmarks,
        iters=base.iters if iters is None else iters,
        bias_aware=base.bias_aware if bias_aware is None else bias_aware)
    for module in model.modules():
        if isinstance(module, WindowAttentionBase):
            module.attention_mode = settings.mode
            module.landmarks = int(settings.landmarks)
            module.iters = int(settings.iters)
            module.nystrom_bias = bool(settings.bias_aware)
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
