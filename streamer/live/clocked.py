"""Always-on output: a network output keeps its clock while no new frame arrives.

A viewer of an RTSP/RTMP/UDP stream (a VMS, ffplay, a broadcast chain) treats a silent stream as
a dead one and disconnects, or freezes on a half-decoded picture. So while the source is away
(a reconnect, a stall) or the model has nothing new yet, :class:`ClockedWriter` repeats the last
restored frame at the output rate and, once nothing new has come for ``stub_after`` seconds,
sends a generated "no signal" picture instead, until frames come back. A file output does not
use it: a recording just gets the gap (its timestamps say how long).

Timestamps come from the writer's own clock (ticks of 1/rate since the first frame), so they
strictly increase whatever the source did: a new frame takes the current tick, or the next one
where two arrive within one tick. A producer faster than real time (a file input and a fast
model) is paced to the clock: the handoff holds ``depth`` frames and ``write`` blocks when it
is full, like ``ffmpeg -re``. A live input's audio follows the clock: for each new frame the
sink hears which input time went out at which tick (:meth:`ClockedSink.align_audio`).
"""
from __future__ import annotations

import math
import queue
import threading
import time
from fractions import Fraction
from typing import Callable, Optional, Protocol

import numpy as np

from ..errors import ProcessingError
from ..frames import Frame

DEFAULT_STUB_AFTER = 2.0     # seconds of repeating the last frame before "no signal"
DEFAULT_OUTPUT_RATE = Fraction(30)   # when the input states no frame rate (some live sources)
_END = object()


class FrameSink(Protocol):
    """What the pipeline writes to (``streamer.sinks.VideoSink``, or a :class:`ClockedWriter`)."""

    def write(self, frame: Frame) -> None: ...

    def close(self, video_only_end: bool = False) -> None: ...

    def abort(self, keep_partial: bool = False) -> Optional[str]: ...


class ClockedSink(FrameSink, Protocol):
    """What the clock writes to: a sink whose live audio, if any, follows the clock's timestamps
    (it is told which input time each new frame went out at)."""

    def align_audio(self, timeline_s: float, output_s: float) -> None: ...


def no_signal_image(height: int, width: int) -> np.ndarray:
    """A dark grey picture with a light "no entry" glyph (a ring and a bar) in the middle: drawn
    here, so no font file is needed, and unlike any restored picture."""
    image = np.full((height, width, 3), 40, np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    cy, cx, r = (height - 1) / 2, (width - 1) / 2, max(2.0, min(height, width) / 4)
    d = np.hypot(y - cy, x - cx)
    thickness = max(1.0, r / 5)
    ring = np.abs(d - r) <= thickness
    # The bar: a band along the diagonal, inside the ring.
    bar = (np.abs((y - cy) - (x - cx)) <= thickness * math.sqrt(2)) & (d <= r)
    image[ring | bar] = 200
    return image


class ClockedWriter:
    """Writes frames to ``sink`` on a clock of its own thread; see the module docstring.

    ``write`` hands a frame over (blocks while ``depth`` frames wait), ``close`` writes what
    waits and closes the sink, ``abort`` stops at once. Counters: ``frames_new`` (restored frames
    written), ``frames_repeated`` and ``frames_stub`` (written by the clock). An error of the sink
    in the clock's thread is raised by the next ``write`` or by ``close``.
    """

    def __init__(self, sink: ClockedSink, rate: Optional[Fraction], stub_after: float = DEFAULT_STUB_AFTER,
                 depth: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        rate = Fraction(rate) if rate else DEFAULT_OUTPUT_RATE
        if rate <= 0 or stub_after < 0 or depth < 1:
            raise ValueError(f"rate {rate}, stub_after {stub_after}, depth {depth}")
        self.sink, self.rate, self.stub_after = sink, rate, float(stub_after)
        self.time_base = 1 / rate
        self.frames_new = self.frames_repeated = self.frames_stub = 0
        self._clock = clock
        self._handoff: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._stub: Optional[np.ndarray] = None
        self._thread = threading.Thread(target=self._run, name="output-clock", daemon=True)
        self._thread.start()

    # -- the producer's side (the pipeline's writing thread) --------------------------------

    def write(self, frame: Frame) -> None:
        while True:
            self._raise_error()
            if self._closed or not self._thread.is_alive():
                raise ProcessingError("the output clock has stopped")
            try:
                self._handoff.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, video_only_end: bool = False) -> None:
        """Write the frames handed over, stop the clock, close the sink (``video_only_end``: as
        :meth:`streamer.sinks.VideoSink.close`)."""
        if self._closed:
            return
        self._closed = True
        while self._thread.is_alive():
            try:
                self._handoff.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is not None:
            self.sink.abort()
            self._raise_error()
        self.sink.close(video_only_end=video_only_end)

    def abort(self, keep_partial: bool = False) -> Optional[str]:
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=5)
        return self.sink.abort(keep_partial=keep_partial)

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # -- the clock's thread -----------------------------------------------------------------

    def _run(self) -> None:
        period = float(self.time_base)
        start: Optional[float] = None     # clock time of tick 0 (the first frame)
        tick = -1                         # the last tick written
        last: Optional[Frame] = None
        new_at = 0.0                      # clock time of the last new frame
        try:
            while not self._stop.is_set():
                now = self._clock()
                wait = 0.1 if start is None else max(0.0, start + (tick + 1) * period - now)
                try:
                    item = self._handoff.get(timeout=min(wait, 0.1))
                except queue.Empty:
                    if start is None or self._clock() < start + (tick + 1) * period:
                        continue
                    item = None      # a tick passed with nothing new: the clock's own frame
                if item is _END:
                    return
                now = self._clock()
                if start is None:
                    start = now
                due = max(tick + 1, math.floor((now - start) / period))
                if item is not None:
                    # Faster than real time: wait for this frame's tick (the handoff fills up,
                    # so the producer waits too).
                    while not self._stop.is_set() and self._clock() < start + due * period:
                        time.sleep(min(0.05, start + due * period - self._clock()))
                    last, new_at = item, self._clock()
                    image = item.image
                    self.frames_new += 1
                elif self._clock() - new_at < self.stub_after:
                    image = last.image
                    self.frames_repeated += 1
                else:
                    image = self._stub_for(last.image)
                    self.frames_stub += 1
                tick = due
                if item is not None and item.pts is not None:   # the input's audio follows the clock
                    self.sink.align_audio(float(item.pts * item.time_base), float(tick * self.time_base))
                index = last.index if item is None else item.index
                self.sink.write(Frame(index=index, pts=tick, time_base=self.time_base, image=image))
        except BaseException as err:   # the producer re-raises it
            self._error = err

    def _stub_for(self, like: np.ndarray) -> np.ndarray:
        if self._stub is None or self._stub.shape != like.shape:
            self._stub = no_signal_image(like.shape[0], like.shape[1])
        return self._stub
