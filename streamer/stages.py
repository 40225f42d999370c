"""The pipeline's two stage threads and the state they share with the writer (see
:mod:`streamer.pipeline` for how a run joins them): :class:`DecodeStage` reads frames, applies
the live latency policy and cuts work items; :class:`ModelStage` runs them through the worker."""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from typing import Deque, Dict, Optional

from .flow import POLL_S, DemandQueue, Stopped, put
from .frames import Frame
from .sources import VideoSource
from .windows import Cutter
from .workers import Worker

log = logging.getLogger(__name__)

STAGES = ("decode", "cut", "model", "stitch", "encode")


class RunState:
    """The stop flag, the first error, per-stage timers and frame counts, shared by the stages."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self.seconds: Dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.decoded_at: Dict[int, float] = {}   # frame index -> when it was decoded
        self.frames_in = 0
        self.frames_out = 0      # written by the caller's thread
        self.peak_held = 0       # most frames decoded and not yet written (read racily: an upper bound)
        self.drops: Dict[str, int] = {}
        self.cut_at: Dict[int, float] = {}       # frame index -> when it entered the cutter
        # A frame's time from the cutter to encoded: the most of the last 8, so that a deadline
        # is judged against what the queue and the model have just been taking, not an average.
        self.services: Deque[float] = deque(maxlen=8)
        self.service_s: Optional[float] = None

    def dropped(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def fail(self, err: BaseException) -> None:
        """Record ``err`` if it is the first error, and stop every stage."""
        with self._lock:
            if self.error is None and not isinstance(err, Stopped):
                self.error = err
        self.stop.set()


class DecodeStage:
    """Frames from the source, cut into work items, onto the ``work`` queue (``None`` ends it)."""

    def __init__(self, source: VideoSource, cutter: Cutter, work: "queue.Queue", state: RunState,
                 budget_s: Optional[float] = None, frames: Optional[int] = None,
                 duration: Optional[float] = None) -> None:
        self.source, self.cutter, self.work, self.state = source, cutter, work, state
        self.budget_s = budget_s   # live: arrival -> encoded; a frame that cannot make it is dropped here
        self.frames, self.duration = frames, duration   # --frames N / --duration S: end of input here
        self._said_unreachable = False

    def _enough(self, frame: Frame, first: Optional[Frame], started: float) -> bool:
        """Whether ``frame`` is past ``--frames`` / ``--duration`` (input time where it has
        timestamps, else wall time since the first frame)."""
        if self.frames is not None and self.state.frames_in >= self.frames:
            return True
        if self.duration is None or first is None:
            return False
        if frame.pts is not None and first.pts is not None:
            return float((frame.pts - first.pts) * frame.time_base) >= self.duration
        return time.monotonic() - started >= self.duration

    def _too_late(self, frame: Frame) -> bool:
        """Whether ``frame`` would leave after its deadline: its age plus what the model and encoder
        take per frame (measured) exceeds the budget. Dropped here, before the model spends on it.

        When the model alone takes longer than the budget, no frame can make it, and dropping
        every one would freeze the output on its first frame (seen: 4 frames in 8 s). Then each
        frame the model has room for, the latest (the source keeps only that), goes through:
        latency is about the per-frame time, the least there is. Said once; counted as
        ``frames_late``."""
        service = self.state.service_s
        if self.budget_s is None or frame.arrived is None or service is None:
            return False
        if service >= self.budget_s:
            # (said once the estimate is out of the start-up: eight frames measured)
            if not self._said_unreachable and len(self.state.services) == self.state.services.maxlen:
                self._said_unreachable = True
                log.warning("the model takes %.0f ms a frame, more than --max-latency %.0f ms: no frame can make "
                            "it, so each leaves as fresh as it can (raise --max-latency, or use a faster setting)",
                            service * 1000, self.budget_s * 1000)
            return False
        return time.monotonic() - frame.arrived + service > self.budget_s

    def __call__(self) -> None:
        state = self.state
        passed, first, started = 0, None, time.monotonic()
        ask = isinstance(self.work, DemandQueue)   # wait for the model to ask before the next frame
        try:
            frames = iter(self.source)
            while True:
                if ask:
                    # Live: take a frame only once the model asks for one, so that the frame it
                    # gets is the latest (the source keeps only that) and does not age here.
                    while not self.work.wanted.wait(POLL_S):
                        if state.stop.is_set():
                            raise Stopped()
                    self.work.wanted.clear()
                t0 = time.perf_counter()
                frame = next(frames, None)
                t1 = time.perf_counter()
                state.seconds["decode"] += t1 - t0
                if frame is None or self._enough(frame, first, started):
                    break
                first = first or frame
                state.frames_in += 1
                if self._too_late(frame):
                    state.dropped("late")
                    continue
                if frame.index != passed:   # frames dropped before: the cutter numbers without gaps
                    frame = dataclasses.replace(frame, index=passed)
                passed += 1
                state.decoded_at[frame.index] = frame.arrived or time.monotonic()
                state.cut_at[frame.index] = time.monotonic()
                state.peak_held = max(state.peak_held, state.frames_in - state.frames_out)
                items = self.cutter.push(frame)
                state.seconds["cut"] += time.perf_counter() - t1
                # A video model's clip still filling: the model has nothing yet, take the next now.
                ask = isinstance(self.work, DemandQueue) and bool(items)
                for item in items:
                    put(self.work, item, state.stop)
            for item in self.cutter.finish():
                put(self.work, item, state.stop)
            put(self.work, None, state.stop)
        except BaseException as err:
            state.fail(err)


class ModelStage:
    """Work items through the worker, results onto the ``results`` queue (``None`` ends it)."""

    def __init__(self, worker: Worker, work: "queue.Queue", results: "queue.Queue", state: RunState) -> None:
        self.worker, self.work, self.results, self.state = worker, work, results, state

    def __call__(self) -> None:
        stop = self.state.stop
        try:
            self.worker.run(self.work, lambda result: put(self.results, result, stop), stop)
            put(self.results, None, stop)
        except BaseException as err:
            self.state.fail(err)
