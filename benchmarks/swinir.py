"""Model-level CPU time of SwinIR-M (colour denoising, random weights) at windows 8 / 32 / 64.

Four forms of the same model, timed interleaved (ratios within one run are what count on a
shared machine):

* ``official``: the official attention formulation, the paper's baseline — explicit
  ``q @ kᵀ``, the relative-position table gathered on every call, the shift mask added,
  softmax, ``@ v``. Windows are processed in chunks of at most ``--chunk-mb`` of scores so that
  window 64 fits in memory (windows are independent, so the result is the same).
* ``exact``: our exact mode (SDPA, cached bias).
* ``nystrom``: PnP-Nystra, m = 16 landmarks, T = 2 iterations.
* ``floor``: attention replaced by identity (``attend`` returns v) — no attention method can
  beat it, since everything else is the same model.

``--bf16`` adds ``nystrom_bf16`` and ``floor_bf16``: the same forms under CPU bfloat16 autocast
(linears, convolutions and attention products in bfloat16, LayerNorm and softmax in float32), a
different precision from the float32 baseline: reported beside the goals, never counted in them,
with their output PSNR against float32 exact mode.

Derived: speed-ups, and the share of attention cost that Nyström leaves,
``(T_nystrom - T_floor) / (T_official - T_floor)`` (and the same against our exact mode).

``bound``: what the floor could be at best on this machine. The floor's matrix products (every
linear and convolution, counted from the model's shapes) divided by the best float32 GEMM rate
this process reaches (square 2048/4096 products, no skinny shapes) is a time no implementation
of the rest of the model can beat; ``official / that`` caps the speed-up of *any* attention
method, Nyström at zero cost included.
Our exact outputs are checked against the official formulation (allclose). Derived figures
use wall-clock medians; ``cpu_seconds`` (process CPU time) is reported too, since it is the
steadier measure on a shared machine (run with ``--threads 1`` to compare by CPU time).

    .venv/bin/python benchmarks/swinir.py --quick     # 128x128, windows 8 and 32, one rep
    .venv/bin/python benchmarks/swinir.py             # 128 and 256, windows 8/32/64, 2 reps
    .venv/bin/python benchmarks/swinir.py --sizes 128 --windows 32 64 --bf16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.attention import patch_attention  # noqa: E402
from pipelines.attention.store import STORE  # noqa: E402
from pipelines.models import swinir, swinir_loading  # noqa: E402
from pipelines.models.swinir import SwinIR, SwinIRConfig  # noqa: E402
from pipelines.runtime import configure_allocator  # noqa: E402
ALLOCATOR_TUNED = configure_allocator()  # as the CLI runs (NYSTRA_MALLOC=system: glibc's default)

FORMS = ("official", "exact", "nystrom", "floor")
BF16_FORMS = ("nystrom_bf16", "floor_bf16")
SWINIR_M_DENOISE = SwinIRConfig(img_size=128, in_chans=3, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6,
                                window_size=8, mlp_ratio=2, upscale=1, img_range=1.0, upsampler="")


def random_state_dict(config: SwinIRConfig, seed: int = 0) -> dict:
    """Official-style init plus 0.02·randn on every float tensor except the exact shift masks."""
    torch.manual_seed(seed)
    model = SwinIR(config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith("attn_mask"):
                tensor.add_(0.02 * torch.randn_like(tensor))
    return model.state_dict()


def official_attend(module: swinir.WindowAttention, chunk_bytes: int) -> Callable:
    """The official WindowAttention arithmetic, as a drop-in for ``attend``."""
    masks: Dict[tuple, torch.Tensor] = {}  # the official model stores / recomputes these; not timed here

    def attend(q, k, v, grid, make_bias=None, bias_key=None):
        _, ws, shift, height, width = bias_key
        n = ws * ws
        bias = module.relative_position_bias_table[module.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).contiguous()          # gathered on every call
        mask = None
        if shift:
            if bias_key not in masks:
                masks[bias_key] = swinir.shift_mask(ws, shift, height, width, q.device)
            mask = masks[bias_key].unsqueeze(1)                            # (nW, 1, N, N)
        batch, windows, heads = q.shape[:3]
        per_window = batch * heads * n * n * 4
        step = max(1, min(windows, chunk_bytes // per_window))
        out = torch.empty_like(v)
        for start in range(0, windows, step):
            part = slice(start, start + step)
            attn = q[:, part] @ k[:, part].transpose(-2, -1)
            attn = attn + bias.unsqueeze(0)
            if mask is not None:
                attn = attn + mask[part].unsqueeze(0)
            attn = attn.softmax(dim=-1)
            out[:, part] = attn @ v[:, part]
        return out

    return attend


def identity_attend(q, k, v, grid, make_bias=None, bias_key=None):
    return v


def set_form(model: SwinIR, form: str, chunk_bytes: int) -> None:
    for module in model.modules():
        if isinstance(module, swinir.WindowAttention):
            module.__dict__.pop("attend", None)  # back to the class's attend
            # The official form and the floor take the head-major q, k, v layout (the faster
            # one for both, and Nyström's); our modes choose theirs (see qkv_layout.py).
            module.qkv_layout = "auto" if form in ("exact", "nystrom") else "heads"
            if form == "official":
                module.attend = official_attend(module, chunk_bytes)
            elif form == "floor":
                module.attend = identity_attend
    if form in ("exact", "nystrom"):
        patch_attention(model, form, landmarks=16, iters=2)


def gemm_peak_gflops(reps: int = 3) -> float:
    """The best float32 GEMM rate (GFLOP/s) here: square 2048 and 4096 products, best of ``reps``."""
    best = 0.0
    for n in (2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        for _ in range(reps):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def matmul_gflop(model: SwinIR, size: int, window: int) -> float:
    """GFLOP of the floor's linears and convolutions on a ``size``² input padded to ``window``
    (stride-1 convolutions at full resolution: no upsampler, as SwinIR-M denoising)."""
    side = -(-size // window) * window
    pixels = side * side
    flop = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            flop += 2 * pixels * module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            flop += 2 * pixels * module.in_channels // module.groups * module.out_channels * kh * kw
    return flop / 1e9


def precision(form: str):
    """The autocast context a form runs under (bfloat16 for the ``*_bf16`` forms)."""
    if form.endswith("_bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed(model: SwinIR, x: torch.Tensor, form: str):
    """(wall seconds, process CPU seconds, output); CPU time is steadier on a busy machine."""
    with precision(form):
        wall, cpu = time.perf_counter(), time.process_time()
        out = model(x)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return seconds, cpu_seconds, out.float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def bench_case(state_dict: dict, size: int, window: int, reps: int, args) -> dict:
    model = swinir_loading.from_state_dict(state_dict, window=window).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    forms = FORMS + (BF16_FORMS if args.bf16 else ())
    times: Dict[str, List[float]] = {f: [] for f in forms}
    cpu_times: Dict[str, List[float]] = {f: [] for f in forms}
    outputs: Dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for form in forms[1:]:  # warm-up: caches, kernels (official has none)
            set_form(model, form.replace("_bf16", ""), args.chunk_mb * 2**20)
            with precision(form):
                model(x)
        for _ in range(reps):
            for form in forms:
                set_form(model, form.replace("_bf16", ""), args.chunk_mb * 2**20)
                seconds, cpu, outputs[form] = timed(model, x, form)
                times[form].append(seconds)
                cpu_times[form].append(cpu)
                print(f"  {size}x{size} w{window} {form:8s} {seconds:7.2f} s (cpu {cpu:7.2f} s)",
                      file=sys.stderr, flush=True)
    t = {f: statistics.median(v) for f, v in times.items()}
    c = {f: statistics.median(v) for f, v in cpu_times.items()}
    attn_official, attn_exact = t["official"] - t["floor"], t["exact"] - t["floor"]
    bf16 = {}
    if args.bf16:
        bf16 = {"bf16": {
            "speedup_vs_official": {f: round(t["official"] / t[f], 2) for f in BF16_FORMS},
            "speedup_vs_float32": {f: round(t[f.replace("_bf16", "")] / t[f], 2) for f in BF16_FORMS},
            "psnr_vs_exact_db": {f: round(psnr(outputs[f], outputs["exact"]), 2) for f in BF16_FORMS},
            "psnr_nystrom_bf16_vs_nystrom_db": round(psnr(outputs["nystrom_bf16"], outputs["nystrom"]), 2),
        }}
    return {
        "size": size, "window": window,
        "seconds": {f: round(v, 4) for f, v in t.items()},
        "all_seconds": {f: [round(s, 4) for s in v] for f, v in times.items()},
        "cpu_seconds": {f: round(statistics.median(v), 4) for f, v in cpu_times.items()},
        "speedup_vs_official": {f: round(t["official"] / t[f], 2) for f in ("exact", "nystrom", "floor")},
        "speedup_nystrom_vs_exact": round(t["exact"] / t["nystrom"], 2),
        "attention_share_left": {
            "vs_official": round((t["nystrom"] - t["floor"]) / attn_official, 4) if attn_official > 0 else None,
            "vs_exact": round((t["nystrom"] - t["floor"]) / attn_exact, 4) if attn_exact > 0 else None,
        },
        "by_cpu_time": {
            "speedup_vs_official": {f: round(c["official"] / c[f], 2) for f in ("exact", "nystrom", "floor")},
            "attention_share_left_vs_official": round((c["nystrom"] - c["floor"]) / (c["official"] - c["floor"]), 4)
            if c["official"] > c["floor"] else None,
        },
        "exact_matches_official": bool(torch.allclose(outputs["exact"], outputs["official"], atol=1e-4, rtol=1e-4)),
        "max_abs_diff_exact_vs_official": float((outputs["exact"] - outputs["official"]).abs().max()),
        "psnr_nystrom_vs_exact_db": round(psnr(outputs["nystrom"], outputs["exact"]), 2),
        "bias_store_used_mb": round(STORE.nbytes / 2**20),
        "bound": bound(model, size, window, t, args.peak_gflops),
        **bf16,
    }


def bound(model: SwinIR, size: int, window: int, t: Dict[str, float], peak: float) -> dict:
    """See the module docstring: the floor at this machine's best GEMM rate, and what it caps."""
    gflop = matmul_gflop(model, size, window)
    floor_at_peak = gflop / peak
    return {
        "matmul_gflop": round(gflop, 1),
        "floor_matmul_s_at_peak": round(floor_at_peak, 3),
        "floor_share_of_peak": round(floor_at_peak / t["floor"], 3),
        "floor_gflops": round(gflop / t["floor"], 1),
        "max_speedup_vs_official_any_attention": round(t["official"] / floor_at_peak, 2),
        "max_speedup_vs_official_with_this_floor": round(t["official"] / t["floor"], 2),
    }


def goals(results: List[dict]) -> dict:
    """The targets of the issue, evaluated on the cases that ran."""
    out = {}
    for r in results:
        if r["window"] in (32, 64):
            share = r["attention_share_left"]["vs_official"]
            out[f"{r['size']}_w{r['window']}"] = {
                "nystrom_10x_vs_official": r["speedup_vs_official"]["nystrom"] >= 10,
                "share_left_ok": share is not None and share <= (0.10 if r["window"] == 32 else 0.05),
                "exact_4x_vs_official": r["speedup_vs_official"]["exact"] >= 4,
                "exact_identical": r["exact_matches_official"],
            }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x128 at windows 8 and 32, one repetition")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--windows", type=int, nargs="+", default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--chunk-mb", type=int, default=512, help="score memory per chunk (official form)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time nystrom and floor under CPU bfloat16 autocast (not counted in the goals)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([128] if args.quick else [128, 256])
    windows = args.windows or ([8, 32] if args.quick else [8, 32, 64])
    reps = args.reps or (1 if args.quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    args.peak_gflops = gemm_peak_gflops()
    state_dict = random_state_dict(SWINIR_M_DENOISE)
    results = []
    for size in sizes:
        for window in windows:
            results.append(bench_case(state_dict, size, window, reps, args))
    report = {
        "benchmark": "swinir-model-cpu",
        "model": "SwinIR-M colour denoising (embed 180, depths 6x6, heads 6, mlp 2, img_size 128), random weights",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator_tuned": ALLOCATOR_TUNED, "quick": args.quick, "reps": reps,
        "nystrom": {"landmarks": 16, "iters": 2},
        "bias_store_budget_mb": round(STORE.budget / 2**20),
        "gemm_peak_gflops": round(args.peak_gflops, 1),
        "results": results,
        "goals": goals(results),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
