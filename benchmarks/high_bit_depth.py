"""What the 16-bit path costs (issue 16): the same picture as 8-bit and as 10-bit input through
``streamer.run`` (JSON on stdout).

Both inputs are FFmpeg's ``testsrc2`` at ``--size``, ``--frames`` frames, stored lossless (ffv1,
``yuv420p`` and ``yuv420p10le``) so the decoders cost alike; both are written with libx264 (8-bit
input: ``yuv420p`` through ``rgb24`` uint8; 10-bit input: ``yuv420p10le`` through ``rgb48le``
uint16). Two models, in this process (``--workers 0``):

* ``io``: an identity model, so the run is decode, conversions, queues, stitching and encode:
  the upper bound of what 16 bits cost;
* ``model``: the bundled denoiser (``--task denoise``), the real share.

Runs alternate 8-bit / 10-bit over ``--reps`` repetitions; ``ratio_10_over_8`` = median seconds
of the 10-bit runs / median of the 8-bit ones, measured in this one run.

    .venv/bin/python benchmarks/high_bit_depth.py --quick
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pipelines.models.base import ModelInfo
from streamer import run


class Identity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.info = ModelInfo(arch="identity", task="custom", scale=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_input(path: Path, size: str, frames: int, pix_fmt: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=24",
                    "-frames:v", str(frames), "-c:v", "ffv1", "-pix_fmt", pix_fmt, str(path)],
                   check=True, timeout=300)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="24 frames, 2 repetitions")
    args = parser.parse_args()
    frames, reps = (24, 2) if args.quick else (args.frames, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        inputs = {"8": make_input(d / "in8.mkv", args.size, frames, "yuv420p"),
                  "10": make_input(d / "in10.mkv", args.size, frames, "yuv420p10le")}
        result = {"size": args.size, "frames": frames, "reps": reps,
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": {}}
        for name, kwargs in (("io", {"model": Identity()}), ("model", {"task": "denoise"})):
            seconds = {"8": [], "10": []}
            for _ in range(reps):
                for depth, source in inputs.items():
                    started = time.perf_counter()
                    stats = run(str(source), str(d / f"out{depth}.mp4"), workers=0, codec="libx264", **kwargs)
                    seconds[depth].append(time.perf_counter() - started)
                    assert stats.frames_out == frames
            median = {depth: statistics.median(s) for depth, s in seconds.items()}
            result["runs"][name] = {"seconds_8": seconds["8"], "seconds_10": seconds["10"],
                                    "fps_8": frames / median["8"], "fps_10": frames / median["10"],
                                    "ratio_10_over_8": median["10"] / median["8"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
