"""Output timestamps for a live input: the source's own where sane, rebased to start at 0,
strictly increasing whatever the source does.

A live source's clock starts anywhere (an MPEG-TS camera's pts can be hours in), wraps (33-bit
MPEG-TS/RTP timestamps at 90 kHz wrap every 26.5 hours), jumps (a broadcast splice, an encoder
restart) and stops while the sender is away. :class:`Timeline` maps each frame's pts, in its
stream's time base (which may change on a reconnect), onto one output time base:

- a steady stream keeps its own spacing (variable frame rates included);
- a wrap (a step back by more than half the 33-bit range) is unwrapped;
- a discontinuity (a step back, or forward by more than ``max_jump_s``) continues one frame
  after the last output pts; counted in ``discontinuities``;
- after a reconnect (:meth:`resume`) the next frame comes the time away later: a gap.

The source's other streams (audio) share its clock: :meth:`place` puts their timestamps on the
same output timeline, through the video's current segment.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

WRAP = 1 << 33   # MPEG-TS / RTP pts modulus (90 kHz units)
_TS_BASE = Fraction(1, 90000)


class Timeline:
    """Source pts in, increasing output pts (in ``time_base``) out."""

    def __init__(self, time_base: Fraction, rate: Optional[Fraction], max_jump_s: float = 2.0) -> None:
        assert time_base > 0 and max_jump_s > 0, (time_base, max_jump_s)
        self.time_base = Fraction(time_base)
        self.step = max(1, round(1 / ((rate or 30) * self.time_base)))   # one frame, output units
        self.max_jump = round(max_jump_s / self.time_base)
        self.last_out: Optional[int] = None
        self.discontinuities = 0
        self.wraps = 0
        self._src_last: Optional[int] = None   # unwrapped, in the segment's own time base
        self._src_tb: Optional[Fraction] = None
        self._wrap_offset = 0
        self._base_src = 0                     # output units: this segment's source start ...
        self._base_out = 0                     # ... and the output pts it maps to
        self._gap = 0                          # output units to leave before the next segment

    def __call__(self, pts: Optional[int], time_base: Fraction) -> int:
        time_base = Fraction(time_base)
        new_segment = time_base != self._src_tb   # the first frame, or a new stream after a reconnect
        if new_segment:
            self._src_tb, self._src_last, self._wrap_offset = time_base, None, 0
        if pts is None:                           # no timestamp: one frame after the last
            self._src_tb = None if new_segment else self._src_tb   # start the segment at the next real pts
            return self._emit(0 if self.last_out is None else self.last_out + self.step + self._take_gap())
        if self._src_last is not None and time_base == _TS_BASE \
                and pts + self._wrap_offset < self._src_last - WRAP // 2:
            self._wrap_offset += WRAP
            self.wraps += 1
        unwrapped = pts + self._wrap_offset
        src = self._to_out(unwrapped, time_base)
        if self.last_out is None:
            self._start_segment(src, 0)
        elif new_segment:
            self._start_segment(src, self.last_out + self.step + self._take_gap())
        else:
            delta = src - (self._base_src + (self.last_out - self._base_out))
            if delta <= 0 or delta > self.max_jump:
                self.discontinuities += 1
                self._start_segment(src, self.last_out + self.step)
        self._src_last = unwrapped
        return self._emit(self._base_out + (src - self._base_src))

    def place(self, pts: Optional[int], time_base: Fraction) -> Optional[Fraction]:
        """Output seconds for a timestamp of another stream on the source's clock, through the
        current segment; None where there is none yet (before the first frame, or after
        :meth:`resume` until the new stream's first frame), for no timestamp, and for one that
        lands before 0 or more than ``max_jump_s`` past the last frame (a jump the video has
        not reached yet)."""
        if pts is None or self.last_out is None or self._src_tb is None or self._src_last is None:
            return None
        time_base = Fraction(time_base)
        if time_base == _TS_BASE and self._src_tb == _TS_BASE:
            pts += round((self._src_last - pts) / WRAP) * WRAP   # the 33-bit copy nearest the video's
        out = self._base_out + (pts * time_base / self.time_base - self._base_src)
        if out < 0 or out > self.last_out + self.max_jump:
            return None
        return out * self.time_base

    def resume(self, away_seconds: float) -> None:
        """The source came back after ``away_seconds``: the next frame follows that gap."""
        assert away_seconds >= 0, away_seconds
        self._gap = max(0, round(away_seconds / self.time_base) - self.step)
        self._src_tb = None   # the new stream's clock is unrelated to the old one's

    def _to_out(self, pts: int, time_base: Fraction) -> int:
        return round(pts * time_base / self.time_base)

    def _start_segment(self, src: int, out: int) -> None:
        self._base_src, self._base_out = src, out

    def _take_gap(self) -> int:
        gap, self._gap = self._gap, 0
        return gap

    def _emit(self, out: int) -> int:
        if self.last_out is not None and out <= self.last_out:
            out = self.last_out + 1
        self.last_out = out
        return out
