"""Precision modes: how a model's arithmetic runs (``--precision``), and ``auto``'s choice.

- ``fp32``: the network as trained.
- ``bf16``: autocast to bfloat16 around each forward (CPU and CUDA); weights stay float32.
- ``fp16``: the model and its inputs in half precision (CUDA only: a CPU has no fast fp16 kernels).
- ``int8``: the Linear layers dynamically quantised (``torch.ao.quantization.quantize_dynamic``,
  weights int8, activations quantised per call), CPU only. The model's fast paths that read
  ``layer.weight`` fall back to ``layer(x)`` for such layers (``models.layers.plain_linear``).
- ``auto``: per device, the fastest of the modes above whose quality cost on calibration
  frames stays within :data:`QUALITY_BOUND_DB` of fp32 (see :func:`choose_precision`).

Why ``auto`` measures instead of reading a table: the answer depends on the CPU. Measured with
the bundled denoiser at 640x360 (one process, 2 threads, min of 3): on an AVX-512/AMX Xeon bf16
autocast ran 0.236 s a frame against fp32's 0.331 s (1.40x, 60.5 dB from fp32); on an AVX2
AMD EPYC (no bf16 instructions) bf16 took 3.92 s against fp32's 0.309 s (12.7x slower), int8
0.341 s (1.10x slower) and channels-last convolutions 0.328 s (no gain), so there fp32 wins. ``torch.compile`` (Inductor) is not offered: on the AVX2 CPU its first call
took 69.7 s and the compiled denoiser then ran 3.5x slower than eager (graph breaks at the
reused buffers and attention caches; ``benchmarks/RESULTS.md``).
The measurements are cached (:mod:`pipelines.precision_cache` keys them by model, device, CPU
capability and torch version), so only the first run on a machine pays for them (about a second
per mode at the calibration size).
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
#: A mode ``auto`` may pick costs at most this much PSNR (dB) against fp32 on the calibration
#: frames (PSNR of the model's output against the clean picture, fp32's minus the mode's).
QUALITY_BOUND_DB = 0.1
#: The calibration picture's side in pixels (a crop of a sample photo): small enough that the
#: slowest mode (bf16 on an AVX2 CPU) is measured in about a second, large enough for several
#: 16-pixel windows.
CALIBRATION_SIDE = 96


class PrecisionError(ValueError):
    """A precision that cannot run on the device asked for (one line)."""


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a mode the device cannot run, with a one-line reason."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("--precision fp16 needs --device cuda (half precision is slower than float32 on "
                             "a CPU; use bf16 or auto there)")
    if precision == "int8" and device.type != "cpu":
        raise PrecisionError("--precision int8 is for --device cpu (dynamically quantised Linear layers "
                             "have CPU kernels only)")


def candidates(device: torch.device) -> Tuple[str, ...]:
    """The modes ``auto`` chooses between on ``device`` (fp32 first: the reference)."""
    return ("fp32", "bf16", "int8") if device.type == "cpu" else ("fp32", "bf16", "fp16")


def param_dtype(precision: str) -> torch.dtype:
    """The dtype the model's parameters and inputs take (only fp16 changes them)."""
    return torch.float16 if precision == "fp16" else torch.float32


def prepare_model(model: nn.Module, precision: str) -> nn.Module:
    """The model to run under ``precision``: a dynamically quantised copy for int8 (the
    caller's model is left alone: a CPU pool shares it with its workers), else the model."""
    if precision != "int8":
        return model
    with warnings.catch_warnings():   # torch 2.13 marks torch.ao deprecated; still its CPU int8 path
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize = torch.ao.quantization.quantize_dynamic
        return quantize(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def forward_context(precision: str, device: torch.device) -> ContextManager:
    """What each forward runs inside: autocast for bf16, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- auto -----------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One mode on the calibration frames: seconds per forward (min of the reps) and PSNR (dB)
    against the clean picture."""

    seconds: float
    psnr: float


@dataclass
class Choice:
    """What ``auto`` picked and from what (the stats' ``precision`` and ``precision_auto``)."""

    precision: str
    measurements: Dict[str, Measurement] = field(default_factory=dict)
    cached: bool = False

    def cost_db(self, mode: str) -> float:
        return self.measurements["fp32"].psnr - self.measurements[mode].psnr

    def describe(self) -> str:
        if not self.measurements:
            return f"precision auto: {self.precision} (not measured: the model did not run on the calibration frames)"
        parts = [f"{m} {v.seconds * 1000:.0f} ms {-self.cost_db(m):+.2f} dB" for m, v in self.measurements.items()]
        source = "cached" if self.cached else "measured"
        return f"precision auto: {self.precision} ({source}: {', '.join(parts)})"


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a.float().clamp(0, 1) - b.float().clamp(0, 1)) ** 2).mean())
    return 99.0 if mse <= 1e-10 else 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()


def pick(measurements: Dict[str, Measurement], bound_db: float = QUALITY_BOUND_DB) -> str:
    """The fastest mode whose PSNR is within ``bound_db`` of fp32's (fp32 always qualifies)."""
    reference = measurements["fp32"].psnr
    allowed = [m for m, v in measurements.items() if reference - v.psnr <= bound_db]
    return min(allowed, key=lambda m: (measurements[m].seconds, m != "fp32"))


def measure_modes(run: Callable[[str], Tensor], target: Tensor, modes: Tuple[str, ...],
                  reps: int = 2) -> Dict[str, Measurement]:
    """Time ``run(mode)`` (after one warm-up call) and score it against ``target``, per mode.
    Modes are interleaved rep by rep, so a change of load touches them alike. A mode whose
    warm-up raises is left out; fp32's error propagates."""
    outputs = {}
    for mode in modes:   # warm-up (and the output scored); a mode that cannot run this model drops out
        try:
            outputs[mode] = run(mode)
        except Exception:
            if mode == "fp32":
                raise
    modes = tuple(outputs)
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(reps):
        for mode in modes:
            started = time.perf_counter()
            run(mode)
            best[mode] = min(best[mode], time.perf_counter() - started)
    return {mode: Measurement(best[mode], psnr(outputs[mode], target)) for mode in modes}
