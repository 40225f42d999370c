"""The issue-3 acceptance run: the CLI on a 3 s 640x360 clip with AAC audio, per bundled task.

For each case a clean camera pan over a held-out photo is degraded (denoise: noise sigma 25;
deblur: Gaussian blur sigma 2.5 px; deblur-motion: a 9 px line blur at 30 degrees, run with
``--task deblur``; sr2: bicubic x2 down), encoded with libx264 + AAC, restored by
``nystra-stream IN OUT --task T`` (a real subprocess, default options), and checked:
frame count, size (x2 for sr2), frame rate, duration, audio packets identical, and the PSNR
against the clean frames of the input (bicubic-upscaled and stored as yuv420p for sr2) and of
the output. Prints JSON; exits non-zero if a structural check fails (PSNR gains are reported,
not judged: the goals live in benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/cli_e2e.py                 # 90 frames (3 s at 30 fps), 640x360
    .venv/bin/python benchmarks/cli_e2e.py --frames 30 --tasks denoise deblur-motion
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer import samples  # noqa: E402

# case -> (--task, samples.degrade kind)
CASES = {"denoise": ("denoise", "noise"), "deblur": ("deblur", "blur"), "deblur-motion": ("deblur", "motion"),
         "sr2": ("sr2", "down2")}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        info = {"frames": frames, "size": (video.codec_context.width, video.codec_context.height),
                "rate": float(video.average_rate), "duration_s": float(container.duration or 0) / av.time_base}
    with av.open(str(path)) as container:
        audio = [bytes(p) for p in container.demux(audio=0) if p.size]
    info["audio_packets"] = audio
    return info


def yuv420(images):
    return [av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24").reformat(format="yuv420p")
            .to_ndarray(format="rgb24") for im in images]


def check(case: str, frames: int, size, work: Path) -> dict:
    task, kind = CASES[case]
    width, height = size
    scale = 2 if task == "sr2" else 1
    clean = samples.camera_pan(frames, width * scale, height * scale)
    degraded = samples.degrade(clean.copy(), kind, seed=0)
    src, out = work / f"{case}_in.mp4", work / f"{case}_out.mp4"
    samples.write_clip(src, degraded, fps=30, audio=True)
    start = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).parent / "nystra-stream"), str(src), str(out), "--task", task, "-q",
                          "--stats", str(work / f"{case}_stats.json")], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        return {"case": case, "task": task, "error": run.stderr.strip()}
    a, b = probe(src), probe(out)
    baseline = a["frames"]
    if scale > 1:
        x = torch.from_numpy(np.stack(baseline)).permute(0, 3, 1, 2).float()
        up = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        baseline = yuv420(up.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy())
    before = float(np.mean([psnr(f, c) for f, c in zip(baseline, clean)]))
    after = float(np.mean([psnr(f, c) for f, c in zip(b["frames"], clean)]))
    stats = json.loads((work / f"{case}_stats.json").read_text())
    checks = {
        "same_frame_count": len(a["frames"]) == len(b["frames"]) == frames,
        "size": list(b["size"]) == [a["size"][0] * scale, a["size"][1] * scale],
        "same_rate": abs(a["rate"] - b["rate"]) < 1e-6,
        "same_duration": abs(a["duration_s"] - b["duration_s"]) < 0.05,
        "audio_identical": bool(a["audio_packets"]) and a["audio_packets"] == b["audio_packets"],
    }
    return {"case": case, "task": task, "frames": frames, "input_size": list(a["size"]), "output_size": list(b["size"]),
            "rate": b["rate"], "duration_s": [round(a["duration_s"], 3), round(b["duration_s"], 3)],
            "checks": checks, "psnr_before_db": round(before, 2), "psnr_after_db": round(after, 2),
            "gain_db": round(after - before, 2), "cli_seconds": round(seconds, 1),
            "fps": stats.get("fps"), "fps_steady": stats.get("fps_steady"), "worker": stats.get("worker"),
            "prefilter": stats.get("prefilter"), "frames_deconvolved": stats.get("frames_deconvolved")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--size", default="640x360", help="input frame size WxH")
    parser.add_argument("--tasks", nargs="+", default=list(CASES), choices=list(CASES), help="cases to run")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="nystra-e2e-") as tmp:
        results = [check(case, args.frames, size, Path(tmp)) for case in args.tasks]
    print(json.dumps({"benchmark": "cli-e2e", "torch": torch.__version__, "results": results}, indent=2))
    ok = all("error" not in r and all(r["checks"].values()) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
