"""The Ray executor on a real Ray instance on this machine (issue 15, acceptance 3): jobs run as Ray
tasks, and so do the segments of a segmented job; a Ray worker process SIGKILLed in the middle of a
segment is retried by Ray, and the joined output is complete and identical to an undisturbed
single-task run, with no temporary file left.

Ray talks only to this machine here: a local instance on 127.0.0.1, no usage reports, no dashboard,
and any HTTP(S) it might try goes to a closed local port. That matters: Ray 2.60's minimal dashboard
process probes cloud metadata (169.254.169.254, metadata.google.internal) at start whatever
RAY_USAGE_STATS_ENABLED says (usage_lib.get_cluster_config_to_report); through requests, which obeys
http_proxy, so here it reaches only 127.0.0.1:9 (checked with strace -f -e trace=connect).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
       "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1,localhost",
       "PYTHONPATH": str(Path(__file__).parents[2])}


def _video(path: Path, frames: int = 48) -> None:
    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=24, options={"g": "12"})   # keyframes to cut at
        st.width, st.height, st.pix_fmt = 192, 144, "yuv420p"
        for _ in range(frames):
            for p in st.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (144, 192, 3), dtype=np.uint8),
                                                          format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _batch(jobs: Path, report: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", "batch", str(jobs), "--executor", "ray",
                             "--report", str(report), "-q"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ray_task_pids() -> list:
    found = subprocess.run(["pgrep", "-f", "ray::nystra:"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def test_a_killed_ray_worker_is_retried_and_the_output_is_identical(tmp_path: Path):
    """An undisturbed job (one task), then the same as 3 segments with one killed mid-segment."""
    _video(tmp_path / "film.mp4")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults:\n  codec: ffv1\njobs:\n"
                    "  - {name: calm, input: film.mp4, output: calm.mkv, task: denoise}\n")
    calm = _batch(jobs, tmp_path / "calm.json")
    assert calm.wait(timeout=240) == 0, calm.stderr.read()
    entry = json.loads((tmp_path / "calm.json").read_text())["jobs"][0]
    assert entry["status"] == "done" and entry["worker"].startswith("ray ")

    jobs.write_text(jobs.read_text().replace("calm", "shaken").replace("}", ", segments: 3}"))
    shaken = _batch(jobs, tmp_path / "shaken.json")
    try:
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and shaken.poll() is None:
            if list(tmp_path.glob(".shaken.mkv.parts/.part-*.partial-*")):   # a segment is being written
                pids = _ray_task_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed = pids[0]
            time.sleep(0.05)
        assert killed is not None, "the task was never caught in the middle"
        assert shaken.wait(timeout=240) == 0, shaken.stderr.read()
    finally:
        if shaken.poll() is None:
            shaken.kill()
    entry = json.loads((tmp_path / "shaken.json").read_text())["jobs"][0]
    assert entry["status"] == "done" and entry["worker"] == "3 segments"
    assert np.array_equal(_frames(tmp_path / "shaken.mkv"), _frames(tmp_path / "calm.mkv"))
    assert list(tmp_path.glob(".*partial*")) == [] and not (tmp_path / ".shaken.mkv.parts").exists(), \
        "no temporary file or part left"
