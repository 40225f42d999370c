"""Held-out quality and CPU speed of the bundled models; prints JSON.

    python -m pipelines.weights.evaluate                    # every bundled model
    python -m pipelines.weights.evaluate --task sr2 --no-speed
    python -m pipelines.weights.evaluate --landmarks 16 32 64 --iters 2 3

Quality: PSNR (RGB, 8-bit outputs as the streamer writes them) on the held-out photos
(``data.EVAL_IMAGES``) of the degraded input (noisy / blurred / bicubic-upscaled), and of the
model with exact, Nyström (for every ``--landmarks`` x ``--iters``) and auto attention. For
SR the bicubic baseline and the model are both scored without a border of ``scale`` pixels.
The bundled deblurrer runs behind its preset's motion-Wiener prefilter (``--prefilter``), as
the CLI runs it; ``prefiltered`` scores what that step alone feeds the model.
Speed: frames per second of the model alone on a 640x360 input (the whole frame, one call,
``torch.get_num_threads()`` threads), median of ``--repeats`` timed calls after a warm-up,
with exact and Nyström attention interleaved so load from other processes hits both alike;
``cpu_s_1thread`` is the CPU time of a one-thread run (``fps_1core`` its inverse), which the
load of other processes on a shared machine barely changes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .. import degradations, zoo
from ..deconvolution import PREFILTERS, MotionDeconvolution, make_prefilter
from ..attention import patch_attention
from ..loading import load_model
from ..runtime import configure_allocator
from . import TASKS, bundled_path
from .data import EVAL_IMAGES, SCALES, degrade_fixed, eval_cases, load_photo, quantize


def held_out_psnr(model: Optional[nn.Module], task: str, photos: Dict[str, Tensor], settings: dict,
                  prefilter: Optional[MotionDeconvolution] = None) -> float:
    """Mean PSNR over the held-out photos; ``model=None`` scores the degraded input itself
    (after ``prefilter``, if one is given: what the model is fed)."""
    scale = SCALES[task]
    scores = []
    for clean in photos.values():
        h, w = (s - s % scale for s in clean.shape[-2:])
        clean = clean[:, :h, :w]
        degraded = degrade_fixed(task, clean, settings)
        if prefilter is not None:  # as the streamer does: on the whole 8-bit frame, output rounded
            prefilter.reset()      # (each photo on its own: no agreement with the one before)
            restored, _ = prefilter.apply(degraded)
            degraded = degraded if restored is None else quantize(restored)
        if model is None:
            out = degradations.bicubic_resize(degraded, scale) if scale > 1 else degraded
        else:
            with torch.inference_mode():
                out = model(degraded[None])[0]
        out, ref = quantize(out), clean
        if scale > 1:
            out, ref = out[:, scale:-scale, scale:-scale], ref[:, scale:-scale, scale:-scale]
        scores.append(degradations.psnr(out, ref))
    return round(sum(scores) / len(scores), 3)


def _time_frames(model: nn.Module, modes: List[dict], repeats: int) -> Dict[str, Dict[str, float]]:
    """Median wall and process-CPU seconds of one 640x360 forward per setting, interleaved."""
    frame = torch.rand(1, 3, 360, 640, generator=torch.Generator().manual_seed(0))
    wall: Dict[str, list] = {m["label"]: [] for m in modes}
    cpu: Dict[str, list] = {m["label"]: [] for m in modes}
    with torch.inference_mode():
        for rep in range(repeats + 1):
            for m in modes:
                patch_attention(model, m["mode"], landmarks=m["landmarks"], iters=m["iters"])
                t_wall, t_cpu = time.perf_counter(), time.process_time()
                model(frame)
                if rep:  # the first round warms caches (biases, auto's measurements)
                    wall[m["label"]].append(time.perf_counter() - t_wall)
                    cpu[m["label"]].append(time.process_time() - t_cpu)
    return {label: {"wall": statistics.median(wall[label]), "cpu": statistics.median(cpu[label])}
            for label in wall}


def frame_speed(model: nn.Module, modes: List[dict], repeats: int) -> Dict[str, dict]:
    """Speed of one 640x360 frame per attention setting.

    ``fps``/``seconds``: wall time with torch's threads (what a user sees now, on a shared
    machine too); ``cpu_s``: process CPU seconds of that run; ``cpu_s_1thread``: CPU seconds
    with one thread, which other processes' load barely changes, and ``fps_1core`` = its
    inverse: the rate one whole core gives.
    """
    threads = torch.get_num_threads()
    shared = _time_frames(model, modes, repeats)
    torch.set_num_threads(1)
    try:
        single = _time_frames(model, modes, repeats)
    finally:
        torch.set_num_threads(threads)
    return {label: {"fps": round(1 / shared[label]["wall"], 2), "seconds": round(shared[label]["wall"], 3),
                    "cpu_s": round(shared[label]["cpu"], 3),
                    "cpu_s_1thread": round(single[label]["cpu"], 3),
                    "fps_1core": round(1 / single[label]["cpu"], 2)}
            for label in shared}


def prefilter_seconds(prefilter: MotionDeconvolution, repeats: int) -> float:
    """Median seconds of the prefilter on a 640x360 motion-blurred photo (found and inverted)."""
    frame = degradations.bicubic_resize(load_photo("astronaut")[None], 1.0)[0, :, :360, :]
    frame = torch.cat([frame, frame.flip(-1)], -1)[..., :640]
    image = (quantize(degradations.motion_blur(frame, 9.0, 30.0)) * 255).round().byte().permute(1, 2, 0).numpy()
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        prefilter(image)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times[1:]), 4)


def evaluate_task(task: str, path: Path, landmarks: List[int], iters: List[int], speed: bool,
                  repeats: int, photos: Dict[str, Tensor], prefilter: Optional[str] = None) -> dict:
    model = load_model(path)
    pre = make_prefilter(prefilter)
    config = model.config
    report: dict = {
        "file": path.name, "bytes": path.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "arch": {"embed_dim": config.embed_dim, "depths": list(config.depths),
                 "num_heads": list(config.num_heads), "window": config.window_size,
                 "mlp_ratio": config.mlp_ratio, "upsampler": config.upsampler or None,
                 "scale": config.upscale, "resi_connection": config.resi_connection},
        "prefilter": prefilter,
        "psnr": {},
    }
    nystrom = [{"label": f"nystrom_m{m}_t{t}", "mode": "nystrom", "landmarks": m, "iters": t}
               for m in landmarks for t in iters]
    settings = [{"label": "exact", "mode": "exact", "landmarks": landmarks[0], "iters": iters[0]}] + nystrom + [
        {"label": "auto", "mode": "auto", "landmarks": landmarks[0], "iters": iters[0]}]
    for label, case in eval_cases(task):
        scores = {"input": held_out_psnr(None, task, photos, case)}
        if pre is not None:
            scores["prefiltered"] = held_out_psnr(None, task, photos, case, pre)
        for s in settings:
            patch_attention(model, s["mode"], landmarks=s["landmarks"], iters=s["iters"])
            scores[s["label"]] = held_out_psnr(model, task, photos, case, pre)
        scores["exact_gain_db"] = round(scores["exact"] - scores["input"], 3)
        for s in nystrom:
            scores[f"{s['label']}_minus_exact_db"] = round(scores[s["label"]] - scores["exact"], 3)
        report["psnr"][label] = scores
    if speed:
        report["speed_640x360"] = frame_speed(model, settings, repeats)
        if pre is not None:
            report["prefilter_seconds_640x360"] = prefilter_seconds(pre, repeats)
    return report


def main(argv: Optional[list] = None) -> int:
    tuned = configure_allocator()  # the speed figures are taken as the CLI runs
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, nargs="+", default=list(TASKS))
    p.add_argument("--weights", type=Path, nargs="+", help="checkpoint per --task (default: bundled)")
    p.add_argument("--landmarks", type=int, nargs="+", default=[16])
    p.add_argument("--iters", type=int, nargs="+", default=[2])
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prefilter", choices=("preset", "none") + PREFILTERS, default="preset",
                   help="whole-frame step before the model (default: the task's bundled preset's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.weights and len(args.weights) != len(args.task):
        p.error("give one --weights file per --task")
    paths = args.weights or [bundled_path(t) for t in args.task]
    photos = {name: load_photo(name) for name in EVAL_IMAGES}
    result = {"held_out": list(EVAL_IMAGES), "threads": torch.get_num_threads(), "allocator_tuned": tuned,
              "load_avg_1min": round(os.getloadavg()[0], 2), "models": {}}
    for task, path in zip(args.task, paths):
        if not path.is_file():
            result["models"][task] = {"error": f"{path} not found"}
            continue
        prefilter = (zoo.default_preset(task).prefilter if args.prefilter == "preset"
                     else None if args.prefilter == "none" else args.prefilter)
        result["models"][task] = evaluate_task(task, path, args.landmarks, args.iters, not args.no_speed,
                                               args.repeats, photos, prefilter)
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
