"""Workers: the in-process device worker and the CPU process pool (streamer/workers.py)."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import List

import numpy as np
import pytest

from streamer.frames import Frame
from streamer.windows import Cutter, WorkItem, WorkResult
from streamer.flow import Stopped, WorkItemError
from streamer.pool import CpuPool
from streamer.process_env import cpu_cores
from streamer.workers import DeviceWorker
from toy_models import (Brighten, FailOnBright, Identity, KillOnBright, Slow, SlowBandFailOnBright, StopOnBright,
                        ThreadCount)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def graded_frames(n: int, h: int = 24, w: int = 32) -> List[Frame]:
    """Frame i is flat grey 10 + 20*i plus a little noise: frame brightness names the frame."""
    rng = np.random.default_rng(1)
    return [Frame(i, i, Fraction(1, 30),
                  (10 + 20 * i + rng.integers(0, 5, (h, w, 3))).astype(np.uint8)) for i in range(n)]


def cut(frames: List[Frame], tile: int = 0, overlap: int = 0, scale: int = 1) -> List[WorkItem]:
    cutter = Cutter(1, 0, tile, overlap, scale)
    return [it for f in frames for it in cutter.push(f)] + cutter.finish()


def run_worker(worker, items: List[WorkItem], stop: threading.Event = None) -> List[WorkResult]:
    results: List[WorkResult] = []
    run_worker_into(worker, items, results, stop)
    return results


def run_worker_into(worker, items: List[WorkItem], results: List[WorkResult], stop: threading.Event = None) -> None:
    """Run ``worker`` over ``items``; ``results`` keeps what was emitted if it raises."""
    inbox: "queue.Queue" = queue.Queue()
    for item in items:
        inbox.put(item)
    inbox.put(None)
    worker.start()
    try:
        worker.run(inbox, results.append, stop or threading.Event())
    finally:
        worker.terminate()


def assert_identity(results: List[WorkResult], items: List[WorkItem], add: int = 0) -> None:
    assert [r.item.index for r in results] == [it.index for it in items], "in index order, none lost"
    for result, item in zip(results, items):
        assert result.item is item
        assert np.array_equal(result.image, item.data.astype(np.int16).__add__(add).clip(0, 255).astype(np.uint8))


# -- in-process worker (the GPU worker's code path, on the CPU) ------------------------------


def test_device_worker_on_cpu_returns_results_in_order():
    items = cut(graded_frames(5), tile=16, overlap=4)
    assert_identity(run_worker(DeviceWorker(Identity()), items), items)
    assert_identity(run_worker(DeviceWorker(Brighten()), items), items, add=10)


def test_device_worker_failing_item_fails_with_its_error():
    items = cut(graded_frames(6))
    with pytest.raises(WorkItemError, match=r"frame 4 .*RuntimeError: boom") as info:
        run_worker(DeviceWorker(FailOnBright(threshold=85 / 255)), items)
    assert isinstance(info.value.cause, RuntimeError)


def test_device_worker_stops_when_told():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        run_worker(DeviceWorker(Identity()), cut(graded_frames(2)), stop)


# -- CPU process pool --------------------------------------------------------------------------


@pytest.mark.slow
def test_pool_processes_tiles_in_order_with_threads_split_between_workers():
    items = cut(graded_frames(6, 40, 50), tile=24, overlap=6)
    assert_identity(run_worker(CpuPool(Identity(), workers=2), items), items)
    # Each worker process runs torch with cores // workers threads.
    results = run_worker(CpuPool(ThreadCount(), workers=2), cut(graded_frames(2)))
    assert {int(r.image.max()) for r in results} == {max(1, cpu_cores() // 2)}
    results = run_worker(CpuPool(ThreadCount(), workers=1, threads_per_worker=1), cut(graded_frames(1)))
    assert int(results[0].image.max()) == 1


@pytest.mark.slow
def test_pool_failing_item_fails_the_run_with_its_error():
    items = cut(graded_frames(8))
    pool = CpuPool(FailOnBright(threshold=105 / 255), workers=2)
    with pytest.raises(WorkItemError, match=r"frame 5 .*RuntimeError: boom") as info:
        run_worker(pool, items)
    assert isinstance(info.value.cause, RuntimeError)
    assert "Traceback" in info.value.remote_traceback and "boom" in info.value.remote_traceback


@pytest.mark.slow
@pytest.mark.parametrize("threshold, slow_band, failing", [
    # Frames 5 and 6 both fail; 5 takes 0.6 s, so 6 (on the other worker) fails first in time.
    # The error is frame 5's whatever the timing, as with the in-process worker.
    (105, (105, 125), 5),
    # Frame 6 fails at once while frame 5, on the other worker, is still running: frame 5's
    # result still comes out (the output keeps every frame before the failure).
    (125, (95, 125), 6),
], ids=["earliest-error-wins", "earlier-results-kept"])
def test_pool_fails_at_the_earliest_failing_item_after_emitting_all_before_it(threshold, slow_band, failing):
    items = cut(graded_frames(8))
    model = SlowBandFailOnBright(threshold / 255, slow_band=(slow_band[0] / 255, slow_band[1] / 255), seconds=0.6)
    emitted: List[WorkResult] = []
    with pytest.raises(WorkItemError, match=rf"frame {failing} .*RuntimeError: boom"):
        run_worker_into(CpuPool(model, workers=2), items, emitted)
    assert [r.item.index for r in emitted] == list(range(failing))


@pytest.mark.slow
def test_pool_replaces_a_killed_worker_and_retries_its_item(tmp_path):
    items = cut(graded_frames(8), tile=16, overlap=4)
    pool = CpuPool(KillOnBright(threshold=105 / 255, marker_dir=str(tmp_path), times=1), workers=2)
    results = run_worker(pool, items)
    assert len(list(tmp_path.glob("killed-*"))) == 1, "a worker really died"
    assert pool.counters.restarts == 1
    assert_identity(results, items)


@pytest.mark.slow
def test_pool_gives_up_on_an_item_that_keeps_killing_workers(tmp_path):
    items = cut(graded_frames(8))
    pool = CpuPool(KillOnBright(threshold=105 / 255, marker_dir=str(tmp_path), times=99), workers=1,
                   max_retries=1)
    with pytest.raises(WorkItemError, match=r"frame 5 .*died \(signal 9\) 2 times"):
        run_worker(pool, items)
    assert len(list(tmp_path.glob("killed-*"))) == 2


@pytest.mark.slow
def test_pool_replaces_a_worker_that_stops_answering_and_retries_its_item(tmp_path):
    """A worker SIGSTOPped in the middle of an item neither answers nor dies: after the item timeout
    it is killed and replaced, and its item retried; the frames come out exact, in order."""
    items = cut(graded_frames(8), tile=16, overlap=4)
    pool = CpuPool(StopOnBright(threshold=105 / 255, marker_dir=str(tmp_path), times=1), workers=2,
                   item_timeout=2.0)
    started = time.monotonic()
    results = run_worker(pool, items)
    assert len(list(tmp_path.glob("stopped-*"))) == 1, "a worker really stopped"
    assert pool.counters.restarts == 1
    assert_identity(results, items)
    assert time.monotonic() - started < 60, "noticed after the 2 s timeout, not never"


def test_the_default_item_timeout_follows_the_slowest_item():
    pool = CpuPool(Identity(), workers=1)
    assert pool.current_item_timeout() == 60.0
    pool._slowest_item = 30.0
    assert pool.current_item_timeout() == 300.0
    assert CpuPool(Identity(), workers=1, item_timeout=5).current_item_timeout() == 5
    with pytest.raises(ValueError, match="item_timeout must be positive"):
        CpuPool(Identity(), workers=1, item_timeout=0)


@pytest.mark.slow
def test_pool_stop_terminates_workers_promptly():
    pool = CpuPool(Slow(seconds=30), workers=1)
    inbox: "queue.Queue" = queue.Queue()
    for item in cut(graded_frames(2)):
        inbox.put(item)
    stop = threading.Event()
    errors: list = []

    def body():
        try:
            pool.run(inbox, lambda r: None, stop)
        except BaseException as err:
            errors.append(err)

    pool.start()
    procs = [p.proc for p in pool._procs]
    thread = threading.Thread(target=body)
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(errors[0], Stopped)
    pool.terminate()
    assert all(not p.is_alive() for p in procs), "the worker busy for 30 s was terminated"


@pytest.mark.slow
@pytest.mark.parametrize("when", ["starting", "ready"])
def test_workers_do_not_outlive_a_killed_parent(tmp_path, when):
    """SIGKILL the parent (no cleanup code runs), while its workers are still starting or
    once they are ready: the worker processes must go too."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]
        from streamer.pool import CpuPool
        from toy_models import Identity
        if __name__ == "__main__":
            pool = CpuPool(Identity(), workers=2)
            pool.start()
            if {when!r} == "ready":
                pool.wait_ready()
            print(" ".join(str(p.proc.pid) for p in pool._procs), flush=True)
            time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 60   # a hang guard: start-up is slow on a loaded machine
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _alive(pid)]
        assert not alive, f"worker processes {alive} survived their parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"   # a zombie waiting for init to reap it is gone
    except FileNotFoundError:
        return False
