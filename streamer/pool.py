"""The CPU worker pool: N spawned processes, each running the model on the tiles it is given
(a tile is ``(T, h, w, 3)``: one frame, or a clip of ``T`` frames for a video model).

Spawned, not forked: forking after torch has started OpenMP threads can deadlock the child.
Each process sets ``torch.set_num_threads(cores // N)`` and gets the model once (its
parameters in shared memory, so N workers do not hold N copies). Tiles travel through
per-worker shared-memory slots (torch shared byte tensors, sized to the largest tile seen, viewed
as the tile's sample type: uint8, or uint16 for high-bit-depth input); only
small messages go through pipes, one pair per worker, so a worker that dies can never leave
a lock held that others need. The parent waits on every worker's result pipe and process
sentinel at once: a death is seen immediately, the worker is replaced and its unfinished
items are retried (an item that keeps killing workers fails the run). Workers ignore SIGINT
(the parent handles Ctrl-C) and ask the kernel to kill them if the parent dies.

A worker that stops answering (stopped, deadlocked, swapping) is a death too: once its oldest item
has been running longer than the item timeout (``item_timeout``, the CLI's ``--worker-timeout``;
by default 10x the slowest item seen so far and at least :data:`MIN_ITEM_TIMEOUT_S`, since an RVRT
clip tile can take minutes on a CPU), it is killed, replaced and its items retried.
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.multiprocessing as torch_mp
from torch import nn

from pipelines.attention.guard import fallback_count
from pipelines.pixels import PIXEL_TYPES
from pipelines.quality_table import Setting, apply_setting
from pipelines.restorer import Restorer, describe_model
from pipelines.runtime import configure_allocator

from .errors import ProcessingError
from .flow import POLL_S, Stopped, WorkItemError, get, one_line
from .process_env import cpu_cores, passive_openmp_env, peak_rss_bytes
from .windows import WorkItem, WorkResult
from .workers import Emit, WorkerCounters


def _die_with_parent(parent: int) -> None:
    """Make the kernel kill this process when its parent dies (Linux), and watch the
    parent from a thread as a fallback elsewhere: workers must never outlive the run.
    ``parent`` is the pid the parent gave us: by the time this runs (after imports) the
    parent may already be gone and ``getppid()`` be some reaper's pid."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass
    if os.getppid() != parent:  # parent already gone before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(worker_id: int, parent: int, model: nn.Module, threads: int, tasks: Connection,
                 results: Connection, sigma: Optional[float] = None, precision: str = "fp32") -> None:
    """Body of a worker process: load once, then serve items (tiles of clips) until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    configure_allocator()  # as in the CLI's process, before this one starts its threads
    _die_with_parent(parent)
    try:
        torch.set_num_threads(threads)
        # frames come prefiltered; int8 quantises here, in each worker (packed weights do not share)
        restorer = Restorer(model, device="cpu", sigma=sigma, prefilter=False, precision=precision)
    except BaseException as err:
        results.send(("fatal", None, _picklable(err), traceback.format_exc()))
        return
    results.send(("ready", None, os.getpid(), threads))
    slots: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    while True:
        try:
            message = tasks.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            results.send(("bye", None, peak_rss_bytes(), None))
            return
        kind = message[0]
        if kind == "slot":
            _, slot, in_buf, out_buf = message
            slots[slot] = (in_buf, out_buf)
            continue
        if kind == "tune":   # the dial's new setting: after the items sent before it
            apply_setting(restorer.model, message[1])
            continue
        _, index, slot, shape, dtype = message
        in_buf, out_buf = slots[slot]
        started, fallbacks = time.perf_counter(), fallback_count()
        try:
            dtype = np.dtype(dtype)
            frames = in_buf[: int(np.prod(shape)) * dtype.itemsize].view(PIXEL_TYPES[dtype]).view(shape)
            restored = restorer.restore_pixels(frames)
            data = restored.reshape(-1).view(torch.uint8)
            size = data.numel()
            if size > out_buf.numel():
                raise RuntimeError(f"model output {tuple(restored.shape)} does not fit the output slot")
            out_buf[:size].copy_(data)
        except Exception as err:
            results.send(("error", index, _picklable(err), traceback.format_exc()))
            continue
        results.send(("ok", index, tuple(restored.shape),
                      (time.perf_counter() - started, fallback_count() - fallbacks)))


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


@dataclass
class _Slot:
    in_buf: torch.Tensor
    out_buf: torch.Tensor
    busy: bool = False


MIN_ITEM_TIMEOUT_S = 60.0
_TIMEOUT_OVER_SLOWEST = 10


class _Process:
    """The parent's handle on one worker process."""

    def __init__(self, ctx, worker_id: int, model: nn.Module, threads: int, sigma: Optional[float] = None,
                 precision: str = "fp32") -> None:
        self.worker_id = worker_id
        task_recv, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_worker_main, name=f"nystra-worker-{worker_id}",
                                args=(worker_id, os.getpid(), model, threads, task_recv, result_send, sigma, precision),
                                daemon=True)
        self.proc.start()
        task_recv.close()
        result_send.close()   # our copy: EOF on results once the child is gone
        self.slots: List[_Slot] = []
        self.in_flight: Deque[Tuple[int, int]] = deque()   # (item index, slot) in FIFO order
        self.ready = False
        self.peak_rss = 0
        self.clock: Optional[float] = None   # since when its oldest in-flight item has been its to do
        self.hung_after: Optional[float] = None   # set when it was killed for not answering

    def restart_clock(self) -> None:
        """Its oldest item became its current job now (dispatched, or the one before it came back)."""
        self.clock = time.monotonic() if self.in_flight and self.ready else None

    def free_slot(self) -> Optional[int]:
        for i, slot in enumerate(self.slots):
            if not slot.busy:
                return i
        return None

    def stop(self, grace: float) -> None:
        if self.proc.is_alive() and grace > 0:
            try:
                self.tasks.send(None)
            except (OSError, ValueError):
                pass
            self.proc.join(grace)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(0.5)
        for conn in (self.tasks, self.results):
            conn.close()


class CpuPool:   # implements streamer.workers.Worker
    """N worker processes on the CPU; items dispatched to free slots, results reordered."""

    def __init__(self, model: nn.Module, workers: int, threads_per_worker: Optional[int] = None,
                 depth: int = 2, max_retries: int = 2, scale: Optional[int] = None,
                 sigma: Optional[float] = None, item_timeout: Optional[float] = None,
                 precision: str = "fp32", ready_first: bool = False) -> None:
        if workers < 1:
            raise ValueError("a CPU pool needs at least one worker")
        info = describe_model(model)
        info.check_sigma(sigma)   # here, not first in every worker process
        self.model = model
        self.sigma = sigma
        self.precision = precision
        self.workers = workers
        self.threads = threads_per_worker or max(1, cpu_cores() // workers)
        self.depth = depth
        # Live inputs: items go only to processes that have loaded the model, so no frame waits
        # out a start-up (or a replacement's) and arrives seconds late; their frames meanwhile
        # are the source's to drop.
        self.ready_first = ready_first
        self.max_retries = max_retries
        if item_timeout is not None and item_timeout <= 0:
            raise ValueError(f"item_timeout must be positive, got {item_timeout}")
        self.item_timeout = item_timeout
        self._slowest_item = 0.0
        self.scale = scale if scale is not None else info.scale
        self.counters = WorkerCounters()
        self._ctx = torch_mp.get_context("spawn")
        self._procs: List[_Process] = []
        self._next_id = 0
        self._deaths: Dict[int, int] = {}
        self._startup_deaths = 0
        self._items: Dict[int, WorkItem] = {}
        self.lanes = workers   # items computed at once (streamer.dial.Tunable)
        self._retune: Optional[Setting] = None
        self._retune_lock = threading.Lock()

    def retune(self, setting: Setting) -> None:
        """A dial setting for the model (wrapped by ``dial_model``): sent to every worker before
        the next item is dispatched, and set on the parent's copy, which replacements start from."""
        with self._retune_lock:
            self._retune = setting

    def _send_retune(self) -> None:
        with self._retune_lock:
            setting, self._retune = self._retune, None
        if setting is None:
            return
        apply_setting(self.model, setting)
        for proc in self._procs:
            try:
                proc.tasks.send(("tune", setting))
            except (OSError, ValueError):
                pass   # it died: its replacement starts from self.model

    @property
    def description(self) -> str:
        return f"{self.workers} worker process(es) x {self.threads} thread(s), {self.precision}"

    def start(self) -> None:
        """Start the processes now (they load the model while the first frames decode)."""
        # Parameters go to shared memory once, so N workers do not hold N copies.
        self.model.share_memory()
        while len(self._procs) < self.workers:
            self._spawn()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker has loaded the model (benchmarks exclude start-up)."""
        deadline = time.monotonic() + timeout
        while not all(p.ready for p in self._procs):
            if time.monotonic() > deadline:
                raise ProcessingError(f"worker processes not ready after {timeout:.0f} s")
            for proc, message in self._poll():
                if message is None:
                    raise ProcessingError("a worker process died while starting")
                if message[0] == "ready":
                    proc.ready = True
                elif message[0] == "fatal":
                    raise ProcessingError(f"worker process could not start: {one_line(message[2])}")

    def close(self) -> None:
        """Stop the workers politely (they finish nothing new), then for sure."""
        for proc in self._procs:
            try:
                proc.tasks.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for proc in self._procs:
            proc.proc.join(max(0.0, deadline - time.monotonic()))
            self._collect_bye(proc)
        self.terminate()

    def terminate(self) -> None:
        """Stop the workers at once (errors, Ctrl-C)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.proc.is_alive():
                proc.proc.terminate()
        for proc in procs:
            proc.stop(grace=0)

    # -- the dispatch loop (runs in the pipeline's worker thread) --------------------------

    def run(self, inbox: "queue.Queue", emit: Emit, stop: threading.Event) -> None:
        if not self._procs:
            self.start()
        items: Dict[int, WorkItem] = {}          # dispatched, not yet emitted
        self._items = items
        retry: Deque[WorkItem] = deque()
        finished: Dict[int, WorkResult] = {}
        # Items that failed, held until every earlier item is out: the error raised is the
        # earliest item's (as with one worker), whichever worker happened to fail first, and
        # the results before it are still emitted (written) first.
        failed: Dict[int, tuple] = {}
        next_emit = 0
        inbox_done = False
        while True:
            if stop.is_set():
                raise Stopped()
            # Dispatch while there is room: retried items first, then new ones.
            while True:
                target = self._free_worker()
                if target is None:
                    break
                if retry:
                    item = retry.popleft()
                elif inbox_done or failed:
                    break
                else:
                    try:
                        item = get(inbox, stop, timeout=0 if items else POLL_S)
                    except queue.Empty:
                        break
                    if item is None:
                        inbox_done = True
                        break
                items[item.index] = item
                self._dispatch(target, item)
            if inbox_done and not items:
                return
            if not items and not (self.ready_first and not all(p.ready for p in self._procs)):
                continue
            for proc, message in self._poll():
                if message is None:     # the process died
                    retry.extend(self._replace(proc, items))
                    continue
                kind, index, payload, extra = message
                if kind == "ready":
                    proc.ready = True
                    proc.restart_clock()
                elif kind == "fatal":
                    raise ProcessingError(f"worker process could not start: {type(payload).__name__}: "
                                          f"{one_line(payload)}") from payload
                elif kind == "error":
                    failed[index] = (payload, extra)
                    self._release(proc, index)
                    proc.restart_clock()
                elif kind == "ok":
                    finished[index] = self._collect(proc, index, payload)
                    proc.restart_clock()
                    seconds, fallbacks = extra
                    self.counters.busy_seconds += seconds
                    self.counters.attention_fallbacks += fallbacks
                    self._slowest_item = max(self._slowest_item, seconds)
            for proc in self._hung():
                retry.extend(self._replace(proc, items))
            while next_emit in finished or next_emit in failed:
                if next_emit in failed:
                    payload, extra = failed[next_emit]
                    raise WorkItemError(items[next_emit], payload, extra) from payload
                emit(finished.pop(next_emit))
                items.pop(next_emit)
                next_emit += 1

    def current_item_timeout(self) -> float:
        """How long one item may take before its worker counts as hung (see the module doc)."""
        if self.item_timeout is not None:
            return self.item_timeout
        return max(MIN_ITEM_TIMEOUT_S, _TIMEOUT_OVER_SLOWEST * self._slowest_item)

    def _hung(self) -> List[_Process]:
        """Workers whose current item has run past the timeout, killed (their death is then
        handled like any other: replaced, items retried)."""
        limit, now = self.current_item_timeout(), time.monotonic()
        hung = []
        for proc in self._procs:
            if proc.clock is not None and now - proc.clock > limit:
                proc.hung_after = now - proc.clock
                proc.proc.kill()   # SIGKILL also ends a stopped (SIGSTOP) process
                proc.proc.join(1.0)
                hung.append(proc)
        return hung

    def _free_worker(self) -> Optional[_Process]:
        best = None
        for proc in self._procs:
            if self.ready_first and not proc.ready:
                continue
            if len(proc.in_flight) < self.depth and (best is None or len(proc.in_flight) < len(best.in_flight)):
                best = proc
        return best

    def _dispatch(self, proc: _Process, item: WorkItem) -> None:
        self._send_retune()   # a new dial setting goes out before the next item does
        data = item.data
        need_in = data.nbytes
        need_out = need_in * self.scale * self.scale
        slot_id = proc.free_slot()
        if slot_id is None:
            proc.slots.append(_Slot(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)))
            slot_id = len(proc.slots) - 1
        slot = proc.slots[slot_id]
        if slot.in_buf.numel() < need_in or slot.out_buf.numel() < need_out:
            slot.in_buf = torch.empty(need_in, dtype=torch.uint8).share_memory_()
            slot.out_buf = torch.empty(need_out, dtype=torch.uint8).share_memory_()
            try:
                proc.tasks.send(("slot", slot_id, slot.in_buf, slot.out_buf))
            except (OSError, ValueError):
                pass
        slot.in_buf[:need_in].numpy().view(data.dtype).reshape(data.shape)[...] = data
        slot.busy = True
        proc.in_flight.append((item.index, slot_id))
        if len(proc.in_flight) == 1:
            proc.restart_clock()
        try:
            proc.tasks.send(("item", item.index, slot_id, tuple(data.shape), data.dtype.str))
        except (OSError, ValueError):
            pass  # the worker died: _poll sees its sentinel and the item is retried

    def _collect(self, proc: _Process, index: int, shape: Tuple[int, ...]) -> WorkResult:
        slot = self._release(proc, index)
        dtype = self._items[index].data.dtype
        image = slot.out_buf[: int(np.prod(shape)) * dtype.itemsize].numpy().view(dtype).reshape(shape).copy()
        return WorkResult(self._items[index], image)

    @staticmethod
    def _release(proc: _Process, index: int) -> _Slot:
        """Item ``index`` is back from ``proc``: no longer in flight there, its slot free again
        (the caller reads the slot before dispatching anything else)."""
        position = next(i for i, (idx, _) in enumerate(proc.in_flight) if idx == index)
        _, slot_id = proc.in_flight[position]
        del proc.in_flight[position]
        slot = proc.slots[slot_id]
        slot.busy = False
        return slot

    def _poll(self) -> List[Tuple[_Process, Optional[tuple]]]:
        """Messages from workers (``None`` for a process that died), waiting up to POLL_S."""
        by_handle = {}
        for proc in self._procs:
            by_handle[proc.results] = proc
            by_handle[proc.proc.sentinel] = proc
        ready = wait(list(by_handle), timeout=POLL_S)
        out: List[Tuple[_Process, Optional[tuple]]] = []
        dead = set()
        for handle in ready:
            proc = by_handle[handle]
            if handle is proc.results:
                try:
                    while proc.results.poll():
                        out.append((proc, proc.results.recv()))
                except (EOFError, OSError):
                    dead.add(proc)
            elif not proc.proc.is_alive():
                dead.add(proc)
        # Read what a dying worker managed to send before reporting its death.
        for proc in dead:
            try:
                while proc.results.poll():
                    out.append((proc, proc.results.recv()))
            except (EOFError, OSError):
                pass
            out.append((proc, None))
        return out

    def _replace(self, proc: _Process, items: Dict[int, WorkItem]) -> List[WorkItem]:
        """Replace a dead worker; return its unfinished items for retry."""
        proc.proc.join(0.5)
        code = proc.proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if proc.hung_after is not None:
            how = f"stopped answering: no result for {proc.hung_after:.0f} s, killed"
        lost = [index for index, _ in proc.in_flight]
        self._procs.remove(proc)
        proc.stop(grace=0)
        if not proc.ready:
            # It died before loading the model: no item is to blame. Once may be bad luck
            # (killed from outside); twice means workers cannot start here.
            self._startup_deaths += 1
            if self._startup_deaths > 1:
                raise ProcessingError(f"worker processes die while starting ({how}); "
                                      "see the messages above")
        elif lost:  # the oldest item was being processed: it is the suspect
            suspect = lost[0]
            self._deaths[suspect] = self._deaths.get(suspect, 0) + 1
            if self._deaths[suspect] > self.max_retries:
                raise WorkItemError(items[suspect], ProcessingError(
                    f"worker process died ({how}) {self._deaths[suspect]} times on this item"))
        self.counters.restarts += 1
        if self.counters.restarts > self.workers + 4 * self.max_retries + 10:
            raise ProcessingError(f"worker processes keep dying (last: {how})")
        self._spawn()
        return [items[index] for index in lost]

    def _spawn(self) -> None:
        # A child reads its OpenMP settings from the environment when torch loads: give
        # multi-threaded workers passive waiting unless the user chose a policy (see
        # ``passive_openmp_env``).
        added = passive_openmp_env(os.environ) if self.threads > 1 else {}
        os.environ.update(added)
        try:
            self._procs.append(_Process(self._ctx, self._next_id, self.model, self.threads, self.sigma,
                                        self.precision))
        finally:
            for key in added:
                os.environ.pop(key, None)
        self._next_id += 1

    def _collect_bye(self, proc: _Process) -> None:
        try:
            while proc.results.poll():
                kind, _, payload, _ = proc.results.recv()
                if kind == "bye":
                    self.counters.peak_rss_bytes = max(self.counters.peak_rss_bytes, int(payload))
        except (EOFError, OSError):
            pass

