"""The small dataclasses that carry data through the pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a source knows about its video stream (and what a sink needs to match it)."""

    width: int
    height: int
    time_base: Fraction
    average_rate: Optional[Fraction] = None   # frames per second, None if unknown (live, VFR)
    frames: Optional[int] = None              # frame count if the container says so
    duration: Optional[float] = None          # seconds, if known
    codec_name: Optional[str] = None
    pix_fmt: Optional[str] = None
    color_range: Optional[int] = None         # FFmpeg enum values, as PyAV exposes them
    color_space: Optional[int] = None
    color_primaries: Optional[int] = None
    color_trc: Optional[int] = None
    has_audio: bool = False
    live: bool = False
    # FFmpeg's 3x3 display matrix (9 ints), None for "as coded": how players rotate/flip the
    # picture (phone videos are often stored landscape with a 90-degree rotation to apply).
    display_matrix: Optional[Tuple[int, ...]] = None
    # Pixel shape (width / height of one pixel), None for square: anamorphic SD/DV video.
    sample_aspect_ratio: Optional[Fraction] = None
    # Bits of the alpha plane each Frame carries as ``alpha``; None: the input has no alpha.
    alpha_bits: Optional[int] = None


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``image`` is H x W x 3 RGB, uint8 for 8-bit input and uint16 (16-bit
    samples, ``rgb48le``) for 10/12-bit input (:mod:`pipelines.pixels`); ``pts`` in ``time_base``
    units. ``alpha``: the input's alpha plane (H x W, its own bits: ``VideoInfo.alpha_bits``) where
    it has one; it is not restored, only passed to the sink."""

    index: int
    pts: Optional[int]
    time_base: Fraction
    image: np.ndarray
    arrived: Optional[float] = None   # time.monotonic() when a live source demuxed it (latency's start)
    alpha: Optional[np.ndarray] = None


@dataclass
class Clip:
    """Consecutive frames a model sees together; the first ``overlap`` frames repeat the
    previous clip's last ones (per-frame models use clips of one frame, overlap 0)."""

    frames: List[Frame]
    start: int
    overlap: int = 0


@dataclass
class Tile:
    """A spatial piece of a clip: ``box`` = (top, left, bottom, right) in input pixels."""

    clip_id: int
    box: Tuple[int, int, int, int]
    data: np.ndarray
    index: int = 0
