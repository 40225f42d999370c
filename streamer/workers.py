"""Workers: where the model runs.

Both kinds take :class:`~streamer.windows.WorkItem` s from a queue and hand
:class:`~streamer.windows.WorkResult` s, in index order, to an ``emit`` callback. An item is a
spatial tile of a clip, ``(T, h, w, 3)`` uint8: one frame for per-frame models, ``T`` frames a
video model restores together (:class:`~pipelines.restorer.Restorer` feeds it as one clip):

- :class:`DeviceWorker` runs the model in this process (in the pipeline's worker thread) on
  any torch device. On CUDA it stages bytes in pinned host buffers, copies with
  ``non_blocking=True`` and keeps two items in flight, so the CPU threads that decode and
  encode overlap the GPU's work; on CPU the same code runs synchronously.
- :class:`~streamer.pool.CpuPool` (in :mod:`streamer.pool`) runs N worker processes (spawned: no fork after torch/OpenMP started
  threads), each with ``cores // N`` torch threads and its own copy of the model (parameters
  shared read-only through shared memory). Tiles travel through per-worker shared-memory
  slots; only small messages go through pipes, one pair per worker, so a worker that dies
  cannot leave a shared lock held. A dead worker is replaced and its items are retried.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import torch
from torch import nn

from pipelines.attention.guard import fallback_count
from pipelines.restorer import Restorer

from .errors import ProcessingError
from .windows import WorkItem, WorkResult

Emit = Callable[[WorkResult], None]
POLL_S = 0.05  # how often blocked loops look at the stop flag


class Stopped(Exception):
    """Raised inside a stage when the pipeline was told to stop (not an error of its own)."""


class WorkItemError(ProcessingError):
    """A work item failed; ``str()`` is one line naming the item and the original error."""

    def __init__(self, item: WorkItem, cause: BaseException, remote_traceback: str = "") -> None:
        frames = [f.index for f in item.clip.frames]
        where = f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"
        super().__init__(f"processing {where} (work item {item.index}) failed: "
                         f"{type(cause).__name__}: {_one_line(cause)}")
        self.index = item.index
        self.cause = cause
        self.remote_traceback = remote_traceback


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def passive_openmp_env(environ) -> Dict[str, str]:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets a wait policy.

    With the default (active) policy, OpenMP threads spin at every barrier; when other
    processes keep the cores busy, a team waits for a descheduled member at each of the
    thousands of barriers in a forward pass. On the 2-core target machine under load, a
    2-thread worker process ran 20x slower than with passive waiting (benchmarks/pipeline.py,
    docs in its report); single-thread workers have no team and are not affected."""
    if any(key in environ for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def peak_rss_bytes() -> int:
    """This process's peak resident memory. On Linux VmHWM, because ``ru_maxrss`` survives
    exec: a process started by fork+exec reports at least its parent's size at the fork."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _get(inbox: "queue.Queue", stop: threading.Event, timeout: Optional[float] = None):
    """``inbox.get`` that gives up with :class:`Stopped` when ``stop`` is set; with
    ``timeout`` it raises ``queue.Empty`` after that long."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if stop.is_set():
            raise Stopped()
        wait_s = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
        try:
            return inbox.get(timeout=wait_s)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise


# --------------------------------------------------------------------------------------
# In-process worker (CUDA or CPU)
# --------------------------------------------------------------------------------------


@dataclass
class _InFlight:
    item: WorkItem
    output: torch.Tensor                      # host buffer the result lands in
    buffers: List[torch.Tensor] = field(default_factory=list)  # host buffers to give back
    done: Optional["torch.cuda.Event"] = None


class DeviceWorker:
    """Runs the model in the calling process on ``device`` (``cpu`` or ``cuda[:n]``).

    One code path for both: bytes are staged in host buffers (pinned on CUDA), uploaded with
    ``non_blocking=True``, converted and restored on the device, and downloaded into a
    second host buffer; on CUDA an event marks when that download is complete, and up to
    ``depth`` items are in flight so this thread queues the next item while the GPU works.
    On CPU the copies are synchronous and the buffers plain.
    """

    def __init__(self, model: nn.Module, device: str = "cpu", fp16: bool = False, depth: int = 2,
                 threads: Optional[int] = None, sigma: Optional[float] = None) -> None:
        self.device = torch.device(device)
        self.threads = threads   # torch CPU threads (None: torch's default, all cores)
        self.restorer = Restorer(model, device=self.device, fp16=fp16, sigma=sigma, prefilter=False)  # done by the Cutter
        self.cuda = self.device.type == "cuda"
        self.depth = max(1, depth)
        self._free: Dict[Tuple[int, ...], List[torch.Tensor]] = {}
        self.restarts = 0
        self.busy_seconds = 0.0
        self.attention_fallbacks = 0  # window-heads where Nyström broke down (pipelines.attention.guard)

    @property
    def description(self) -> str:
        if self.cuda:
            precision = "fp16" if self.restorer.dtype == torch.float16 else "fp32"
            return f"in-process on {self.device} ({precision})"
        return f"in-process on cpu ({self.threads or torch.get_num_threads()} threads)"

    def start(self) -> None:
        """Nothing to start: the model is already on its device."""

    def close(self) -> None:
        self._free.clear()

    def terminate(self) -> None:
        self.close()

    def run(self, inbox: "queue.Queue", emit: Emit, stop: threading.Event) -> None:
        """Process items from ``inbox`` until ``None``; results go to ``emit`` in order."""
        if self.threads:
            torch.set_num_threads(self.threads)
        pending: Deque[_InFlight] = deque()
        while True:
            try:
                # With results in flight, do not sit on an empty queue: finish them first.
                item = _get(inbox, stop, timeout=0 if pending else None)
            except queue.Empty:
                emit(self._finish(pending.popleft()))
                continue
            if item is None:
                break
            pending.append(self._launch(item))
            while len(pending) >= self.depth:
                emit(self._finish(pending.popleft()))
        while pending:
            emit(self._finish(pending.popleft()))

    def _launch(self, item: WorkItem) -> _InFlight:
        started, fallbacks = time.perf_counter(), fallback_count()
        try:
            host = torch.from_numpy(item.data)
            staging = self._take(tuple(host.shape))
            staging.copy_(host)
            restored = self.restorer.restore_uint8(staging.to(self.device, non_blocking=True))
            output = self._take(tuple(restored.shape))
            output.copy_(restored, non_blocking=True)
            done = None
            if self.cuda:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))  # the stream the copies went on
            return _InFlight(item, output, [staging, output], done)
        except Exception as err:
            raise WorkItemError(item, err) from err
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.attention_fallbacks += fallback_count() - fallbacks

    def _finish(self, flight: _InFlight) -> WorkResult:
        if flight.done is not None:
            started = time.perf_counter()
            try:
                flight.done.synchronize()
            except Exception as err:  # asynchronous CUDA errors surface here
                raise WorkItemError(flight.item, err) from err
            self.busy_seconds += time.perf_counter() - started
        # Copy out of the host buffer before it is reused for another item.
        image = flight.output.numpy().copy()
        for buf in flight.buffers:
            self._free.setdefault(tuple(buf.shape), []).append(buf)
        return WorkResult(flight.item, image)

    def _take(self, shape: Tuple[int, ...]) -> torch.Tensor:
        free = self._free.get(shape)
        if free:
            return free.pop()
        return torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)


def __getattr__(name: str):
    # The process pool lives in streamer.pool (the module its worker processes import).
    if name == "CpuPool":
        from .pool import CpuPool

        return CpuPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
