"""Precision modes at model level (issue 17), JSON on stdout, ratios within one run.

1. ``bundled``: each bundled model at 640x360 (one frame, as the pipeline feeds it), every
   precision this device runs (CPU: fp32, bf16, int8; CUDA: fp32, bf16, fp16): seconds per
   frame (min of the reps, modes interleaved), fps, speed-up over fp32, PSNR against fp32's output
   and ΔPSNR against the clean frame (the task's degradation applied to a sample photo: fp32's
   PSNR minus the mode's; positive = lost), and what ``--precision auto`` picks.
2. ``swinir_m``: SwinIR-M (released colour-denoising shape, random weights, see
   benchmarks/swinir.py) at window 32, 256x256: the official attention formulation in fp32
   against Nyström (m 16, T 2) in each precision; the best setting's speed-up is the figure.

    .venv/bin/python benchmarks/precision.py --quick     # bundled only, 1 rep (about a minute)
    .venv/bin/python benchmarks/precision.py             # both parts, 3 reps / 1 rep for SwinIR-M
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipelines import precision as P  # noqa: E402
from pipelines.loading import load_model  # noqa: E402
from pipelines.precision_auto import calibration_pair, choose_precision  # noqa: E402
from pipelines.restorer import Restorer  # noqa: E402
from pipelines.runtime import configure_allocator  # noqa: E402
from pipelines.weights import TASKS  # noqa: E402

configure_allocator()


def degraded_frame(task: str, scale: int, width: int, height: int):
    """(input (1, 3, h, w), clean (1, 3, height, width)): the task's degradation of a photo crop."""
    from pipelines import degradations
    from pipelines.weights.data import load_photo
    clean = load_photo("astronaut")[None]
    clean = torch.nn.functional.interpolate(clean, size=(height, width), mode="bicubic", align_corners=False,
                                            antialias=True).clamp(0, 1)
    gen = torch.Generator().manual_seed(0)
    if task == "denoise":
        x = degradations.add_gaussian_noise(clean, 25.0, generator=gen)
    elif task == "deblur":
        x = degradations.gaussian_blur(clean, 2.5)
    else:
        x = degradations.bicubic_resize(clean, 1 / scale)
    return torch.round(x.clamp(0, 1) * 255) / 255, clean


def bench_bundled(task: str, device: torch.device, reps: int, width: int, height: int) -> dict:
    model = load_model(f"swinir-tiny-{task}", attention=None)   # the preset's settings (the default run)
    scale = model.info.scale
    x, clean = degraded_frame(task, scale, width * scale, height * scale)   # the input is width x height
    x = x.to(device)
    modes = P.candidates(device)
    restorers = {m: Restorer(model if m != "fp16" else load_model(f"swinir-tiny-{task}", attention=None),
                             device=device, precision=m, prefilter=False) for m in modes}
    outs, best = {}, dict.fromkeys(modes, float("inf"))
    with torch.inference_mode():
        for m in modes:
            outs[m] = restorers[m].restore_tensor(x).float().cpu()
        for _ in range(reps):
            for m in modes:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                restorers[m].restore_tensor(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[m] = min(best[m], time.perf_counter() - t0)
    ref_psnr = P.psnr(outs["fp32"], clean)
    choice = choose_precision(model, device, use_cache=False)
    return {
        "model": f"swinir-tiny-{task}", "input": f"{width}x{height}",
        "modes": {m: {"seconds": round(best[m], 4), "fps": round(1 / best[m], 2),
                      "speedup_vs_fp32": round(best["fp32"] / best[m], 3),
                      "psnr_vs_fp32_db": round(P.psnr(outs[m], outs["fp32"]), 2),
                      "delta_psnr_vs_clean_db": round(ref_psnr - P.psnr(outs[m], clean), 4)} for m in modes},
        "auto_picks": choice.precision,
    }


def bench_swinir_m(reps: int, size: int = 256, window: int = 32, modes=("fp32", "bf16", "int8")) -> dict:
    import swinir as bs   # benchmarks/swinir.py: the official formulation and the random SwinIR-M
    from pipelines.models import swinir_loading
    state = bs.random_state_dict(bs.SWINIR_M_DENOISE)
    model = swinir_loading.from_state_dict(state, window=window).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    forms = {"official_fp32": ("official", "fp32")}
    forms.update({f"nystrom_{m}": ("nystrom", m) for m in modes})
    times = {f: float("inf") for f in forms}
    outs = {}
    with torch.inference_mode():
        for _ in range(reps):
            for name, (form, mode) in forms.items():
                bs.set_form(model, form, 512 * 2**20)
                run = P.prepare_model(model, mode)
                with P.forward_context(mode, torch.device("cpu")):
                    if name != "official_fp32" and name not in outs:
                        run(x)   # warm-up (bias caches)
                    t0 = time.perf_counter()
                    outs[name] = run(x).float()
                    times[name] = min(times[name], time.perf_counter() - t0)
                print(f"  swinir-m {size} w{window} {name}: {times[name]:.2f} s", file=sys.stderr, flush=True)
    best = min((f for f in forms if f != "official_fp32"), key=times.get)
    return {
        "input": f"{size}x{size}", "window": window, "seconds": {f: round(t, 3) for f, t in times.items()},
        "speedup_vs_official_fp32": {f: round(times["official_fp32"] / t, 2) for f, t in times.items()},
        "psnr_vs_official_fp32_db": {f: round(P.psnr(outs[f], outs["official_fp32"]), 2) for f in forms},
        "best": best,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bundled models only, one rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-swinir-m", action="store_true")
    parser.add_argument("--swinir-modes", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "int8"],
                        help="precisions for Nyström SwinIR-M (bf16 takes minutes on a CPU without bf16 instructions)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reps = 1 if args.quick else args.reps
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
           platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
           "quality_bound_db": P.QUALITY_BOUND_DB,
           "bundled": [bench_bundled(t, device, reps, 640, 360) for t in args.tasks]}
    if not (args.quick or args.no_swinir_m) and device.type == "cpu":
        out["swinir_m"] = bench_swinir_m(1, modes=tuple(args.swinir_modes))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
