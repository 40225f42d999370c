"""Process-level facts and settings the pipeline depends on: cores, peak memory, OpenMP waiting.

Imports nothing heavy (no torch): the CLI must set the OpenMP policy before torch loads, since
OpenMP reads it once, when it starts.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Mapping

#: Environment variables that choose how idle OpenMP threads wait (GNU and Intel runtimes).
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def passive_openmp_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets a wait policy.

    With the default (active) policy, OpenMP threads spin at every barrier; when other
    processes keep the cores busy, a team waits for a descheduled member at each of the
    thousands of barriers in a forward pass. On the 2-core target machine under load, a
    2-thread worker process ran 20x slower than with passive waiting (benchmarks/pipeline.py,
    docs in its report); single-thread workers have no team and are not affected."""
    if any(key in environ for key in OPENMP_WAIT_VARIABLES):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_openmp() -> None:
    """Passive OpenMP waiting for this process and the workers it starts, unless the user set a
    policy (see :func:`passive_openmp_env`). Call it before torch is imported: once OpenMP has
    started, the setting no longer reaches this process, so it is then left alone."""
    if "torch" not in sys.modules:
        os.environ.update(passive_openmp_env(os.environ))


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    import resource  # (not on Windows: only reached where /proc is missing)

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
