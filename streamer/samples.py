"""Synthetic sample clips: still photos with camera motion, optional degradation and audio.

Used by ``make demo`` and by the tests to make real video files with known clean frames.
The photos come from scikit-image's bundled data (the ``data`` extra).
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Optional, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from pipelines import degradations


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("sample clips need scikit-image: pip install 'nystra-stream[data]'") from err
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def camera_pan(frames: int, width: int, height: int, photo: str = "astronaut") -> np.ndarray:
    """``frames`` views of a photo with a slow pan and zoom: (T, H, W, 3) uint8."""
    src = torch.from_numpy(_photo(photo)).permute(2, 0, 1).float()[None] / 255
    sh, sw = src.shape[-2:]
    # The view covers at most 80 % of the photo so there is room to move, keeps the
    # output aspect ratio, and never samples outside the photo.
    base = 0.8 * min(sw / width, sh / height)
    if base > 1:
        # Low-pass first, as a camera's optics do: point-sampling a photo several times larger
        # than the frame aliases it into texture no real video has (the bundled denoiser gained
        # 0.7 dB on such 96x64 clips and 3.6 dB on the same frames pre-filtered). Sampling
        # coordinates are normalised, so the smaller photo is sampled at the same places.
        src = F.interpolate(src, size=(round(sh / base), round(sw / base)), mode="bicubic",
                            align_corners=False, antialias=True).clamp(0, 1)
    out = np.empty((frames, height, width, 3), np.uint8)
    ys = torch.linspace(-1, 1, height)
    xs = torch.linspace(-1, 1, width)
    for t in range(frames):
        phase = t / max(frames - 1, 1)
        zoom = 1.0 - 0.1 * math.sin(math.pi * phase)
        vw, vh = width * base * zoom, height * base * zoom
        cx = sw / 2 + (sw - vw) / 2 * 0.8 * math.sin(2 * math.pi * phase)
        cy = sh / 2 + (sh - vh) / 2 * 0.6 * math.sin(math.pi * phase)
        gx = (cx + xs * vw / 2) / (sw / 2) - 1
        gy = (cy + ys * vh / 2) / (sh / 2) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        view = F.grid_sample(src, grid, mode="bicubic", align_corners=False)
        out[t] = (view[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy()
    return out


def degrade(frames: np.ndarray, kind: str, seed: int = 0, sigma: float = 25.0,
            motion: tuple = (9.0, 30.0)) -> np.ndarray:
    """Apply ``noise`` (Gaussian, ``sigma`` on 0-255), ``blur`` (Gaussian, ``sigma`` px / 10),
    ``motion`` (a straight-line blur of ``motion`` = (length px, angle degrees), as a camera
    moving during the exposure gives) or ``down2``/``down4`` (bicubic) to uint8 frames (T, H, W, 3)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(seed)
    if kind == "noise":
        x = degradations.add_gaussian_noise(x, sigma, generator=gen)
    elif kind == "blur":
        x = degradations.gaussian_blur(x, sigma / 10)
    elif kind == "motion":
        x = degradations.motion_blur(x, *motion)
    elif kind in ("down2", "down4"):
        x = degradations.bicubic_resize(x, 1 / int(kind[-1]))
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return (x.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).contiguous().numpy()


def write_clip(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 30,
    pts: Optional[Sequence[int]] = None,
    time_base: Optional[Fraction] = None,
    audio: bool = True,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    crf: int = 12,
    color: Optional[Mapping[str, int]] = None,
) -> None:
    """Encode frames (T, H, W, 3) to a file; ``pts`` (in ``time_base``) makes it variable-rate.

    ``audio`` adds an AAC 440 Hz tone as long as the video. ``color`` tags the stream with
    FFmpeg colour enums (keys ``color_range``, ``colorspace``, ``color_primaries``,
    ``color_trc``; e.g. bt709 = 1, tv range = 1) and converts RGB with that matrix and range.
    """
    path = str(path)
    tb = time_base or Fraction(1, fps)
    with av.open(path, "w") as out:
        vs = out.add_stream(codec, rate=fps, options={"crf": str(crf)} if codec.startswith("libx26") else {})
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = pix_fmt
        vs.time_base = tb
        vs.codec_context.time_base = tb
        for key, value in (color or {}).items():
            setattr(vs.codec_context, key, value)
        aus = None
        if audio:
            aus = out.add_stream("aac", rate=48000)
            aus.layout = "stereo"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if color:
                vf = vf.reformat(format=pix_fmt, dst_colorspace=color.get("colorspace"),
                                 dst_color_range=color.get("color_range"))
            vf.pts = int(pts[i]) if pts is not None else i
            vf.time_base = tb
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        if aus is not None:
            last = int(pts[-1]) if pts is not None else len(frames) - 1
            seconds = float((last + 1) * tb)  # the last frame lasts one tick
            _encode_tone(out, aus, seconds)


def _encode_tone(out: av.container.OutputContainer, stream, seconds: float, hz: float = 440.0) -> None:
    rate, chunk = 48000, 1024
    total = int(round(seconds * rate))
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        wave = 0.2 * np.sin(2 * np.pi * hz * t).astype(np.float32)
        af = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
        af.sample_rate = rate
        af.pts = start
        af.time_base = Fraction(1, rate)
        out.mux(stream.encode(af))
    out.mux(stream.encode(None))
