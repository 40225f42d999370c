"""Integer pictures: which sample types the project carries, and the one rule for turning them
into the model's floats and back.

Frames travel as ``uint8`` (8-bit input: what FFmpeg's ``rgb24`` gives) or ``uint16`` (10/12-bit
input, decoded to ``rgb48le``: 16-bit samples, the source's bits in the high ones). The model runs on
floats in [0, 1] either way: ``value / max`` of the sample type in, ``round(x * max)`` out, so a
10-bit picture reaches the model and the encoder without an 8-bit step, and an 8-bit one takes
exactly the arithmetic it always has.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import Tensor

# numpy sample type -> torch sample type
PIXEL_TYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}
_MAX = {torch.uint8: 255, torch.uint16: 65535}


def pixel_max(dtype: Union[np.dtype, torch.dtype, type]) -> int:
    """Full scale of a sample type (255 or 65535); ValueError for anything else."""
    key = dtype if isinstance(dtype, torch.dtype) else PIXEL_TYPES.get(np.dtype(dtype))
    if key not in _MAX:
        raise ValueError(f"pictures are uint8 or uint16, got {dtype}")
    return _MAX[key]


def check_pixels(images: np.ndarray, what: str = "images") -> None:
    """ValueError unless ``images`` is ``(..., 3)`` uint8 or uint16."""
    if images.dtype not in PIXEL_TYPES or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 or uint16 (T, H, W, 3) or (H, W, 3) {what}, "
                         f"got {images.dtype} {images.shape}")


def round_pixels(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float image on ``dtype``'s scale (0-255 or 0-65535), rounded to ``dtype``."""
    return np.clip(np.rint(x), 0, pixel_max(dtype)).astype(dtype)


def to_unit(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Integer samples as ``dtype`` floats in [0, 1]. 16-bit samples are scaled in float32
    first: 65535 is past float16's largest value (65504)."""
    full = pixel_max(x.dtype)
    if full > 255:
        return x.to(torch.float32).div_(full).to(dtype)
    return x.to(dtype).div_(full)


def from_unit(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Floats in [0, 1] as ``dtype`` samples (uint8 or uint16), rounded (in float32 for 16-bit
    samples, as in :func:`to_unit`)."""
    full = pixel_max(dtype)
    if full > 255:
        x = x.to(torch.float32)
    return x.clamp_(0, 1).mul_(full).round_().to(dtype)
