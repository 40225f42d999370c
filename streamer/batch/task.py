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
from typing import Any, Dict, NoReturn, Optional

from ..process_env import configure_openmp


def _say(message: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


def _stop(signum, frame) -> NoReturn:
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


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    spec = json.loads(sys.stdin.read())
    configure_openmp()
    # These import torch, which reads the OpenMP environment once, at import: after it is set.
    from pipelines.errors import CheckpointError

    from ..errors import StreamerError, UsageError
    from ..options import options_from_mapping
    from ..pipeline import Run
    from . import manifest

    try:
        # A job file names outputs in folders of its own: they are made as needed.
        os.makedirs(os.path.dirname(os.path.abspath(spec["output"])), exist_ok=True)
        options = options_from_mapping({**spec["options"], "progress": _Progress()})
        run = Run(spec["input"], spec["output"], options)
        run.execute()
        stats = run.stats.to_dict()
        manifest.write(spec["input"], spec["output"], spec["options"], stats)
    except KeyboardInterrupt:
        _say({"error": "stopped", "code": 130})
        return 130
    except (UsageError, CheckpointError) as err:
        _say({"error": " ".join(str(err).split()), "code": 2})
        return 2
    except StreamerError as err:
        _say({"error": " ".join(str(err).split()), "code": 1})
        return 1
    except Exception as err:   # a bug: still one line for the report; the traceback goes to stderr
        traceback.print_exc()
        _say({"error": f"{type(err).__name__}: {' '.join(str(err).split())}", "code": 1})
        return 1
    _say({"result": stats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
