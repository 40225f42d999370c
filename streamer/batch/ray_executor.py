"""The Ray executor: each task a Ray task, on a local Ray instance or a cluster (``pip install '.[ray]'``).

Frames never travel through Ray's object store: a task reads its input and writes its output on a
path every node sees (a shared file system), and sends back only its stats; progress comes back
as small messages through a :class:`ray.util.queue.Queue`. A task asks for ``num_cpus`` (the
threads it will use; ``--jobs`` on a local instance divides this machine's cores) or one GPU for
``device: cuda``. Ray retries a task whose worker process or node died (``max_retries``); an
exception is retried only where it may pass (a processing failure of a job with ``retries:``),
never a bad input or option. Every output is atomic, and a retried task first removes what a
killed attempt left, so at-least-once execution leaves exactly one complete file. Ctrl-C on the
driver cancels every task (force) and removes their temporary files.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

from ..errors import UsageError
from ..process_env import cpu_cores
from ..sinks import partial_files
from .executors import Outcome, Progress
from .plan import Task
from .task import TaskFailed, execute

# Ray must not reach beyond this machine for a local instance: no usage reports.
_LOCAL_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SYSTEM_RETRIES = 3          # dead worker processes or nodes, per task


class TransientTaskError(TaskFailed):
    """A processing failure of a job that allows retries: Ray may run it again."""


def _import_ray():
    try:
        import ray
        import ray.util.queue
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'nystra-stream[ray]'") from None
    return ray


def ray_task(spec: Dict[str, Any], progress_queue: Any) -> Dict[str, Any]:
    """What runs on a Ray worker (by import path, so any node with the package can run it)."""
    import torch

    for leftover in partial_files(spec["output"]):   # from an attempt whose process was killed
        os.remove(leftover)
    torch.set_num_threads(spec["threads"])
    last = [0.0]

    def progress(done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            try:
                progress_queue.put_nowait((spec["name"], done, total))
            except Exception:   # a full queue: progress is advisory
                pass

    try:
        stats = execute(spec, progress)
    except TaskFailed as err:
        if err.code == 1 and spec["retries"] > 0:
            raise TransientTaskError(err.code, err.message) from None
        raise
    stats["node"] = os.uname().nodename
    stats["pid"] = os.getpid()
    return stats


class RayExecutor:
    name = "ray"

    def __init__(self, address: Optional[str] = None, jobs: int = 1) -> None:
        self.address, self.jobs = address, max(1, int(jobs))

    def run(self, tasks: List[Task], progress: Progress, finished: Callable[[Outcome], None]) -> List[Outcome]:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            if self.address is None:
                for key, value in _LOCAL_ENV.items():
                    os.environ.setdefault(key, value)
                ray.init(num_cpus=cpu_cores(), include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        try:
            return self._run(ray, tasks, progress, finished)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, tasks: List[Task], progress: Progress, finished: Callable[[Outcome], None]) -> List[Outcome]:
        queue = ray.util.queue.Queue(maxsize=10_000)
        by_name = {t.name: t for t in tasks}
        threads = max(1, cpu_cores() // self.jobs) if self.address is None else 1
        refs: Dict[Any, Task] = {}
        started: Dict[Any, float] = {}
        for task in tasks:
            spec = task.to_dict()
            gpu = str(task.options.get("device", "cpu")).startswith("cuda")
            spec["options"].setdefault("workers", None if gpu else 0)
            spec["threads"] = int(task.options.get("threads_per_worker") or threads)
            remote = ray.remote(ray_task).options(
                num_cpus=1 if gpu else spec["threads"], num_gpus=1 if gpu else 0, max_retries=SYSTEM_RETRIES,
                retry_exceptions=[TransientTaskError], name=f"nystra:{task.name}")
            ref = remote.remote(spec, queue)
            refs[ref], started[ref] = task, time.monotonic()
        outcomes: List[Outcome] = []
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
                for name, done, total in queue.get_nowait_batch(queue.qsize()) if queue.qsize() else []:
                    progress(by_name[name], done, total)
                for ref in ready:
                    task = refs.pop(ref)
                    outcome = self._outcome(ray, ref, task, time.monotonic() - started[ref])
                    outcomes.append(outcome)
                    finished(outcome)
        except BaseException:
            for ref, task in refs.items():
                ray.cancel(ref, force=True)
            for task in refs.values():
                for leftover in partial_files(task.output):
                    try:
                        os.remove(leftover)
                    except OSError:
                        pass
            raise
        order = {t.name: i for i, t in enumerate(tasks)}
        return sorted(outcomes, key=lambda o: order[o.task.name])

    @staticmethod
    def _outcome(ray, ref, task: Task, seconds: float) -> Outcome:
        try:
            stats = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, TaskFailed) else None
            message = cause.message if cause else " ".join(str(err).split())[-200:]
            return Outcome(task, "failed", error=message, code=cause.code if cause else 1, seconds=seconds)
        except ray.exceptions.RayError as err:   # worker or node died more often than retried
            return Outcome(task, "failed", error=f"{type(err).__name__}: the task's worker died "
                           f"{SYSTEM_RETRIES + 1} times", code=1, seconds=seconds)
        return Outcome(task, "done", stats=stats, seconds=stats.get("seconds") or seconds,
                       worker=f"ray {stats.pop('node', '?')} pid {stats.pop('pid', '?')}")
