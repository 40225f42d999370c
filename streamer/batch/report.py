"""The batch's record: one line per finished task, a summary table, and the JSON report.

Durations are read back from the files (PyAV, container level: no decoding), so the report says
what is on disk: the input's and output's video durations, and the drift between the output's audio
and video ends (what a viewer would notice as lost sync).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import av

from .executors import Outcome


def _durations(path: str) -> Tuple[Optional[float], Optional[float]]:
    """(video seconds, audio seconds) of a file, None where unknown."""
    try:
        with av.open(path) as container:
            def seconds(streams) -> Optional[float]:
                for st in streams:
                    if st.duration is not None and st.time_base:
                        return float(st.duration * st.time_base)
                if streams and container.duration is not None:
                    return container.duration / av.time_base
                return None
            return seconds(list(container.streams.video)), seconds(list(container.streams.audio))
    except (av.FFmpegError, OSError):
        return None, None


def entry(outcome: Outcome) -> Dict[str, Any]:
    task, stats = outcome.task, outcome.stats or {}
    video_in, _ = _durations(task.input) if os.path.exists(task.input) else (None, None)
    video_out, audio_out = _durations(task.output) if outcome.status != "failed" and os.path.exists(task.output) \
        else (None, None)
    drift = round(audio_out - video_out, 3) if video_out is not None and audio_out is not None else None
    return {
        "name": task.name, "status": outcome.status, "input": task.input, "output": task.output,
        "why": outcome.why or None,
        "frames_in": stats.get("frames_in"), "frames_out": stats.get("frames_out"),
        "input_duration": video_in, "output_duration": video_out, "av_drift_seconds": drift,
        "fps": stats.get("fps"), "seconds": round(outcome.seconds, 3), "retries": outcome.retries,
        "worker": outcome.worker or None, "error": outcome.error,
    }


def line(outcome: Outcome) -> str:
    """One line for a finished task."""
    task = outcome.task
    if outcome.status == "done":
        stats = outcome.stats
        return (f"done    {task.name}: {stats.get('frames_out')} frames in {outcome.seconds:.1f} s "
                f"({stats.get('fps', 0):.2f} fps) -> {task.output}")
    if outcome.status == "skipped":
        return f"skipped {task.name}: {outcome.why}"
    retried = f" (after {outcome.retries} retries)" if outcome.retries else ""
    return f"failed  {task.name}: {outcome.error}{retried}"


def table(entries: List[Dict[str, Any]]) -> str:
    rows = [("job", "status", "frames", "fps", "seconds", "error")]
    for e in entries:
        rows.append((e["name"], e["status"], "" if e["frames_out"] is None else str(e["frames_out"]),
                     "" if not e["fps"] else f"{e['fps']:.2f}", f"{e['seconds']:.1f}", (e["error"] or "")[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def write_report(path: str, jobs_file: str, executor: str, entries: List[Dict[str, Any]]) -> None:
    counts = {s: sum(1 for e in entries if e["status"] == s) for s in ("done", "skipped", "failed")}
    data = {"jobs_file": jobs_file, "executor": executor, **counts, "jobs": entries}
    temp = path + ".tmp"
    with open(temp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    os.replace(temp, path)
