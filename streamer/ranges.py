"""A frame range of a file: what a segment of a segment-parallel job decodes.

Frames are numbered in presentation order over the whole file, from a demux-only scan (no
decoding) of the video packets' pts. :class:`FrameRange` ``[start, end)`` is what the segment
writes; decoding starts at the keyframe at or before ``start`` (the source seeks there and
discards frames before ``start``), so each output frame is decoded exactly as in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import av

from .errors import UsageError


@dataclass(frozen=True)
class FrameRange:
    """Frames ``[start, end)`` of a file, numbered in presentation order from 0."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a frame range needs 0 <= start < end, got [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class FrameIndex:
    """Every video frame's pts in presentation order, and which of them are keyframes."""

    pts: Tuple[int, ...]
    keyframes: Tuple[int, ...]      # frame numbers of keyframes, increasing

    @classmethod
    def scan(cls, path: str) -> "FrameIndex":
        """Demux ``path``'s first video stream (no decoding); raises UsageError where frames
        cannot be numbered (packets without pts)."""
        pts: List[int] = []
        keys: List[int] = []
        with av.open(path) as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if packet.pts is None:
                    raise UsageError(f"{path}: video packets without timestamps cannot be split into segments")
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        order = sorted(pts)
        if len(set(order)) != len(order):
            raise UsageError(f"{path}: repeated video timestamps: it cannot be split into segments")
        number = {p: i for i, p in enumerate(order)}
        return cls(tuple(order), tuple(sorted(number[k] for k in keys)))

    def __len__(self) -> int:
        return len(self.pts)

    def keyframe_at_or_before(self, frame: int) -> int:
        best = None
        for k in self.keyframes:
            if k > frame:
                break
            best = k
        if best is None:
            raise UsageError(f"no keyframe at or before frame {frame}")
        return best

    def frame_of(self, pts: Optional[int]) -> Optional[int]:
        try:
            return self.pts.index(pts) if pts is not None else None
        except ValueError:
            return None
