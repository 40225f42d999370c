"""Temporal clips for video models: where clips start, and how overlapping clips are blended.

One rule for the whole project, used by the streaming pipeline (:mod:`streamer.windows`) and by
:meth:`pipelines.restorer.Restorer.restore_video` for a video held in memory:

- **Where clips start** (:class:`ClipSchedule`): the official RVRT test's clips, ``clip_len``
  frames every ``clip_len - overlap`` frames (``range(0, T - clip_len, clip_len - overlap)``)
  plus a last clip aligned to the end (``T - clip_len``), so no frame is dropped and every clip is
  full length unless the whole video is shorter than one clip. The schedule decides one frame
  at a time, so it works for streams of unknown length; :func:`clip_spans` is the same rule
  for a known length.
- **How clips are blended** (:class:`ClipBlender`): a frame that two clips share gets each
  clip's result weighted by a linear ramp across the shared frames (:func:`pipelines.tiling.ramp`,
  never 0), normalised; a frame in one clip is that clip's result. A model that returns its
  input therefore comes back bit-exact.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from .pixels import round_pixels
from .tiling import ramp

P = TypeVar("P")   # what the caller pairs with each frame (its index, its source frame, ...)


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``[start, end)`` of one clip; the first ``overlap`` are shared with the clip before."""

    start: int
    end: int
    overlap: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end or not 0 <= self.overlap < self.end - self.start:
            raise ValueError(f"bad clip span: frames {self.start}-{self.end}, overlap {self.overlap}")

    def __len__(self) -> int:
        return self.end - self.start


def check_clip_settings(clip_len: int, clip_overlap: int) -> None:
    if clip_len < 1 or not 0 <= clip_overlap < clip_len:
        raise ValueError(f"bad clip settings: len {clip_len}, overlap {clip_overlap}")


class ClipSchedule:
    """Frames in, one call per frame (positions 0, 1, 2, ...), clip spans out."""

    def __init__(self, clip_len: int = 1, clip_overlap: int = 0) -> None:
        check_clip_settings(clip_len, clip_overlap)
        self.clip_len, self.clip_overlap = clip_len, clip_overlap
        self._seen = 0                      # frames pushed so far
        self._fresh = 0                     # frames since the last clip's end
        self._last_end: Optional[int] = None

    def push(self) -> Optional[ClipSpan]:
        """One more frame; the clip it completes, if any."""
        self._seen += 1
        self._fresh += 1
        needed = self.clip_len if self._last_end is None else self.clip_len - self.clip_overlap
        return self._emit() if self._fresh >= needed else None

    def finish(self) -> Optional[ClipSpan]:
        """The last clip, aligned to the end of the stream, if frames are left over."""
        return self._emit() if self._fresh else None

    def _emit(self) -> ClipSpan:
        end = self._seen
        start = max(0, end - self.clip_len)
        overlap = 0 if self._last_end is None else max(0, self._last_end - start)
        self._last_end, self._fresh = end, 0
        return ClipSpan(start, end, overlap)


def clip_spans(length: int, clip_len: int, clip_overlap: int) -> List[ClipSpan]:
    """Every clip of a ``length``-frame video, by :class:`ClipSchedule`'s rule."""
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    schedule = ClipSchedule(clip_len, clip_overlap)
    spans = [span for span in (schedule.push() for _ in range(length)) if span is not None]
    last = schedule.finish()
    return spans + ([last] if last is not None else [])


class ClipBlender(Generic[P]):
    """Restored clips in (in order), finished frames out in order, each with its payload.

    A clip is held until the next one says how many frames they share (or :meth:`finish`
    says there is none); frames no later clip can touch then leave. One-frame clips that share
    nothing (per-frame models) leave at once, adding no latency.
    """

    def __init__(self) -> None:
        self._held: Optional[Tuple[ClipSpan, np.ndarray, Sequence[P]]] = None
        # position -> [payload, weighted sum (float32), sum of weights, sample type]
        self._open: "OrderedDict[int, List[Any]]" = OrderedDict()
        self._next: Optional[int] = None   # the next clip must start at or before this frame

    def add(self, span: ClipSpan, restored: np.ndarray, payloads: Sequence[P]) -> List[Tuple[P, np.ndarray]]:
        """``restored``: the clip's frames ``(len(span), ...)`` uint8 or uint16; ``payloads``: one per frame."""
        if len(restored) != len(span) or len(payloads) != len(span):
            raise ValueError(f"clip {span.start}-{span.end}: {len(restored)} restored frames and "
                             f"{len(payloads)} payloads for {len(span)} frames")
        if (self._next is not None and span.start > self._next) or \
                (self._held is not None and span.start < self._held[0].start):
            raise ValueError(f"clip {span.start}-{span.end} does not follow the clips before it")
        self._next = span.end
        if len(span) == 1 and span.overlap == 0 and self._held is None and not self._open:
            return [(payloads[0], restored[0])]
        out: List[Tuple[P, np.ndarray]] = []
        if self._held is not None:
            previous, previous_restored, previous_payloads = self._held
            self._accumulate(previous, previous_restored, previous_payloads,
                             trail=max(0, previous.end - span.start))
            out = self._release(before=span.start)
        self._held = (span, restored, payloads)
        return out

    def finish(self) -> List[Tuple[P, np.ndarray]]:
        """Everything still held, at the end of the stream."""
        if self._held is None:
            return []
        span, restored, payloads = self._held
        self._held = None
        self._accumulate(span, restored, payloads, trail=0)
        return self._release(before=None)

    def _accumulate(self, span: ClipSpan, restored: np.ndarray, payloads: Sequence[P], trail: int) -> None:
        n = len(span)
        weights = ramp(n, min(span.overlap, n), min(trail, n))
        for position, payload, image, w in zip(range(span.start, span.end), payloads, restored, weights):
            entry = self._open.get(position)
            if entry is None:
                self._open[position] = [payload, image.astype(np.float32) * w, float(w), image.dtype]
            else:
                entry[1] += image * w
                entry[2] += float(w)

    def _release(self, before: Optional[int]) -> List[Tuple[P, np.ndarray]]:
        out = []
        while self._open:
            position = next(iter(self._open))
            if before is not None and position >= before:
                break
            payload, total, weight, dtype = self._open.popitem(last=False)[1]
            out.append((payload, round_pixels(total / weight, dtype)))
        return out
