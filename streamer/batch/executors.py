"""Where tasks run: each in its own child process (:mod:`streamer.batch.task`), ``jobs`` at once.

Isolation is the point: a crash, an out-of-memory kill or a hang fails that task alone. A task
past its ``timeout`` gets SIGTERM (it cleans up as the CLI does) and, 5 s later, SIGKILL of its
whole process group (its CPU worker processes too); whatever temporary output a killed process
left is removed. A failed task is retried up to ``retries`` times, except for exit code 2 (a bad
input or option fails the same way every time).

Cores are shared: with ``jobs`` tasks at once, each gets ``cores // jobs`` torch threads in one
process (``workers 0``) unless its options say otherwise, so processes × threads ≤ cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..process_env import cpu_cores
from ..sinks import partial_files
from .plan import Task

KILL_GRACE_S = 5.0


@dataclass
class Outcome:
    """What became of one task."""

    task: Task
    status: str                     # done | skipped | failed
    why: str = ""                   # for skipped: the reason
    error: Optional[str] = None
    code: int = 0
    stats: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    retries: int = 0
    worker: str = ""


Progress = Callable[[Task, int, Optional[int]], None]


def child_options(task: Task, jobs: int) -> Dict[str, Any]:
    """The task's options with the core share of one of ``jobs`` concurrent tasks."""
    options = dict(task.options)
    if jobs > 1 and options.get("device", "cpu") == "cpu" and "workers" not in options \
            and "threads_per_worker" not in options:
        options["workers"] = 0
        options["threads_per_worker"] = max(1, cpu_cores() // jobs)
    return options


class LocalExecutor:
    """Runs tasks in child processes on this machine, ``jobs`` at once."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs))
        self._children: Dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self, tasks: List[Task], progress: Progress, finished: Callable[[Outcome], None]) -> List[Outcome]:
        outcomes: List[Optional[Outcome]] = [None] * len(tasks)

        def one(i: int) -> None:
            outcome = self._with_retries(tasks[i], progress)
            outcomes[i] = outcome
            finished(outcome)

        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="task")
        try:
            pending = {pool.submit(one, i) for i in range(len(tasks))}
            while pending:   # in short waits, so that Ctrl-C reaches this thread at once
                done, pending = wait(pending, timeout=0.2)
                for future in done:
                    future.result()
        except BaseException:
            self.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [o for o in outcomes if o is not None]

    def cancel(self) -> None:
        """Stop every running task (SIGTERM, then SIGKILL) and start no new one."""
        self._stopping.set()
        with self._lock:
            children = list(self._children.values())
        for child in children:
            _terminate(child)

    def _with_retries(self, task: Task, progress: Progress) -> Outcome:
        attempt = 0
        while True:
            outcome = self._once(task, progress)
            outcome.retries = attempt
            if outcome.status == "done" or outcome.code in (2, 130) or attempt >= task.retries \
                    or self._stopping.is_set():
                return outcome
            attempt += 1

    def _once(self, task: Task, progress: Progress) -> Outcome:
        if self._stopping.is_set():
            return Outcome(task, "failed", error="cancelled", code=130)
        spec = task.to_dict()
        spec["options"] = child_options(task, self.jobs)
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "streamer.batch.task"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        with self._lock:
            self._children[child.pid] = child
        stderr: List[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(child.stderr), daemon=True)
        reader.start()
        timed_out = threading.Event()

        def hung() -> None:
            timed_out.set()
            _terminate(child)

        timer = threading.Timer(task.timeout, hung) if task.timeout else None
        result: Dict[str, Any] = {}
        try:
            child.stdin.write(json.dumps(spec))
            child.stdin.close()
            if timer is not None:
                timer.start()
            for line in child.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if "progress" in message:
                    progress(task, *message["progress"])
                else:
                    result = message
            code = child.wait()
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._children.pop(child.pid, None)
            reader.join(timeout=2)
        seconds = time.monotonic() - started
        if code == 0 and "result" in result:
            return Outcome(task, "done", stats=result["result"], seconds=seconds, worker=f"local pid {child.pid}")
        for leftover in partial_files(task.output):   # a process killed mid-write
            try:
                os.remove(leftover)
            except OSError:
                pass
        if timed_out.is_set():
            error = f"timed out after {task.timeout:g} s"
        elif "error" in result:
            error = result["error"]
        elif code < 0:
            error = f"the task process was killed by {signal.Signals(-code).name}" \
                + (" (out of memory?)" if -code == signal.SIGKILL else "")
        else:
            tail = [l.strip() for l in stderr if l.strip()]
            error = tail[-1] if tail else f"the task process exited with code {code}"
        return Outcome(task, "failed", error=error, code=1 if timed_out.is_set() else result.get("code", 1),
                       seconds=seconds, worker=f"local pid {child.pid}")


def _terminate(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL after :data:`KILL_GRACE_S`."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        child.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
