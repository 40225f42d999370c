"""Batch jobs: what parallel jobs and segments buy, and what each task costs (JSON on stdout).

* ``jobs``: wall time of 4 short videos with ``--jobs 1`` and ``--jobs 2`` (local executor) and on
  a Ray instance on this machine (``--executor ray --jobs 2``, Ray's start-up included and also
  given apart).
* ``segments``: one long video in 1 piece and in 4 (``--jobs 2`` locally: on 2 cores 4 pieces can
  only run 2 at a time; the point is what the split and join cost and what would scale).
* ``fixed_cost``: a one-frame job (the price of a task: a Python process importing torch, loading
  the model, opening the files) and the join of the 4 pieces.
* ``rerun_seconds``: the whole 4-video file again, everything skipped (the goal: < 5 s).

Bundled denoiser, 160x96 clips (``--quick``: 12 s of video in all, about 2 minutes).

    .venv/bin/python benchmarks/batch.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def batch(jobs_file: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streamer.cli", "batch", str(jobs_file), "-q", "--force", *extra],
                   check=True, env=ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    short, long_ = (2, 8) if args.quick else (4, 24)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i in range(4):
            ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x96:rate=24:duration={short}", "-c:v", "libx264",
                   str(d / f"clip{i}.mp4"))
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x96:rate=24:duration={long_}", "-f", "lavfi", "-i",
               f"sine=duration={long_}", "-c:v", "libx264", "-g", "24", "-c:a", "aac", str(d / "long.mp4"))
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=24", "-frames:v", "1", "-c:v", "libx264",
               str(d / "one.mp4"))
        (d / "four.yaml").write_text("defaults: {task: denoise}\njobs:\n"
                                     "  - {input: 'clip*.mp4', output: 'out/{stem}.mkv'}\n")
        (d / "whole.yaml").write_text("defaults: {task: denoise}\njobs:\n  - {input: long.mp4, output: whole.mkv}\n")
        (d / "split.yaml").write_text("defaults: {task: denoise}\njobs:\n"
                                      "  - {input: long.mp4, output: split.mkv, segments: 4}\n")
        (d / "one.yaml").write_text("defaults: {task: denoise, workers: 0}\njobs:\n"
                                    "  - {input: one.mp4, output: one.mkv}\n")
        one = batch(d / "one.yaml")   # (also warms the precision cache and the page cache)
        one = min(one, batch(d / "one.yaml"))
        ray_started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=2, include_dashboard=False, "
                        "_node_ip_address='127.0.0.1', log_to_driver=False); ray.shutdown()"], check=True, env=ENV,
                       capture_output=True)
        ray_start = time.perf_counter() - ray_started
        jobs = {"jobs_1": batch(d / "four.yaml", "--jobs", "1"), "jobs_2": batch(d / "four.yaml", "--jobs", "2"),
                "ray_jobs_2": batch(d / "four.yaml", "--executor", "ray", "--jobs", "2")}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "streamer.cli", "batch", str(d / "four.yaml"), "-q"], check=True)
        rerun = time.perf_counter() - started
        whole = batch(d / "whole.yaml", "--jobs", "2")
        split = batch(d / "split.yaml", "--jobs", "2")
    result = {
        "benchmark": "batch", "date": time.strftime("%Y-%m-%d"), "cpu": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(), "short_video_seconds": short, "long_video_seconds": long_,
        "jobs_seconds": {k: round(v, 2) for k, v in jobs.items()},
        "jobs_2_speedup": round(jobs["jobs_1"] / jobs["jobs_2"], 2),
        "ray_start_seconds": round(ray_start, 2),
        "segments_seconds": {"1": round(whole, 2), "4": round(split, 2)},
        "segments_4_speedup": round(whole / split, 2),
        "fixed_cost_per_task_seconds": round(one, 2),
        "rerun_all_skipped_seconds": round(rerun, 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
