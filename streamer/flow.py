"""What the pipeline's stages share to hand work on and to stop together.

Every stage runs in its own thread (or process) and blocks on bounded queues. A blocked stage
must still notice that the run is stopping (an error elsewhere, Ctrl-C), so each wait is
written once here: :func:`get` and :func:`put` wait at most :data:`POLL_S` at a time and raise
:class:`Stopped` once the run's stop flag is set. A failing work item is a
:class:`WorkItemError` whose text is one line naming the frames.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Optional

from .errors import ProcessingError
from .windows import WorkItem

POLL_S = 0.05  # how often a blocked stage looks at the stop flag


class Stopped(Exception):
    """Raised inside a stage when the run was told to stop (not an error of its own)."""


class DemandQueue(queue.Queue):
    """A queue that says when its consumer wants an item: :attr:`wanted` is set whenever a
    ``get`` finds it empty. A live input's decoder waits for that before it takes a frame from
    the source, so the frame the model gets is the latest, not one that waited a whole model
    time in the queue (measured: p50 latency 2.9 s -> about one model time, 1 s, on a loaded
    2-core CPU at 640x360)."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.wanted = threading.Event()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        with self.mutex:
            empty = not self._qsize()
        if empty:
            self.wanted.set()
        return super().get(block, timeout)


def get(inbox: "queue.Queue", stop: threading.Event, timeout: Optional[float] = None,
        interrupt: Optional[threading.Event] = None) -> Any:
    """``inbox.get`` that gives up with :class:`Stopped` once ``stop`` is set, and raises
    ``KeyboardInterrupt`` once ``interrupt`` is (the user's Ctrl-C, where a library may have
    swallowed the exception); with ``timeout`` it raises ``queue.Empty`` after that long."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if stop.is_set():
            raise Stopped()
        if interrupt is not None and interrupt.is_set():
            raise KeyboardInterrupt()
        wait_s = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
        try:
            return inbox.get(timeout=wait_s)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def put(outbox: "queue.Queue", item: Any, stop: threading.Event) -> None:
    """``outbox.put`` that gives up with :class:`Stopped` once ``stop`` is set."""
    while True:
        if stop.is_set():
            raise Stopped()
        try:
            outbox.put(item, timeout=POLL_S)
            return
        except queue.Full:
            pass


def one_line(err: BaseException) -> str:
    """An error's text on one line (its type's name if it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


class WorkItemError(ProcessingError):
    """A work item failed; ``str()`` is one line naming the item and the original error."""

    def __init__(self, item: WorkItem, cause: BaseException, remote_traceback: str = "") -> None:
        frames = [f.index for f in item.clip.frames]
        where = f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"
        super().__init__(f"processing {where} (work item {item.index}) failed: "
                         f"{type(cause).__name__}: {one_line(cause)}")
        self.index = item.index
        self.cause = cause
        self.remote_traceback = remote_traceback
