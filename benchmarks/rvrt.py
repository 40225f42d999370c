"""Model-level CPU time of RVRT (video SR x4, released architecture, random weights) run at the
PnP-Nystra paper's window (2, 64, 64): exact attention vs Nystrom (m = 32 landmarks, T = 6
iterations), and the same model with attention replaced by identity (``floor``: no attention
method can beat it).

The forms are timed interleaved (ratios within one run are what count on a shared machine).
Reported: seconds per form, the Nystrom/exact speed-up, the share of attention cost Nystrom
leaves, ``(T_nystrom - T_floor) / (T_exact - T_floor)``, and the PSNR of the Nystrom output
against the exact one.

At window (2, 64, 64) one layer's dense bias (heads x 8192 x 8192 floats) is 1.6 GB: what exact
mode keeps is bounded by the process-wide bias store (``NYSTRA_BIAS_CACHE_MB``, default
min(2 GiB, RAM / 8)); beyond it, exact calls rebuild their biases from the position table
(``exact_bias_build_seconds`` says how long that took). Nystrom keeps only pooled biases (small).

    .venv/bin/python benchmarks/rvrt.py --quick    # 2 frames (one clip) of 64x64, one repetition
    .venv/bin/python benchmarks/rvrt.py            # 4 frames (deformable alignment runs too)
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
from pipelines.attention.store import STORE  # noqa: E402
from pipelines.models import rvrt_loading  # noqa: E402
from pipelines.models.rvrt import RVRT, RVRTConfig  # noqa: E402
from pipelines.models.rvrt_blocks import WindowAttention3D  # noqa: E402
from pipelines.runtime import configure_allocator  # noqa: E402
ALLOCATOR_TUNED = configure_allocator()  # as the CLI runs (NYSTRA_MALLOC=system: glibc's default)

FORMS = ("exact", "nystrom", "floor")
LANDMARKS, ITERS = 32, 6


def random_state_dict(config: RVRTConfig, seed: int = 0) -> dict:
    """Default init plus 0.02·randn on every float tensor (as the reference fixtures are made)."""
    torch.manual_seed(seed)
    model = RVRT(config)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn_like(tensor))
    return model.state_dict()


def identity_attend(q, k, v, grid, make_bias=None, bias_key=None):
    return v


class BiasTimer:
    """Wraps a layer's ``attend`` to add up the time spent building biases (``make_bias``)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, module: WindowAttention3D):
        bound = type(module).attend.__get__(module)

        def attend(q, k, v, grid, make_bias=None, bias_key=None):
            def timed_bias():
                start = time.perf_counter()
                bias = make_bias()
                self.seconds += time.perf_counter() - start
                return bias

            return bound(q, k, v, grid, make_bias=timed_bias if make_bias else None, bias_key=bias_key)

        return attend


def set_form(model: RVRT, form: str, timer: BiasTimer) -> None:
    """Switch the attention kernel (``floor``: attention replaced by identity on v)."""
    for module in model.modules():
        if isinstance(module, WindowAttention3D):
            module.__dict__.pop("attend", None)  # back to the class's attend
            if form == "floor":
                module.attend = identity_attend
            elif form == "exact":
                module.attend = timer.wrap(module)
    if form in ("exact", "nystrom"):
        patch_attention(model, form, landmarks=LANDMARKS, iters=ITERS)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 frames, one repetition")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--size", type=int, default=64, help="LR frame side (features are this size)")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    frames = args.frames or (2 if args.quick else 4)
    reps = args.reps or 1

    config = RVRTConfig()  # the released video-SR architecture (embed 144, heads 6, ...)
    model = rvrt_loading.from_state_dict(random_state_dict(config), window=64).eval()
    x = torch.rand(1, frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    times: Dict[str, List[float]] = {f: [] for f in FORMS}
    outputs: Dict[str, torch.Tensor] = {}
    bias_seconds: List[float] = []
    with torch.inference_mode():
        # Warm-up builds the cached biases (per layer, fixed once the weights are): Nystrom's
        # pooled ones, and exact's dense ones as far as the bias store's budget allows.
        for form in ("exact", "nystrom"):
            set_form(model, form, BiasTimer())
            model(x)
        for _ in range(reps):
            for form in FORMS:
                timer = BiasTimer()
                set_form(model, form, timer)
                start = time.perf_counter()
                outputs[form] = model(x)
                times[form].append(time.perf_counter() - start)
                if form == "exact":
                    bias_seconds.append(timer.seconds)
                print(f"  {form:8s} {times[form][-1]:8.2f} s", file=sys.stderr, flush=True)
    t = {f: statistics.median(v) for f, v in times.items()}
    attention_exact = t["exact"] - t["floor"]
    report = {
        "benchmark": "rvrt-model-cpu",
        "model": "RVRT video SR x4, released architecture (embed 144, heads 6, window resized to (2, 64, 64)), "
                 "random weights",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator_tuned": ALLOCATOR_TUNED, "quick": args.quick, "reps": reps,
        "clip": [1, frames, 3, args.size, args.size],
        "nystrom": {"landmarks": LANDMARKS, "iters": ITERS},
        "seconds": {f: round(v, 3) for f, v in t.items()},
        "all_seconds": {f: [round(s, 3) for s in v] for f, v in times.items()},
        "speedup_nystrom_vs_exact": round(t["exact"] / t["nystrom"], 2),
        "attention_share_left": (round((t["nystrom"] - t["floor"]) / attention_exact, 4)
                                 if attention_exact > 0 else None),
        "psnr_nystrom_vs_exact_db": round(psnr(outputs["nystrom"], outputs["exact"]), 2),
        "psnr_floor_vs_exact_db": round(psnr(outputs["floor"], outputs["exact"]), 2),
        "bias_store_budget_mb": round(STORE.budget / 2**20),
        "bias_store_used_mb": round(STORE.nbytes / 2**20),
        "exact_bias_build_seconds": round(statistics.median(bias_seconds), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
