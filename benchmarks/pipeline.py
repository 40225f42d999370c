"""End-to-end streaming speed and memory of ``streamer.run`` (JSON on stdout).

What it measures, on a synthetic clip (camera pan over a photo, Gaussian noise, AAC audio):

* ``model_alone``: the model on the same frames, decoded to memory first, run in one loop
  in this process (all cores) — what the pipeline would reach if decode, encode and hand-offs
  cost nothing; and ``model_only`` per ``--workers`` setting: that worker configuration fed
  from memory (start-up excluded).
* ``end_to_end``: ``streamer.run`` (decode -> workers -> encode, audio copied) for
  ``--workers 0`` (in this process, all cores), ``1`` (one process, all cores) and ``2``
  (two processes, one thread each), interleaved with the model-alone runs over ``--reps``
  repetitions (timings on a shared machine are noisy; ratios within a run are what count).
  ``fps_steady`` excludes start-up (worker processes importing torch, the first frame);
  ``ratio_to_model_alone`` = end-to-end steady fps / model-alone fps (goal >= 0.95) and
  ``ratio_to_model_only`` the same against the worker configuration alone.
* ``memory``: peak RSS of the CLI (and of its largest worker) for a short and a 10x longer
  input (200 vs 2000 frames, 100 vs 1000 with ``--quick``; 48x32), each in a fresh process
  so the peaks do not mix, in-process and with 2 workers (goal: <= 10 % growth).
* ``sigint``: seconds from SIGINT to the CLI's exit in the middle of a run (goal < 2 s).

The model is the bundled denoise preset when its weights exist, else a small randomly
initialised SwinIR with Nystrom attention (real architecture and cost, random output).

    .venv/bin/python benchmarks/pipeline.py --quick      # about 4 minutes on the 2-core machine
    .venv/bin/python benchmarks/pipeline.py              # about 8-10 minutes
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import queue
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.process_env import configure_openmp  # noqa: E402

configure_openmp()  # as the CLI does, before torch loads

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import streamer  # noqa: E402
from pipelines import zoo  # noqa: E402
from pipelines.models.swinir import SwinIR, SwinIRConfig  # noqa: E402
from pipelines.restorer import Restorer  # noqa: E402
from pipelines.runtime import configure_allocator  # noqa: E402
ALLOCATOR_TUNED = configure_allocator()  # as the CLI runs (NYSTRA_MALLOC=system: glibc's default)
from streamer import samples  # noqa: E402
from streamer.frames import Frame  # noqa: E402
from streamer.windows import Cutter  # noqa: E402
from streamer.pool import CpuPool  # noqa: E402
from streamer.process_env import cpu_cores  # noqa: E402
from streamer.workers import DeviceWorker  # noqa: E402

# A small-but-real stand-in while the bundled weights are not trained.
STAND_IN = SwinIRConfig(img_size=64, embed_dim=32, depths=(2, 2), num_heads=(4, 4), window_size=8,
                        mlp_ratio=2, upscale=1, upsampler="")


def bench_model(workdir: Path) -> tuple:
    """(weights path, description): the bundled denoise model, or the stand-in saved to disk."""
    preset = zoo.default_preset("denoise")
    if preset.available():
        return preset.path, f"{preset.name} (bundled)"
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = SwinIR(STAND_IN)
    path = workdir / "standin.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, f"random SwinIR {STAND_IN.embed_dim}ch depths {STAND_IN.depths} window {STAND_IN.window_size}"


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    clean = samples.camera_pan(frames, width, height)
    samples.write_clip(path, samples.degrade(clean, "noise"), crf=18)


def decoded(path: Path) -> List[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def model_alone_fps(weights: Path, frames: List[np.ndarray]) -> float:
    """The model in a loop over frames already in memory: one process, all cores. It runs
    in a helper thread, as the in-process worker does (on this machine an OpenMP team
    started from the main thread was measured many times slower under CPU contention)."""
    from pipelines.loading import load_model

    result: List[float] = []

    def loop() -> None:
        torch.set_num_threads(cpu_cores())
        restorer = Restorer(load_model(weights, attention="nystrom"))
        restorer.restore(frames[0])  # warm-up (bias caches, allocator)
        started = time.perf_counter()
        for image in frames:
            restorer.restore(image)
        result.append(len(frames) / (time.perf_counter() - started))

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    return result[0]


def model_only_fps(weights: Path, frames: List[np.ndarray], workers: int) -> float:
    """The worker configuration of ``--workers N`` fed from memory (no decode, stitch or
    encode; worker start-up excluded): what the pipeline around it can at best keep up with."""
    from pipelines.loading import load_model

    torch.set_num_threads(cpu_cores())
    model = load_model(weights, attention="nystrom")
    worker = DeviceWorker(model) if workers == 0 else CpuPool(model, workers)
    worker.start()
    if workers:
        worker.wait_ready()
    cutter = Cutter()
    items = [item for i, image in enumerate(frames)
             for item in cutter.push(Frame(i, i, Fraction(1, 30), image))]
    inbox: "queue.Queue" = queue.Queue()
    for item in items:
        inbox.put(item)
    inbox.put(None)
    started = time.perf_counter()
    try:
        worker.run(inbox, lambda result: None, threading.Event())
    finally:
        worker.close()
    return len(items) / (time.perf_counter() - started)


def end_to_end(weights: Path, clip: Path, out: Path, workers: int) -> dict:
    torch.set_num_threads(cpu_cores())
    stats = streamer.run(clip, out, model=str(weights), attention="nystrom", workers=workers, preset="veryfast")
    return dict(fps=stats.fps, fps_steady=stats.fps_steady, startup_seconds=stats.startup_seconds,
                worker=stats.worker, stage_seconds=stats.stage_seconds)


def cli_peak_rss(weights: Path, clip: Path, out: Path, workers: int) -> dict:
    stats_path = out.with_suffix(".json")
    subprocess.run([sys.executable, "-m", "streamer.cli", str(clip), str(out), "--weights", str(weights),
                    "--workers", str(workers), "--preset", "veryfast", "-q", "--stats", str(stats_path)],
                   cwd=ROOT, check=True, timeout=1800)
    stats = json.loads(stats_path.read_text())
    return dict(frames=stats["frames_out"], peak_rss_mb=round(stats["peak_rss_mb"], 1),
                workers_peak_rss_mb=round(stats["workers_peak_rss_mb"], 1), fps=round(stats["fps"], 2))


def sigint_stop_seconds(weights: Path, clip: Path, out: Path, workers: int) -> float:
    """Start the CLI, let it process for a while, SIGINT it, time until it has exited."""
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", str(clip), str(out), "--weights", str(weights),
                             "--workers", str(workers), "-q", "--keep-partial"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(f".{out.stem}.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)  # workers started, frames flowing
    if proc.poll() is not None:
        return float("nan")
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    proc.wait(timeout=60)
    return time.monotonic() - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and one repetition")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    n_speed = 24 if args.quick else 48
    n_short, n_long = (100, 1000) if args.quick else (200, 2000)

    with tempfile.TemporaryDirectory(prefix="nystra-bench-") as tmp:
        work = Path(tmp)
        weights, model_name = bench_model(work)
        clip = work / "speed.mp4"
        make_clip(clip, n_speed, args.width, args.height)
        frames = decoded(clip)

        alone: List[float] = []
        only: Dict[int, List[float]] = {0: [], 1: [], 2: []}
        e2e: Dict[int, List[dict]] = {0: [], 1: [], 2: []}
        for _ in range(reps):  # interleaved: every variant sees the same machine load
            alone.append(model_alone_fps(weights, frames))
            for workers in e2e:
                only[workers].append(model_only_fps(weights, frames, workers))
                e2e[workers].append(end_to_end(weights, clip, work / f"out{workers}.mp4", workers))
        alone_fps = statistics.median(alone)
        speed = {}
        for workers, runs in e2e.items():
            steady = statistics.median(r["fps_steady"] for r in runs)
            model_only = statistics.median(only[workers])
            speed[f"workers_{workers}"] = dict(
                worker=runs[0]["worker"], fps=round(statistics.median(r["fps"] for r in runs), 3),
                fps_steady=round(steady, 3), model_only_fps=round(model_only, 3),
                ratio_to_model_only=round(steady / model_only, 3),
                ratio_to_model_alone=round(steady / alone_fps, 3),
                startup_seconds=round(statistics.median(r["startup_seconds"] for r in runs), 2),
                stage_seconds=runs[-1]["stage_seconds"])
        best = max(speed, key=lambda k: speed[k]["fps_steady"])

        memory: Dict[str, dict] = {}
        for workers in (0, 2):     # the default (in-process) and a worker pool
            runs = {}
            for n in (n_short, n_long):
                long_clip = work / f"mem{n}.mp4"
                if not long_clip.exists():
                    make_clip(long_clip, n, 48, 32)
                runs[n] = cli_peak_rss(weights, long_clip, work / f"mem{n}_out.mp4", workers=workers)
            short, long = runs[n_short], runs[n_long]
            entry = {f"frames_{n}": r for n, r in runs.items()}
            entry["growth_main"] = round(long["peak_rss_mb"] / short["peak_rss_mb"] - 1, 4)
            if workers:
                entry["growth_workers"] = round(long["workers_peak_rss_mb"] / short["workers_peak_rss_mb"] - 1, 4)
            memory[f"workers_{workers}"] = entry

        stop_clip = work / "stop.mp4"
        make_clip(stop_clip, 300, 160, 120)
        stop = sigint_stop_seconds(weights, stop_clip, work / "stop_out.mp4", workers=2)

    report = dict(
        benchmark="pipeline", quick=args.quick, reps=reps, cores=cpu_cores(), torch=torch.__version__,
        allocator_tuned=ALLOCATOR_TUNED,
        model=model_name, attention="nystrom", frame_size=[args.width, args.height], frames=n_speed,
        model_alone_fps=round(alone_fps, 3), model_alone_runs=[round(x, 3) for x in alone],
        end_to_end=speed, fastest=best,
        memory=memory, sigint_stop_seconds=round(stop, 3),
        goals=dict(ratio=">= 0.95", memory_growth="<= 0.10", sigint_stop="< 2 s"),
    )
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
