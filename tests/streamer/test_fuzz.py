"""Fuzzing the input side: 200 seeded byte mutants of small valid files through the CLI.

Each mutant must end within 20 s with either a playable output (exit 0) or one line
``nystra-stream: error: ...`` (exit 1 or 2) and nothing under the output name — never a hang, never a
traceback, never a crash. Mutations: random byte flips, zeroed ranges, a truncation, a duplicated
chunk, a dropped chunk — over MP4 (H.264 + AAC), Matroska (FFV1), MPEG-TS (MPEG-2) and WebM (VP9).
The CLI runs in a driver process (fuzz_driver.py) fed one file at a time; one that overruns its
deadline or dies is killed, reported, and the driver restarted for the next mutant.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import samples
from toy_models import save_tiny_swinir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MUTANTS = 200
DEADLINE_S = 20.0
SOURCES = {  # name: (codec, audio)
    "h264.mp4": ("libx264", True),
    "ffv1.mkv": ("ffv1", False),
    "mpeg2.ts": ("mpeg2video", True),
    "vp9.webm": ("libvpx-vp9", False),
}


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(5)
    n = len(buf)
    if kind == 0:      # flip some bytes
        for pos in rng.integers(0, n, size=int(rng.integers(1, 32))):
            buf[pos] ^= int(rng.integers(1, 256))
    elif kind == 1:    # zero a range
        start = int(rng.integers(0, n))
        end = min(n, start + int(rng.integers(1, 512)))
        buf[start:end] = bytes(end - start)
    elif kind == 2:    # truncate
        del buf[int(rng.integers(1, n)):]
    elif kind == 3:    # duplicate a chunk
        start = int(rng.integers(0, n))
        chunk = buf[start:start + int(rng.integers(16, 4096))]
        buf[start:start] = chunk
    else:              # drop a chunk
        start = int(rng.integers(0, n))
        del buf[start:start + int(rng.integers(16, 4096))]
    return bytes(buf)


class Driver:
    """The driver process; :meth:`run` gives its JSON answer for one file, or why there was none."""

    def __init__(self, weights: Path, out_dir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), OMP_WAIT_POLICY="PASSIVE")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_driver.py"), str(weights), str(out_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def run(self, path: Path, deadline: float) -> dict:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        started = time.monotonic()
        while True:
            left = deadline - (time.monotonic() - started)
            if left <= 0:
                return {"path": str(path), "code": "hang", "stderr": ""}
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    return {"path": str(path), "code": f"driver died ({self.proc.wait()})", "stderr": ""}
                return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def playable(path: str) -> bool:
    try:
        with av.open(path) as container:
            return sum(1 for _ in container.decode(video=0)) > 0
    except (av.FFmpegError, OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_hundred_mutants_end_cleanly(tmp_path):
    frames = samples.camera_pan(6, 64, 48)
    originals = []
    for name, (codec, audio) in SOURCES.items():
        path = tmp_path / name
        samples.write_clip(path, frames, codec=codec, audio=audio, pix_fmt="yuv420p")
        originals.append(path)
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors")
    mutants_dir, out_dir = tmp_path / "mutants", tmp_path / "out"
    mutants_dir.mkdir()
    out_dir.mkdir()
    rng = np.random.default_rng(20261203)
    driver = Driver(weights, out_dir)
    problems, outcomes = [], {"ok": 0, "error": 0}
    try:
        for i in range(MUTANTS):
            source = originals[i % len(originals)]
            mutant = mutants_dir / f"m{i:03d}{source.suffix}"
            mutant.write_bytes(mutate(source.read_bytes(), rng))
            answer = driver.run(mutant, DEADLINE_S)
            code, stderr = answer["code"], answer["stderr"]
            errors = [line for line in stderr.splitlines() if line.startswith("nystra-stream: error:")]
            if not isinstance(code, int):
                problems.append((mutant.name, code, stderr[-300:]))
                driver.close()
                driver = Driver(weights, out_dir)
            elif "Traceback" in stderr:
                problems.append((mutant.name, f"traceback (exit {code})", stderr[-300:]))
            elif code == 0:
                outcomes["ok"] += 1
                if not playable(answer["output"]):
                    problems.append((mutant.name, "exit 0 but the output does not play", ""))
            else:
                outcomes["error"] += 1
                if code not in (1, 2) or len(errors) != 1:
                    problems.append((mutant.name, f"exit {code} with {len(errors)} error lines", stderr[-300:]))
                if os.path.exists(answer["output"]):
                    problems.append((mutant.name, "an output was left after an error", ""))
    finally:
        driver.close()
    leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".")]
    assert not problems, problems[:10]
    assert not leftovers, f"temporary files left: {leftovers[:5]}"
    print(f"fuzz: {outcomes}")
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes   # the mutants exercised both paths
