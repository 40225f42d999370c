"""The GPU run (issue 17), for ``benchmarks/gpu.sh``: JSON with every figure measured in one run.

1. Model level, random weights in the released shapes: SwinIR-M (colour denoising) at its trained
   window 8 (exact) and the paper's window 32 (exact vs Nyström m 16, T 2); Uformer-B at 8 (exact)
   and 32 (exact vs Nyström m 16, T 2); RVRT at window (2, 64, 64) (exact vs Nyström m 32, T 6) —
   each in fp32, bf16 (autocast) and fp16 (the model in half precision), median ms of the reps,
   PSNR of each against fp32 exact at the same window.
2. End to end: a 1080p clip made with PyAV (``streamer.samples``, noise sigma 25) through the CLI
   (bundled denoiser, ``--device cuda``) per precision: ``fps_steady`` from ``--stats`` — decode
   and encode run in their own threads, overlapping the GPU (pinned buffers, two items in flight).

``--smoke`` runs every code path on the CPU at tiny sizes in fp32 (the test suite does, since no
GPU is lent to most sessions). A case that fails (e.g. out of memory) is recorded as an error and
the run goes on.

    bash benchmarks/gpu.sh                   # on a CUDA machine, within 8 minutes
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipelines import precision as P  # noqa: E402
from pipelines.attention import patch_attention  # noqa: E402


def _models(smoke: bool):
    """(name, build(window) -> model, input, [(window, attention, landmarks, iters)])."""
    import rvrt as b_rvrt
    import swinir as b_swinir
    import uformer as b_uformer
    from pipelines.models import rvrt_loading, swinir_loading, uformer_loading

    size = 32 if smoke else 256
    sw_sd = b_swinir.random_state_dict(b_swinir.SWINIR_M_DENOISE)
    uf_sd = b_uformer.random_state_dict(b_uformer.UFORMER_B)
    rv_sd = b_rvrt.random_state_dict(b_rvrt.RVRTConfig())
    big = [(32, "exact", None, None), (32, "nystrom", 16, 2)]
    yield ("swinir-m", lambda w: swinir_loading.from_state_dict(sw_sd, window=w), torch.rand(1, 3, size, size),
           [(8, "exact", None, None)] + ([] if smoke else big))
    yield ("uformer-b", lambda w: uformer_loading.from_state_dict(uf_sd, window=w), torch.rand(1, 3, size, size),
           [(8, "exact", None, None)] + ([] if smoke else big))
    frames, side = (2, 16) if smoke else (4, 64)
    yield ("rvrt", lambda w: rvrt_loading.from_state_dict(rv_sd, window=w), torch.rand(1, frames, 3, side, side),
           [(64, "exact", None, None), (64, "nystrom", 32, 6)])


def _time(model, x, precision: str, device: torch.device, reps: int):
    dtype = P.param_dtype(precision)
    model = model.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    times = []
    with torch.inference_mode(), P.forward_context(precision, device):
        out = model(x)   # warm-up: kernels, cached biases
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out.float().cpu()


def model_level(device: torch.device, smoke: bool, reps: int) -> list:
    precisions = ("fp32",) if smoke else ("fp32", "bf16", "fp16")
    results = []
    for name, build, x, settings in _models(smoke):
        refs = {}
        for window, attention, landmarks, iters in settings:
            for precision in precisions:
                case = {"model": name, "window": window, "attention": attention, "landmarks": landmarks,
                        "iters": iters, "precision": precision, "input": list(x.shape)}
                try:
                    model = build(window).eval()
                    patch_attention(model, attention, **({"landmarks": landmarks, "iters": iters}
                                                         if attention == "nystrom" else {}))
                    seconds, out = _time(model, x, precision, device, reps)
                    if attention == "exact" and precision == "fp32":
                        refs[window] = out
                    case["ms"] = round(seconds * 1000, 2)
                    if window in refs:
                        case["psnr_vs_fp32_exact_db"] = round(P.psnr(out, refs[window]), 2)
                except Exception as err:   # recorded, the run goes on (out of memory, a missing kernel)
                    case["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                results.append(case)
                print(json.dumps(case), file=sys.stderr, flush=True)
    return results


def end_to_end(device: torch.device, smoke: bool, workdir: Path) -> list:
    from streamer import samples
    width, height, frames = (64, 48, 4) if smoke else (1920, 1080, 60)
    clip = workdir / "in.mp4"
    clean = samples.camera_pan(frames, width, height)
    samples.write_clip(clip, samples.degrade(clean, "noise"), fps=30, audio=False)
    precisions = ("fp32",) if smoke else ("fp32", "bf16", "fp16")
    out = []
    for precision in precisions:
        stats = workdir / f"stats_{precision}.json"
        cmd = [sys.executable, "-m", "streamer.cli", str(clip), str(workdir / f"out_{precision}.mp4"),
               "--task", "denoise", "--device", str(device), "--precision", precision, "--stats", str(stats), "-q"]
        if device.type == "cpu":
            cmd += ["--workers", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        case = {"precision": precision, "frames": frames, "size": f"{width}x{height}", "rc": proc.returncode}
        if proc.returncode == 0:
            s = json.loads(stats.read_text())
            case.update(fps=s["fps"], fps_steady=s["fps_steady"], startup_seconds=s["startup_seconds"],
                        stage_seconds=s["stage_seconds"], worker=s["worker"])
        else:
            case["error"] = proc.stderr.strip().splitlines()[-1:] or [""]
        out.append(case)
        print(json.dumps(case), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every code path on the CPU at tiny sizes, fp32")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="gpu.json")
    args = parser.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("gpu.py: error: no CUDA device here (use --smoke to exercise the code paths on the CPU)")
    else:
        device = torch.device("cuda")
    reps = 1 if args.smoke else args.reps
    started = time.time()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    report["model_level"] = model_level(device, args.smoke, reps)
    with tempfile.TemporaryDirectory() as tmp:
        report["end_to_end"] = end_to_end(device, args.smoke, Path(tmp))
    report["seconds"] = round(time.time() - started, 1)
    tmp_out = f"{args.out}.tmp"
    with open(tmp_out, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp_out, args.out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
