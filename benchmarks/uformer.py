"""Model-level CPU time and accuracy of Nyström vs exact attention in Uformer-B (random weights).

Uformer-B as released (embed 32, depths [1,2,8,8,2,8,8,2,1], window 8, modulator, img_size 128),
run at its own window 8 and at larger windows through ``window=`` (the stages get the windows the
official constructor gives at ``img_size`` 128: at window 32 levels 0-2 use 32x32 windows, level 3
16x16, the bottleneck keeps 8x8). Forms of the same model, timed interleaved round by round (ratios
within one run are what count on a shared machine):

* ``exact``: our exact mode (SDPA, cached bias);
* ``nystrom_m{M}_t{T}``: PnP-Nystra with M landmarks and T pseudo-inverse iterations (bias-aware);
* ``auto``: per layer, whichever kernel is measured faster (m = 16, T = 2);
* ``floor``: attention replaced by identity (``attend`` returns v) — no attention method can beat it.

Reported per case: median wall seconds and median CPU seconds of this process (``process_time``:
all its threads; far less disturbed than wall time when other jobs share the cores, so prefer its
ratios on a busy machine, ideally with ``--threads 1``), ``time_ratio_vs_exact`` (T_form / T_exact;
< 1 is faster), the share of attention cost a form leaves ``(T_form - T_floor) / (T_exact - T_floor)``,
and the output PSNR of each form against exact (images in [0, 1]).

Random weights are the fixtures' protocol: the official initialisation (trunc-normal 0.02 linears,
unit LayerNorms) plus 0.02·randn on every float tensor. Such weights make attention close to uniform,
so the PSNRs are optimistic compared with trained checkpoints; the times are not affected.

    .venv/bin/python benchmarks/uformer.py --quick     # 128x128, windows 8 and 32, m 16/32, T 2, one rep
    .venv/bin/python benchmarks/uformer.py             # 256x256, windows 8/16/32, m 16/32 x T 1/2/6, 2 reps
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.attention import patch_attention  # noqa: E402
from pipelines.models import uformer, uformer_loading  # noqa: E402
from pipelines.models.uformer import Uformer, UformerConfig  # noqa: E402
from pipelines.runtime import configure_allocator  # noqa: E402
ALLOCATOR_TUNED = configure_allocator()  # as the CLI runs (NYSTRA_MALLOC=system: glibc's default)

UFORMER_B = UformerConfig()  # the defaults are the released Uformer-B


def random_state_dict(config: UformerConfig, seed: int = 0) -> dict:
    """Official initialisation plus 0.02·randn on every float tensor (the fixtures' protocol)."""
    gen = torch.Generator().manual_seed(seed)
    model = Uformer(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen).mul_(0.02).clamp_(-0.04, 0.04))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=gen))
    return model.state_dict()


def identity_attend(q, k, v, grid, make_bias=None, bias_key=None):
    return v


def set_form(model: Uformer, form: str) -> None:
    for module in model.modules():
        if isinstance(module, uformer.WindowAttention):
            module.__dict__.pop("attend", None)  # back to the class's attend
            if form == "floor":
                module.attend = identity_attend
    if form == "exact" or form == "floor":
        patch_attention(model, "exact")
    elif form == "auto":
        patch_attention(model, "auto", landmarks=16, iters=2)
    else:  # nystrom_m{M}_t{T}
        landmarks, iters = (int(part[1:]) for part in form.split("_")[1:])
        patch_attention(model, "nystrom", landmarks=landmarks, iters=iters)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def stage_windows(model: Uformer) -> Dict[str, list]:
    return {name: sorted({(b.window, b.shift) for b in getattr(model, name).blocks})
            for name in ("encoderlayer_0", "encoderlayer_1", "encoderlayer_2", "encoderlayer_3", "conv")}


def bench_case(state_dict: dict, size: int, window: int, forms: List[str], reps: int) -> dict:
    model = uformer_loading.from_state_dict(state_dict, window=window).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    times: Dict[str, List[float]] = {f: [] for f in forms}
    cpu_times: Dict[str, List[float]] = {f: [] for f in forms}
    outputs: Dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for form in forms:  # warm-up: bias caches, auto's measurements, kernels
            set_form(model, form)
            model(x)
        for _ in range(reps):
            for form in forms:
                set_form(model, form)
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[form] = model(x)
                times[form].append(time.perf_counter() - start)
                cpu_times[form].append(time.process_time() - start_cpu)
                print(f"  {size}x{size} w{window} {form:16s} {times[form][-1]:7.2f} s wall "
                      f"{cpu_times[form][-1]:7.2f} s cpu", file=sys.stderr, flush=True)
    approx = [f for f in forms if f not in ("exact", "floor")]
    result = {"size": size, "window": window, "stage_windows": stage_windows(model)}
    for clock, samples in (("wall", times), ("cpu", cpu_times)):
        t = {f: statistics.median(v) for f, v in samples.items()}
        attention_exact = t["exact"] - t["floor"]
        result[clock] = {
            "seconds": {f: round(v, 4) for f, v in t.items()},
            "all_seconds": {f: [round(s, 4) for s in v] for f, v in samples.items()},
            "time_ratio_vs_exact": {f: round(t[f] / t["exact"], 3) for f in forms if f != "exact"},
            "attention_share_left": {
                f: (round((t[f] - t["floor"]) / attention_exact, 3) if attention_exact > 0 else None) for f in approx},
        }
    result["psnr_vs_exact_db"] = {f: round(psnr(outputs[f], outputs["exact"]), 2) for f in approx + ["floor"]}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x128, windows 8 and 32, T 2 only, one repetition")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--windows", type=int, nargs="+", default=None)
    parser.add_argument("--landmarks", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--iters", type=int, nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([128] if args.quick else [256])
    windows = args.windows or ([8, 32] if args.quick else [8, 16, 32])
    iters = args.iters or ([2] if args.quick else [1, 2, 6])
    reps = args.reps or (1 if args.quick else 2)
    forms = ["exact", "floor", "auto"] + [f"nystrom_m{m}_t{t}" for m in args.landmarks for t in iters]

    state_dict = random_state_dict(UFORMER_B)
    results = [bench_case(state_dict, size, window, forms, reps) for size in sizes for window in windows]
    report = {
        "benchmark": "uformer-model-cpu",
        "model": "Uformer-B (embed 32, depths [1,2,8,8,2,8,8,2,1], heads [1,2,4,8,16,16,8,4,2], "
                 "window 8, leff, modulator, img_size 128), random weights (official init + 0.02 randn)",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator_tuned": ALLOCATOR_TUNED, "quick": args.quick, "reps": reps,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
