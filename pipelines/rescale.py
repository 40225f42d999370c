"""``Rescaled``: run a per-frame model at a fraction of the picture's resolution.

The dial's (``--target-fps``) cheapest lever. On the 2-core AVX2 CPU the bundled denoiser at
640x360 took 0.47 s a frame with its preset (Nyström, 16 landmarks, 2 iterations), 0.43 s with
the cheapest Nyström setting (4 landmarks, 1 iteration), 0.48 s at window 32, and 0.11 s on
the half-size picture (2026-12-06, one process, 2 threads, min of 2): the attention knobs move
it by 10 %, the linear layers and convolutions that bound it scale with the pixel count. So
to reach a frame rate the attention settings cannot, the model runs on a smaller picture:
area-averaged down by ``factor`` (which also averages noise away), restored, and brought back
to the full output size bicubically — what video-call encoders do under load (lower the
resolution before the frame rate). What it costs in PSNR is in the quality table
(:mod:`pipelines.quality_table`), measured like every other setting.

``factor`` is a plain attribute, changed between frames by the live dial; 1.0 is the model
itself (no resampling).
"""
from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor, nn

from .models.base import ModelInfo
from .tiling import pad_to_multiple


class Rescaled(nn.Module):
    """``inner`` run at ``factor`` x the input's resolution (0 < factor <= 1), output at the full size."""

    def __init__(self, inner: nn.Module, info: ModelInfo, factor: float = 1.0) -> None:
        super().__init__()
        if info.clip_len is not None:
            raise ValueError("Rescaled is for per-frame models (a video model's clips are 5-D)")
        self.inner = inner
        self.info = replace(info)
        self.factor = factor

    @property
    def factor(self) -> float:
        return self._factor

    @factor.setter
    def factor(self, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"resolution factor must be in (0, 1], got {value}")
        self._factor = float(value)

    def forward(self, x: Tensor) -> Tensor:
        if self._factor == 1.0:
            return self.inner(x)
        h, w = x.shape[-2:]
        small = (max(1, round(h * self._factor)), max(1, round(w * self._factor)))
        y = F.interpolate(x, size=small, mode="area")
        y, _ = pad_to_multiple(y, self.info.size_multiple)
        y = self.inner(y)
        s = self.info.scale
        y = y[..., : small[0] * s, : small[1] * s]
        return F.interpolate(y, size=(h * s, w * s), mode="bicubic", align_corners=False)
