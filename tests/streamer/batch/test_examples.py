"""Every example job file in configs/jobs/ is valid and runs, on tiny stand-ins for its inputs."""
from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import cli
from streamer.batch.schema import validate
from streamer.batch.yamlfile import load

EXAMPLES = sorted(glob.glob(str(Path(__file__).parents[3] / "configs" / "jobs" / "*.yaml")))


def _tiny_video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=12)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            image = np.full((48, 64, 3), 40 * i, np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[Path(e).name for e in EXAMPLES])
def test_example_runs(example: str, tmp_path: Path):
    jobs = tmp_path / Path(example).name
    shutil.copy(example, jobs)
    # Stand-ins for the inputs it names: globs get two files, plain paths one.
    for job in validate(load(jobs)).jobs:
        for pattern in job.inputs:
            names = [pattern.replace("*", s) for s in ("one", "two")] if "*" in pattern else [pattern]
            for name in names:
                if not (tmp_path / name).exists():
                    _tiny_video(tmp_path / name)
    report = tmp_path / "report.json"
    assert cli.main(["batch", str(jobs), "--jobs", "2", "--report", str(report), "-q"]) == 0
    entries = json.loads(report.read_text())["jobs"]
    assert entries and all(e["status"] == "done" and e["frames_out"] == 4 for e in entries)
