"""Synthetic degradations (noise, blur, downscaling) for training and evaluating restorers.

Images are float32 tensors in [0, 1], shaped (..., C, H, W). Every random choice comes from
an explicit ``torch.Generator`` so results are reproducible.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def add_gaussian_noise(img: Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive white Gaussian noise; ``sigma`` on the 0-255 scale, as papers quote it."""
    noise = torch.randn(img.shape, generator=generator, dtype=img.dtype, device=img.device)
    return img + noise * (sigma / 255.0)


def _blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every channel with one 2-D kernel, reflecting at the borders."""
    kh, kw = kernel.shape
    lead = img.shape[:-3]
    x = img.reshape(-1, 1, *img.shape[-2:])
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    out = F.conv2d(x, kernel.to(img)[None, None])
    return out.reshape(*lead, img.shape[-3], *out.shape[-2:])


def gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def motion_kernel(length: float, angle_deg: float, size: Optional[int] = None) -> Tensor:
    """A straight-line motion blur of ``length`` pixels at ``angle_deg``, anti-aliased."""
    size = size or (int(math.ceil(length)) | 1)
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) - c,
                            torch.arange(size, dtype=torch.float32) - c, indexing="ij")
    a = math.radians(angle_deg)
    along = xx * math.cos(a) + yy * math.sin(a)
    across = -xx * math.sin(a) + yy * math.cos(a)
    k = torch.clamp(1 - across.abs(), min=0) * (along.abs() <= length / 2).float()
    if k.sum() == 0:
        k[int(c), int(c)] = 1
    return k / k.sum()


def gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    return _blur(img, gaussian_kernel(sigma))


def motion_blur(img: Tensor, length: float, angle_deg: float) -> Tensor:
    return _blur(img, motion_kernel(length, angle_deg))


def bicubic_resize(img: Tensor, scale: float) -> Tensor:
    """Bicubic resize with antialiasing when shrinking (MATLAB-``imresize``-like)."""
    lead = img.shape[:-3]
    x = img.reshape(-1, *img.shape[-3:])
    out = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False,
                        antialias=scale < 1)
    return out.reshape(*lead, *out.shape[-3:])


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    """PSNR in dB between two images in [0, peak]."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)


# BT.601 limited-range RGB -> Y'CbCr on [0, 1] (what FFmpeg's swscale assumes for untagged
# SD/web video and what libx264 input usually is): rows Y, Cb, Cr.
_RGB_TO_YCC = torch.tensor([[65.481, 128.553, 24.966],
                            [-37.797, -74.203, 112.0],
                            [112.0, -93.786, -18.214]]) / 255.0
_YCC_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255.0


def yuv420_roundtrip(img: Tensor) -> Tensor:
    """What an RGB image becomes after ``yuv420p`` storage and decoding back to RGB.

    8-bit limited-range Y'CbCr, chroma averaged over 2x2 blocks then upsampled bilinearly.
    Almost every video a user restores was decoded from 4:2:0, so noise in its chroma is
    2x2-averaged and spatially correlated: a denoiser trained only on white RGB noise
    meets a different distribution (on the sample clips it gained 0.7 dB instead of 3.6).
    Odd sizes are handled like FFmpeg's (the last chroma sample covers the odd edge).
    """
    lead, (c, h, w) = img.shape[:-3], img.shape[-3:]
    if c != 3:
        raise ValueError(f"yuv420_roundtrip needs RGB images, got {c} channels")
    x = img.reshape(-1, 3, h, w)
    m = _RGB_TO_YCC.to(x)
    ycc = torch.einsum("ij,bjhw->bihw", m, x) + _YCC_OFFSET.to(x)[:, None, None]
    ycc = torch.round(ycc.clamp(0, 1) * 255) / 255
    y, chroma = ycc[:, :1], ycc[:, 1:]
    pooled = F.avg_pool2d(chroma, 2, ceil_mode=True)
    pooled = torch.round(pooled * 255) / 255
    chroma = F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)
    ycc = torch.cat([y, chroma], dim=1) - _YCC_OFFSET.to(x)[:, None, None]
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), ycc)
    return rgb.clamp(0, 1).reshape(*lead, 3, h, w)
