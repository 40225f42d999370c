"""Facts about FFmpeg pixel formats that the source, the encoder settings and the sink share:
how many bits a format's samples have, whether it has an alpha plane, the names of its variants
with alpha or with full-resolution chroma, and how an alpha plane is read from a decoded frame
and changed from one bit depth to another.

The alpha plane is carried as FFmpeg stores it (one sample per pixel, the format's own bits:
``uint16`` holding 10 or 12 bits for ``yuva444p10le`` / ``yuva444p12le``), so a plane that goes
from one format to another of the same depth is copied bit for bit.
"""
from __future__ import annotations

from typing import Optional

import av
import numpy as np


def video_format(name: Optional[str]) -> Optional["av.VideoFormat"]:
    """FFmpeg's format ``name``; None for None or a name FFmpeg does not know."""
    if not name:
        return None
    try:
        return av.VideoFormat(name)
    except (ValueError, av.FFmpegError):
        return None


def sample_bits(name: Optional[str]) -> int:
    """Bits of the format's deepest component (8 when unknown)."""
    fmt = video_format(name)
    return max((c.bits for c in fmt.components), default=8) if fmt is not None else 8


def alpha_bits(name: Optional[str]) -> Optional[int]:
    """Bits of the format's alpha component; None when it has none."""
    fmt = video_format(name)
    if fmt is None:
        return None
    return next((c.bits for c in fmt.components if c.is_alpha), None)


def with_alpha(name: str) -> str:
    """The planar variant of a YUV format with an alpha plane (``yuv420p10le`` -> ``yuva420p10le``)."""
    return name.replace("yuv", "yuva", 1) if name.startswith("yuv") and not name.startswith("yuva") else name


def full_chroma(name: str) -> str:
    """The 4:4:4 variant of a subsampled YUV format (``yuv420p10le`` -> ``yuv444p10le``)."""
    for sub in ("420", "422", "440", "411", "410"):
        if sub in name:
            return name.replace(sub, "444", 1)
    return name


def rgb_format(bits: int) -> str:
    """The packed RGB format frames travel as: ``rgb24`` for up to 8 bits, else ``rgb48le``."""
    return "rgb24" if bits <= 8 else "rgb48le"


def _alpha_plane_index(fmt: "av.VideoFormat") -> Optional[int]:
    """Index of a plane that holds only alpha samples (planar yuva*/gbrap*), else None."""
    alpha = [c for c in fmt.components if c.is_alpha]
    if not alpha or not fmt.is_planar:
        return None
    plane = alpha[0].plane
    return plane if sum(1 for c in fmt.components if c.plane == plane) == 1 else None


def read_alpha(vf: "av.VideoFrame") -> np.ndarray:
    """The frame's alpha plane, H x W, in its format's own bits (:func:`alpha_bits`): the plane
    itself for planar formats, the fourth channel of an RGBA conversion for packed ones."""
    fmt = vf.format
    index = _alpha_plane_index(fmt)
    bits = alpha_bits(fmt.name) or 8
    if index is None:   # packed (rgba, argb, ya8, ...): 8 or 16 bits per sample
        rgba = vf.to_ndarray(format="rgba" if bits <= 8 else "rgba64le")
        return np.ascontiguousarray(rgba[..., 3])
    dtype = np.dtype(np.uint8) if bits <= 8 else np.dtype(">u2" if fmt.is_big_endian else "<u2")
    plane = vf.planes[index]
    rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // dtype.itemsize)
    return rows[:, : plane.width].astype(dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype)


def convert_alpha_bits(alpha: np.ndarray, bits_in: int, bits_out: int) -> np.ndarray:
    """An alpha plane from ``bits_in`` to ``bits_out`` bits: fewer bits drop the low ones, more
    bits repeat the high ones below (so 0 and full scale stay 0 and full scale)."""
    if bits_in == bits_out:
        return alpha
    a = alpha.astype(np.uint32)
    if bits_out < bits_in:
        a = a >> (bits_in - bits_out)
    else:
        shift = bits_out - bits_in
        a = (a << shift) | (a >> max(0, bits_in - shift))
    return a.astype(np.uint8 if bits_out <= 8 else np.uint16)


def resize_nearest(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """``plane`` at ``height`` x ``width`` by nearest sample: alpha passes through, it is not
    resampled into values the input did not have (an x2 model's output gets each sample twice)."""
    if plane.shape == (height, width):
        return plane
    rows = np.arange(height) * plane.shape[0] // height
    cols = np.arange(width) * plane.shape[1] // width
    return plane[np.ix_(rows, cols)]


def write_alpha(vf: "av.VideoFrame", alpha: np.ndarray) -> None:
    """Put ``alpha`` (H x W, already in the format's bits) into ``vf``'s alpha plane."""
    index = _alpha_plane_index(vf.format)
    if index is None:
        raise ValueError(f"{vf.format.name} has no alpha plane")
    plane = vf.planes[index]
    dtype = np.dtype(np.uint8) if alpha_bits(vf.format.name) <= 8 else np.dtype("<u2")
    rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // dtype.itemsize)
    rows[:, : plane.width] = alpha
