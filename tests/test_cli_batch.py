"""``nystra-stream batch`` end to end, with the bundled models on tiny real videos (issue 15, acceptance 1)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import cli

JOBS = """\
defaults:
  workers: 0
jobs:
  - name: clean-up
    input: "reels/*.mp4"
    output: "out/{stem}-{task}.mkv"
    task: denoise
  - name: sharpen
    input: reels/r1.mp4
    output: out/r1-sharp.mp4
    task: deblur
  - name: upscale
    input: reels/r2.mp4
    output: out/{stem}-x2.mp4
    task: sr2
    tile-overlap: 8
  - name: broken
    input: broken.mp4
    output: out/broken.mp4
    task: denoise
  - name: long
    input: reels/r3.mp4
    output: out/long.mkv
    task: denoise
    segments: 3
  - name: quick
    input: [reels/r1.mp4]
    output: out/quick.mkv
    task: denoise
    crf: 30
"""


def _video(path: Path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=12)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "reels").mkdir()
    for i in (1, 2, 3):
        _video(tmp_path / "reels" / f"r{i}.mp4", 6 + 2 * i, seed=i)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (tmp_path / "jobs.yaml").write_text(JOBS)
    return tmp_path


def _batch(workdir: Path, *extra: str) -> tuple:
    report = workdir / "report.json"
    # Two at a time: each then runs in its own process with one core (half the suite's time here).
    code = cli.main(["batch", str(workdir / "jobs.yaml"), "--jobs", "2", "--report", str(report), *extra])
    return code, {j["name"]: j for j in json.loads(report.read_text())["jobs"]}


@pytest.mark.slow
def test_a_job_file_runs_resumes_and_reports(workdir: Path, capsys):
    code, jobs = _batch(workdir)
    assert code == 1, "one job failed"
    assert {n: j["status"] for n, j in jobs.items()} == {
        "clean-up/r1": "done", "clean-up/r2": "done", "clean-up/r3": "done", "sharpen": "done",
        "upscale": "done", "broken": "failed", "long": "done", "quick": "done"}
    assert "cannot read" in jobs["broken"]["error"] and "\n" not in jobs["broken"]["error"]
    assert not (workdir / "out" / "broken.mp4").exists()
    for name, job in jobs.items():
        if job["status"] == "done":
            assert job["frames_out"] == job["frames_in"] > 0
            with av.open(job["output"]) as c:
                assert sum(1 for _ in c.decode(video=0)) == job["frames_in"]
    with av.open(jobs["upscale"]["output"]) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (128, 96)
    out = capsys.readouterr().out
    assert "failed  broken" in out and "job" in out.splitlines()[-9]   # per-job lines, then the table

    code, jobs = _batch(workdir)   # (how fast: benchmarks/batch.py, rerun_all_skipped_seconds)
    assert code == 1
    assert {n for n, j in jobs.items() if j["status"] == "skipped"} == set(jobs) - {"broken"}

    os.utime(workdir / "reels" / "r2.mp4")   # touched: its two jobs, and only those, are redone
    code, jobs = _batch(workdir)
    assert {n for n, j in jobs.items() if j["status"] == "done"} == {"clean-up/r2", "upscale"}

    text = (workdir / "jobs.yaml").read_text().replace("crf: 30", "crf: 28")   # an option changed
    (workdir / "jobs.yaml").write_text(text)
    code, jobs = _batch(workdir)
    assert {n for n, j in jobs.items() if j["status"] == "done"} == {"quick"}

    code, jobs = _batch(workdir, "--force", "--only", "clean-up")
    assert {n: j["status"] for n, j in jobs.items()} == {"clean-up/r1": "done", "clean-up/r2": "done",
                                                         "clean-up/r3": "done"}


def test_dry_run_prints_the_plan_and_runs_nothing(workdir: Path, capsys):
    code = cli.main(["batch", str(workdir / "jobs.yaml"), "--dry-run"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    assert all(line.startswith("run ") for line in lines)
    assert any("upscale" in l and "tile_overlap=8" in l and "r2-x2.mp4" in l for l in lines)
    assert not (workdir / "out").exists()


def test_a_job_past_its_timeout_fails_alone_and_leaves_nothing(workdir: Path):
    text = JOBS.split("  - name: sharpen")[0].replace("task: denoise", "task: denoise\n    timeout: 0.5")
    (workdir / "jobs.yaml").write_text(text + "  - name: sharpen\n    input: reels/r1.mp4\n"
                                       "    output: out/r1-sharp.mp4\n    task: deblur\n")
    code, jobs = _batch(workdir, "--jobs", "2")
    assert code == 1
    assert all(jobs[f"clean-up/r{i}"]["status"] == "failed" for i in (1, 2, 3)), [(j["name"], j["status"], j["seconds"], j["error"], j["worker"]) for j in jobs.values()]
    assert "timed out after 0.5 s" in jobs["clean-up/r1"]["error"]
    assert jobs["sharpen"]["status"] == "done"
    assert sorted(p.name for p in (workdir / "out").iterdir()) == [".r1-sharp.mp4.nystra.json", "r1-sharp.mp4"]
