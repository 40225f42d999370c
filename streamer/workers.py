"""Workers: where the model runs. The :class:`Worker` protocol is what the pipeline relies
on; every worker counts what it did in one :class:`WorkerCounters`.

Both kinds take :class:`~streamer.windows.WorkItem` s from a queue and hand
:class:`~streamer.windows.WorkResult` s, in index order, to an ``emit`` callback. An item is a
spatial tile of a clip, ``(T, h, w, 3)`` uint8 (uint16 for high-bit-depth input): one frame
for per-frame models, ``T`` frames a video model restores together
(:class:`~pipelines.restorer.Restorer` feeds it as one clip):

- :class:`DeviceWorker` runs the model in this process (in the pipeline's worker thread) on
  any torch device. On CUDA it stages bytes in pinned host buffers, copies with
  ``non_blocking=True`` and keeps two items in flight, so the CPU threads that decode and
  encode overlap the GPU's work; on CPU the same code runs synchronously.
- :class:`~streamer.pool.CpuPool` (in :mod:`streamer.pool`, which builds on this module) runs
  N worker processes (spawned: no fork after torch/OpenMP started threads), each with ``cores // N`` torch threads and its own copy of the model (parameters
  shared read-only through shared memory). Tiles travel through per-worker shared-memory
  slots; only small messages go through pipes, one pair per worker, so a worker that dies
  cannot leave a shared lock held. A dead worker is replaced and its items are retried.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Protocol, Tuple

import torch
from torch import nn

from pipelines.attention.guard import fallback_count
from pipelines.quality_table import Setting, apply_setting
from pipelines.restorer import Restorer

from .flow import WorkItemError, get
from .windows import WorkItem, WorkResult

Emit = Callable[[WorkResult], None]


@dataclass
class WorkerCounters:
    """What a worker counts while it runs (the run's stats read them, whatever the worker)."""

    busy_seconds: float = 0.0      # running the model (summed over worker processes)
    restarts: int = 0              # worker processes replaced after dying
    attention_fallbacks: int = 0   # window-heads where Nyström broke down and exact ran
    peak_rss_bytes: int = 0        # largest worker process; 0 for an in-process worker


class Worker(Protocol):
    """Where the model runs: :class:`DeviceWorker` (this process, CPU or CUDA) and
    :class:`~streamer.pool.CpuPool` (worker processes)."""

    counters: WorkerCounters

    @property
    def description(self) -> str:
        """One line for the summary: where and how the model runs."""

    def start(self) -> None:
        """Get ready (start processes); may return before they are."""

    def run(self, inbox: "queue.Queue[Optional[WorkItem]]", emit: Emit, stop: threading.Event) -> None:
        """Turn items from ``inbox`` into results, handed to ``emit`` in index order, until
        ``None``; raise :class:`~streamer.flow.Stopped` once ``stop`` is set."""

    def close(self) -> None:
        """Finish politely after a complete run (collects final counters)."""

    def terminate(self) -> None:
        """Stop at once (errors, Ctrl-C); safe after :meth:`close` and more than once."""


# --------------------------------------------------------------------------------------
# In-process worker (CUDA or CPU)
# --------------------------------------------------------------------------------------


@dataclass
class _InFlight:
    item: WorkItem
    output: torch.Tensor                      # host buffer the result lands in
    buffers: List[torch.Tensor] = field(default_factory=list)  # host buffers to give back
    done: Optional["torch.cuda.Event"] = None


class DeviceWorker:   # implements Worker
    """Runs the model in the calling process on ``device`` (``cpu`` or ``cuda[:n]``).

    One code path for both: bytes are staged in host buffers (pinned on CUDA), uploaded with
    ``non_blocking=True``, converted and restored on the device, and downloaded into a
    second host buffer; on CUDA an event marks when that download is complete, and up to
    ``depth`` items are in flight so this thread queues the next item while the GPU works.
    On CPU the copies are synchronous and the buffers plain.
    """

    def __init__(self, model: nn.Module, device: str = "cpu", fp16: bool = False, depth: int = 2,
                 threads: Optional[int] = None, sigma: Optional[float] = None,
                 precision: Optional[str] = None) -> None:
        self.device = torch.device(device)
        self.threads = threads   # torch CPU threads (None: torch's default, all cores)
        self.restorer = Restorer(model, device=self.device, fp16=fp16, sigma=sigma, prefilter=False,  # done by the Cutter
                                 precision=precision)
        self.cuda = self.device.type == "cuda"
        self.depth = max(1, depth)
        self._free: Dict[Tuple[Tuple[int, ...], torch.dtype], List[torch.Tensor]] = {}
        self.counters = WorkerCounters()
        self.lanes = 1   # items computed at once (streamer.dial.Tunable)
        self._retune: Optional[Setting] = None
        self._retune_lock = threading.Lock()

    def retune(self, setting: Setting) -> None:
        """A dial setting for the model (wrapped by ``dial_model``), from the next item on."""
        with self._retune_lock:
            self._retune = setting

    def _apply_retune(self) -> None:
        with self._retune_lock:
            setting, self._retune = self._retune, None
        if setting is not None:   # in the model's thread, between items
            apply_setting(self.restorer.model, setting)

    @property
    def description(self) -> str:
        if self.cuda:
            return f"in-process on {self.device} ({self.restorer.precision})"
        return f"in-process on cpu ({self.threads or torch.get_num_threads()} threads, {self.restorer.precision})"

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
                item = get(inbox, stop, timeout=0 if pending else None)
            except queue.Empty:
                emit(self._finish(pending.popleft()))
                continue
            if item is None:
                break
            self._apply_retune()
            pending.append(self._launch(item))
            while len(pending) >= self.depth:
                emit(self._finish(pending.popleft()))
        while pending:
            emit(self._finish(pending.popleft()))

    def _launch(self, item: WorkItem) -> _InFlight:
        started, fallbacks = time.perf_counter(), fallback_count()
        try:
            host = torch.from_numpy(item.data)
            staging = self._take(tuple(host.shape), host.dtype)
            staging.copy_(host)
            restored = self.restorer.restore_pixels(staging.to(self.device, non_blocking=True))
            output = self._take(tuple(restored.shape), restored.dtype)
            output.copy_(restored, non_blocking=True)
            done = None
            if self.cuda:
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))  # the stream the copies went on
            return _InFlight(item, output, [staging, output], done)
        except Exception as err:
            raise WorkItemError(item, err) from err
        finally:
            self.counters.busy_seconds += time.perf_counter() - started
            self.counters.attention_fallbacks += fallback_count() - fallbacks

    def _finish(self, flight: _InFlight) -> WorkResult:
        if flight.done is not None:
            started = time.perf_counter()
            try:
                flight.done.synchronize()
            except Exception as err:  # asynchronous CUDA errors surface here
                raise WorkItemError(flight.item, err) from err
            self.counters.busy_seconds += time.perf_counter() - started
        # Copy out of the host buffer before it is reused for another item.
        image = flight.output.numpy().copy()
        for buf in flight.buffers:
            self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
        return WorkResult(flight.item, image)

    def _take(self, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        free = self._free.get((shape, dtype))
        if free:
            return free.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

