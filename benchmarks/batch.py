"""``nystra-stream batch`` wall times (issue 15, acceptance 5): what running jobs in parallel buys,
local vs Ray, and the fixed cost each task (and each segment) adds.

Every figure comes from real ``nystra-stream batch`` subprocesses in this one run, on videos made
here (x264, noise frames, so the model does real work): the bundled ``denoise`` model.

- ``jobs``: 4 short videos as 4 jobs, ``--jobs 1`` vs ``--jobs 2`` (local executor), and the same
  with ``--executor ray`` when Ray is installed (a Ray instance started by the batch itself, so its
  start-up is inside the figure, as a user would see it).
- ``fixed_cost_per_task_s``: (4 jobs of F frames − 1 job of 4·F frames) / 3, both ``--jobs 1``:
  what a task costs besides its frames (a child process, torch import, model load, open/close);
  also with ``workers: 0`` (no CPU worker processes per task), which ``--jobs 2`` uses.
- ``segments``: one long video (4·F frames) as 1 vs 4 segments, ``--jobs 4``; fixed cost per segment
  = (4 segments at ``--jobs 1`` − 1 segment) / 3. Reported only where segment-parallel runs exist
  (``streamer.batch.segments``); otherwise the JSON says so.

    .venv/bin/python benchmarks/batch.py --quick      # < 3 min: 64x48, 12 frames per short video
    .venv/bin/python benchmarks/batch.py              # 160x120, 48 frames per short video
    .venv/bin/python benchmarks/batch.py --no-ray
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# Ray, when used, stays on this machine and sends no usage reports.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def make_video(path: Path, frames: int, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.options = {"g": "12"}     # keyframes every 0.5 s, so a long video can be cut into segments
        for _ in range(frames):
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def jobs_yaml(inputs: List[Path], out_dir: Path, segments: str = "off", workers: Optional[int] = None) -> str:
    lines = ["defaults:", "  task: denoise"] + ([f"  workers: {workers}"] if workers is not None else []) + ["jobs:"]
    for i, path in enumerate(inputs):
        lines += [f"  - name: j{i}", f"    input: {json.dumps(str(path))}",
                  f"    output: {json.dumps(str(out_dir / (path.stem + '.mkv')))}", f"    segments: {segments}"]
    return "\n".join(lines) + "\n"


def batch(work: Path, label: str, inputs: List[Path], *flags: str, segments: str = "off",
          workers: Optional[int] = None) -> Dict:
    """One ``nystra-stream batch`` run into a fresh folder: wall seconds and the report's statuses."""
    out_dir = work / label
    out_dir.mkdir()
    jobs = work / f"{label}.yaml"
    jobs.write_text(jobs_yaml(inputs, out_dir, segments, workers))
    report = work / f"{label}.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "streamer.cli", "batch", str(jobs), "-q", "--report", str(report),
                           *flags], env=ENV, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label}: nystra-stream batch exited {done.returncode}: {done.stderr.strip()[-500:]}")
    entries = json.loads(report.read_text())["jobs"]
    statuses = sorted({e["status"] for e in entries})
    if statuses != ["done"]:
        raise SystemExit(f"{label}: expected every job done, got {statuses}")
    return {"wall_s": round(wall, 3), "frames_out": sum(e.get("frames_out") or 0 for e in entries)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny videos (64x48, 12 frames): under 3 minutes")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor runs")
    args = parser.parse_args(argv)
    width, height, frames = (64, 48, 12) if args.quick else (160, 120, 48)
    has_ray = importlib.util.find_spec("ray") is not None and not args.no_ray
    has_segments = importlib.util.find_spec("streamer.batch.segments") is not None
    result: Dict = {"benchmark": "batch", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quick": args.quick,
                    "video": f"{width}x{height}, {frames} frames per short video, x264", "task": "denoise"}
    with tempfile.TemporaryDirectory(prefix="nystra-bench-batch-") as tmp:
        work = Path(tmp)
        short = [work / f"short{i}.mp4" for i in range(4)]
        for i, path in enumerate(short):
            make_video(path, frames, width, height, seed=i)
        long = work / "long.mp4"
        make_video(long, 4 * frames, width, height, seed=9)

        # Not counted: the first run after an install compiles .pyc files and fills the page cache.
        batch(work, "warm-up", short[:1], "--jobs", "1")
        runs = {"local_jobs1": batch(work, "local1", short, "--jobs", "1"),
                "local_jobs2": batch(work, "local2", short, "--jobs", "2"),
                "one_long_job": batch(work, "long1", [long], "--jobs", "1"),
                # --jobs 1 keeps the default CPU worker processes (a pool per task); this is without:
                "local_jobs1_workers0": batch(work, "local1w0", short, "--jobs", "1", workers=0),
                "one_long_job_workers0": batch(work, "long1w0", [long], "--jobs", "1", workers=0)}
        if has_ray:
            runs["ray_jobs1"] = batch(work, "ray1", short, "--jobs", "1", "--executor", "ray")
            runs["ray_jobs2"] = batch(work, "ray2", short, "--jobs", "2", "--executor", "ray")
        result["runs"] = runs
        result["speedup_jobs2_vs_jobs1_local"] = round(runs["local_jobs1"]["wall_s"] / runs["local_jobs2"]["wall_s"], 3)
        result["fixed_cost_per_task_s"] = round(
            (runs["local_jobs1"]["wall_s"] - runs["one_long_job"]["wall_s"]) / 3, 3)
        result["fixed_cost_per_task_workers0_s"] = round(
            (runs["local_jobs1_workers0"]["wall_s"] - runs["one_long_job_workers0"]["wall_s"]) / 3, 3)
        if has_ray:
            result["speedup_jobs2_vs_jobs1_ray"] = round(runs["ray_jobs1"]["wall_s"] / runs["ray_jobs2"]["wall_s"], 3)
            result["ray_vs_local_jobs2"] = round(runs["ray_jobs2"]["wall_s"] / runs["local_jobs2"]["wall_s"], 3)
        else:
            result["ray"] = "not measured: Ray not installed (pip install -e '.[ray]') or --no-ray"
        if has_segments:
            runs["long_4_segments_jobs1"] = batch(work, "seg4j1", [long], "--jobs", "1", segments="4")
            runs["long_4_segments_jobs4"] = batch(work, "seg4j4", [long], "--jobs", "4", segments="4")
            result["speedup_4_segments_vs_1"] = round(
                runs["one_long_job"]["wall_s"] / runs["long_4_segments_jobs4"]["wall_s"], 3)
            result["fixed_cost_per_segment_s"] = round(
                (runs["long_4_segments_jobs1"]["wall_s"] - runs["one_long_job"]["wall_s"]) / 3, 3)
        else:
            result["segments"] = "not measured: segment-parallel runs (streamer.batch.segments) are not built yet"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
