"""What the rest of the code needs to know about a restoration model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelInfo:
    """Describes how to feed a model; every model class exposes one as ``model.info``.

    Models take float tensors in [0, 1]: ``(B, C, H, W)`` for image models,
    ``(B, T, C, H, W)`` for video models (``clip_len`` set), and pad internally to
    whatever multiple they need, cropping back (``size_multiple`` says which, for
    tiling decisions only).
    """

    arch: str                 # "swinir" | "uformer" | "rvrt"
    task: str                 # "sr" | "denoise" | "car" | "deblur" | "vsr" | "video-deblur" | "video-denoise"
    scale: int = 1            # output size = input size * scale
    in_channels: int = 3      # image channels (1 grey, 3 RGB), not counting a noise-level channel
    size_multiple: int = 1    # spatial multiple the model pads to internally
    clip_len: Optional[int] = None  # frames per clip for video models; None for per-frame models
    needs_sigma: bool = False       # video denoising takes the noise level as an extra channel
