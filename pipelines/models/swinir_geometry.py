"""Tensor-level helpers under the SwinIR layers: window geometry and inference buffers.

Pure functions of sizes (relative-position index, shifted-window regions and masks, the
roll + partition gather order, mirror padding) and the reused per-thread buffers the layers
write their large temporaries into. Kept apart from :mod:`pipelines.models.swinir` so that the
model file holds the architecture only; that module re-exports the public names.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import linear_into, reused_buffer

_MASKED = -100.0                        # the official shift-mask value (not -inf)


# --------------------------------------------------------------------------------------------
# Geometry helpers


def _plain_tensors(build: Callable) -> Callable:
    """Build cached geometry outside inference mode: a tensor first made under
    ``torch.inference_mode`` could not be used later by a forward that records autograd
    (training the bundled models uses the same code and caches)."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return build(*args, **kwargs)

    return wrapper


def relative_position_index(window: int) -> Tensor:
    """``(N, N)`` index into the ``(2w-1)**2`` bias table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), offsets made >= 0
    return delta[0] * (2 * window - 1) + delta[1]


@functools.lru_cache(maxsize=32)
@_plain_tensors
def _window_regions(window: int, shift: int, height: int, width: int, device: torch.device) -> Tensor:
    """``(nW, N)`` region id of every token of every window after the cyclic shift.

    Tokens of different regions were not neighbours before the roll, so they must not attend
    to each other. Small (one int per token), so cached per padded size.
    """

    def bands(n: int) -> Tensor:
        ids = torch.zeros(n, dtype=torch.int64, device=device)
        ids[n - window:] = 1
        ids[n - shift:] = 2
        return ids

    regions = bands(height)[:, None] * 3 + bands(width)[None, :]
    regions = regions.view(height // window, window, width // window, window).transpose(1, 2)
    return regions.reshape(-1, window * window)


@functools.lru_cache(maxsize=32)
@_plain_tensors
def window_token_order(window: int, shift: int, height: int, width: int,
                       device: torch.device) -> Optional[Tuple[Tensor, Tensor]]:
    """Where each window token comes from: ``(order, inverse)`` over the ``H*W`` tokens.

    ``tokens[:, order]`` is the cyclic roll by ``-shift`` followed by the window partition
    (windows row-major, tokens row-major inside each), in one gather; ``[:, inverse]`` undoes
    both. None when the result is the identity (no shift, windows as wide as the map).
    """
    if shift == 0 and window == width:
        return None
    rows = (torch.arange(height, device=device) + shift) % height
    cols = (torch.arange(width, device=device) + shift) % width
    source = rows[:, None] * width + cols[None, :]
    order = source.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1)
    return order, torch.argsort(order)


@functools.lru_cache(maxsize=2)
@_plain_tensors
def shift_mask(window: int, shift: int, height: int, width: int, device=None) -> Tensor:
    """The official ``(nW, N, N)`` shifted-window mask (0 / -100) for a padded feature size.

    Built once per size and shared by every shifted block (read-only: callers add it to their
    bias). Only the latest two sizes are kept: at window 64 a mask is hundreds of MB.
    """
    regions = _window_regions(window, shift, height, width, torch.device(device or "cpu"))
    return (regions[:, None, :] != regions[:, :, None]).float() * _MASKED


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right to a multiple: reflect (official), mirrored periodically if pad >= size."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    if pad_h < height and pad_w < width:
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return x.index_select(-2, _mirror_index(height, height + pad_h, x.device)).index_select(
        -1, _mirror_index(width, width + pad_w, x.device))


def _mirror_index(size: int, total: int, device: torch.device) -> Tensor:
    if size == 1:
        return torch.zeros(total, dtype=torch.int64, device=device)
    period = 2 * (size - 1)
    pos = torch.arange(total, device=device) % period
    return torch.where(pos < size, pos, period - pos)


# --------------------------------------------------------------------------------------------
# Inference temporaries go into reused per-thread buffers (see :mod:`.layers`), named "swinir.ROLE".


def _linear(layer: nn.Linear, x: Tensor, role: str) -> Tensor:
    """``layer(x)`` (the same kernel), written into the ``role`` buffer in inference."""
    return linear_into(layer, x, "swinir." + role)


def _gather(tokens: Tensor, index: Tensor, role: str) -> Tensor:
    out = reused_buffer("swinir." + role, tuple(tokens.shape), tokens)
    return tokens.index_select(1, index) if out is None else torch.index_select(tokens, 1, index, out=out)

