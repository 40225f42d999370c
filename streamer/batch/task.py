"""One task in a child process: ``python -m streamer.batch.task`` reads the task (JSON) on stdin.

It restores the input with :func:`streamer.run`, then writes the manifest (last), and tells the
driver what happens as JSON lines on stdout: ``{"progress": [done, total]}`` while it runs, then one
``{"result": STATS}`` or ``{"error": LINE, "code": C}``. Exit codes are the CLI's: 0 done, 1 failed,
2 bad input or options (never retried), 130 stopped by SIGTERM/SIGINT — which, as in the CLI,
cleans up first: no temporary file and nothing under the output name.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, NoReturn, Optional

from ..process_env import configure_openmp


def _say(message: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


_interrupted = threading.Event()


def _stop(signum, frame) -> NoReturn:
    _interrupted.set()   # (an import may swallow the exception: execute() checks this too)
    raise KeyboardInterrupt()


class _Progress:
    """Progress messages, at most a few a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last >= 0.25:
                self._last = now
                _say({"progress": [done, total]})


class TaskFailed(Exception):
    """A task that failed: ``code`` as the CLI's (2 bad input or options, 1 processing), one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def __reduce__(self):   # (crosses process boundaries: Ray pickles it)
        return (type(self), (self.code, self.message))


def execute(spec: Dict[str, Any], progress: Optional[Callable[[int, Optional[int]], None]] = None) -> Dict[str, Any]:
    """Restore ``spec["input"]`` into ``spec["output"]`` and record the manifest; the run's stats.
    Raises :class:`TaskFailed`; ``KeyboardInterrupt`` passes through after the run cleaned up."""
    # These import torch, which reads the OpenMP environment once, at import: configure_openmp first.
    from pipelines.errors import CheckpointError

    from ..errors import StreamerError, UsageError
    from ..options import options_from_mapping
    from ..pipeline import Run
    from ..ranges import FrameRange
    from . import manifest

    if _interrupted.is_set():   # SIGTERM while the libraries loaded, swallowed by an import
        raise KeyboardInterrupt()
    try:
        # A job file names outputs in folders of its own: they are made as needed.
        os.makedirs(os.path.dirname(os.path.abspath(spec["output"])), exist_ok=True)
        options = dict(spec["options"])
        if options.get("frame_range") is not None:   # (JSON: a list)
            options["frame_range"] = FrameRange(*options["frame_range"])
        options = options_from_mapping({**options, "progress": progress, "cancel": _interrupted})
        run = Run(spec["input"], spec["output"], options)
        run.execute()
        stats = run.stats.to_dict()
        if spec.get("manifest", True):
            manifest.write(spec["input"], spec["output"], spec["recorded_options"], stats)
        return stats
    except (UsageError, CheckpointError) as err:
        raise TaskFailed(2, " ".join(str(err).split())) from None
    except StreamerError as err:
        raise TaskFailed(1, " ".join(str(err).split())) from None
    except (KeyboardInterrupt, TaskFailed):
        raise
    except Exception as err:   # a bug: still one line for the report; the traceback goes to stderr
        traceback.print_exc()
        raise TaskFailed(1, f"{type(err).__name__}: {' '.join(str(err).split())}") from None


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    spec = json.loads(sys.stdin.read())
    configure_openmp()
    try:
        stats = execute(spec, _Progress())
    except KeyboardInterrupt:
        _say({"error": "stopped", "code": 130})
        return 130
    except TaskFailed as err:
        _say({"error": err.message, "code": err.code})
        return err.code
    _say({"result": stats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
