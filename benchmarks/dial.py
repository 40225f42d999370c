"""The dial (``--target-fps``, issue 17) end to end, JSON on stdout, both runs in one process.

A noisy 640x360 clip of the sample photo; the bundled denoiser with the default settings
(``precision`` fp32, the default 2 worker processes), then the dial asked for ``--ratio`` (2) times
the default's steady fps, with ``--audit``. Reports both runs' steady fps, what the dial chose,
its predicted ΔPSNR (quality table), the audited ΔPSNR on the clip, the calibration time and every
change it made during the run.

    .venv/bin/python benchmarks/dial.py                 # 48 frames each (about a minute)
    .venv/bin/python benchmarks/dial.py --frames 120 --ratio 3
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamer  # noqa: E402
from streamer import samples  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--ratio", type=float, default=2.0, help="the target, as a multiple of the default's fps")
    parser.add_argument("--audit", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "in.mp4"
        frames = samples.degrade(samples.camera_pan(args.frames, args.width, args.height), "noise", seed=0)
        samples.write_clip(clip, frames, fps=30, audio=False)
        opts = dict(task="denoise", precision="fp32")
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        default = streamer.run(str(clip), str(Path(tmp) / "default.mp4"), **opts)
        target = args.ratio * default.fps_steady
        dialed = streamer.run(str(clip), str(Path(tmp) / "dial.mp4"), target_fps=target, audit=args.audit, **opts)
    audit = {k: v for k, v in (dialed.audit or {}).items() if k != "deltas"}
    print(json.dumps({
        "date": started, "machine": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "size": f"{args.width}x{args.height}", "frames": args.frames,
        "default_fps_steady": round(default.fps_steady, 3), "target_fps": round(target, 3),
        "dial_fps_steady": round(dialed.fps_steady, 3), "reached_ratio": round(dialed.fps_steady / target, 3),
        "dial": dialed.dial, "audit": audit,
    }, indent=1))


if __name__ == "__main__":
    main()
