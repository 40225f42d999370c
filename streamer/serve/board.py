"""The latest restored frame, for viewers that must never slow the pipeline.

The pipeline's writer thread hands each frame to a :class:`FrameBoard` (:meth:`FrameBoard.post`):
that stores two references and bumps a version number — about a microsecond, whatever the
number of viewers, and nothing is copied or encoded there. Viewers read the latest version;
nothing queues per viewer, so a slow viewer simply skips versions.

Pictures are JPEG-encoded lazily, at most once per version and view (:class:`JpegEncoder`,
FFmpeg's ``mjpeg`` encoder through PyAV: ~2 ms for a 640x360 frame on this 2-core CPU, ~9 ms
for pure noise), by whoever asks first, and only while someone watches: with no viewer the
board costs the run nothing but the post.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, List, Optional

import av
import numpy as np

VIEWS = ("restored", "input")
PREVIEW_MAX_SIDE = 1920   # bigger pictures are shown halved (4K at full size costs ~30 ms a frame)
JPEG_QSCALE = 3           # FFmpeg's mjpeg quantiser, 2 (best) .. 31; 3 is visually clean at ~1/6 of raw

Listener = Callable[[], None]


@dataclass(frozen=True)
class Posted:
    """One frame as the writer posted it: the decoded input and its restored result (RGB HWC,
    uint8, or uint16 for a high-bit-depth input)."""

    version: int
    index: int
    input: np.ndarray
    restored: np.ndarray

    def picture(self, view: str) -> np.ndarray:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}")
        return self.restored if view == "restored" else self.input


class FrameBoard:
    """A latest-value board: :meth:`post` from one writer, :meth:`latest` from anyone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Optional[Posted] = None
        self._listeners: List[Listener] = []

    def post(self, index: int, input: np.ndarray, restored: np.ndarray) -> None:
        with self._lock:
            version = 1 if self._latest is None else self._latest.version + 1
            self._latest = Posted(version, index, input, restored)
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def latest(self) -> Optional[Posted]:
        return self._latest

    @property
    def version(self) -> int:
        latest = self._latest
        return 0 if latest is None else latest.version

    def listen(self, notify: Listener) -> None:
        """Call ``notify()`` (from the writer's thread: it must be quick) after every post."""
        with self._lock:
            self._listeners.append(notify)


def preview_size(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> "tuple[int, int]":
    """The size a picture is shown at: halved until it fits ``max_side``, and even (4:2:0 JPEG)."""
    if height < 2 or width < 2:
        raise ValueError(f"picture too small to show: {width}x{height}")
    while max(height, width) > max_side:
        height, width = height // 2, width // 2
    return height - height % 2, width - width % 2


class JpegEncoder:
    """RGB pictures of one size to JPEG bytes (an FFmpeg mjpeg encoder kept open; one thread at a time)."""

    def __init__(self, height: int, width: int) -> None:
        self.source_size = (height, width)
        self.height, self.width = preview_size(height, width)
        self._codec = av.CodecContext.create("mjpeg", "w")
        self._codec.width, self._codec.height = self.width, self.height
        self._codec.pix_fmt = "yuvj420p"
        self._codec.time_base = Fraction(1, 25)
        self._codec.qmin = self._codec.qmax = JPEG_QSCALE   # a fixed quality, not a bit rate
        self._pts = 0
        self.encoded = 0
        self.seconds = 0.0

    def encode(self, picture: np.ndarray) -> bytes:
        if picture.shape[:2] != self.source_size:
            raise ValueError(f"picture is {picture.shape[1]}x{picture.shape[0]}, encoder was made for "
                             f"{self.source_size[1]}x{self.source_size[0]}")
        # 8-bit pictures, or 16-bit ones from a high-bit-depth input (shown at 8 bits: JPEG's)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture),
                                           format="rgb24" if picture.dtype == np.uint8 else "rgb48le")
        frame = frame.reformat(width=self.width, height=self.height, format="yuvj420p")
        frame.pts, self._pts = self._pts, self._pts + 1
        packets = self._codec.encode(frame)
        if len(packets) != 1:   # mjpeg is intra-only, one packet per picture
            raise RuntimeError(f"mjpeg encoder returned {len(packets)} packets for one picture")
        self.encoded += 1
        return bytes(packets[0])
