"""Layers that several architectures share, named as their official checkpoints name them,
and the reused inference buffers that keep their large temporaries from page-faulting.

Why the buffers: a fresh multi-MB CPU tensor costs page faults on every call (~20 % of
SwinIR's qkv matmul's time), so a layer may write a temporary that dies inside its block into a
per-thread buffer kept by name (:func:`reused_buffer`). Never while autograd records (training
the bundled models runs the same layers) or autocast runs (its products come out in the
autocast dtype, not the input's).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..attention.workspace import scratch


def reused_buffer(name: str, shape: Tuple[int, ...], like: Tensor) -> Optional[Tensor]:
    """The per-thread buffer ``name`` of ``shape`` (``like``'s dtype and device), or None
    where one must not be used (autograd recording, autocast)."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled(like.device.type):
        return None
    return scratch(name, shape, like.dtype, like.device)


def plain_linear(layer: nn.Module) -> bool:
    """Whether ``layer`` is an ``nn.Linear`` whose ``weight`` is a tensor the fast paths may read
    directly. A dynamically quantised Linear (``--precision int8``) is not: its ``weight`` is a
    method and its product a packed int8 kernel, so callers fall back to ``layer(x)``."""
    return type(layer) is nn.Linear and isinstance(layer.weight, Tensor)


def linear_into(layer: nn.Module, x: Tensor, buffer: str) -> Tensor:
    """``layer(x)`` (the same kernel), written into the reused buffer ``buffer`` in inference
    (plainly ``layer(x)`` for a layer that is not a plain Linear, see :func:`plain_linear`)."""
    if not plain_linear(layer):
        return layer(x)
    out = reused_buffer(buffer, tuple(x.shape[:-1]) + (layer.out_features,), x)
    if out is None:
        return layer(x)
    flat, out_flat = x.reshape(-1, x.shape[-1]), out.view(-1, layer.out_features)
    if layer.bias is None:
        torch.mm(flat, layer.weight.t(), out=out_flat)
    else:
        torch.addmm(layer.bias, flat, layer.weight.t(), out=out_flat)
    return out


class Mlp(nn.Module):
    """``fc1`` -> GELU -> ``fc2``: SwinIR's and RVRT's MLP, Uformer's ``ffn``.

    ``buffers``: names of the reused inference buffers for the hidden activation and the
    output (SwinIR, whose temporaries are large); None computes them plainly.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None,
                 buffers: Optional[Tuple[str, str]] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.buffers = buffers

    def forward(self, x: Tensor) -> Tensor:
        if self.buffers is None or torch.is_grad_enabled():
            return self.fc2(self.act(self.fc1(x)))
        hidden = linear_into(self.fc1, x, self.buffers[0])
        torch.ops.aten.gelu_(hidden)  # nn.GELU's exact (erf) form, in place
        return linear_into(self.fc2, hidden, self.buffers[1])
