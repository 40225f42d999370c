"""Latency of a live run (issue 14): the bundled denoiser on ``lavfi:testsrc2`` paced at real
time, per picture size and ``--workers`` setting (JSON on stdout).

For each configuration:

* ``capacity_fps``: the output rate when the source (30 fps) outruns the model: what the
  configuration manages live (decode, model, encode, drops all included);
  ``per_frame_ms`` = 1000 / capacity_fps, the steady per-frame time.
* ``rates``: runs at 0.6, 0.9 and 1.2 x capacity: latency p50 / p95 / p99, frames in / out /
  dropped. ``goal_p50_ok`` (at 0.6 x, not overloaded): p50 <= 2 x per_frame_ms + 150 ms.
* ``drops_begin_fps``: the lowest of those rates where more than 2 % of frames were dropped
  (None: none dropped even at 1.2 x, i.e. the capacity run underestimated).

* ``--viewers``: the cost of the browser view: the same capacity run (320x240, default workers)
  with ``--serve`` and no viewer, then with three MJPEG viewers reading as fast as they can;
  ``fps_ratio`` = fps with viewers / fps without (goal >= 0.95).

All figures of one configuration come from one invocation on one machine; compare ratios, not
absolute numbers, across machines.

    .venv/bin/python benchmarks/live.py --quick     # 5 s runs: about 3-4 minutes on the 2-core machine
    .venv/bin/python benchmarks/live.py             # 15 s runs
"""
from __future__ import annotations

import argparse
import http.client
import json
import threading
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.process_env import configure_openmp  # noqa: E402

configure_openmp()  # as the CLI does, before torch loads

import torch  # noqa: E402

import streamer  # noqa: E402

SIZES = ("320x240", "640x360")
WORKERS = (0, 1, 2)
RATE_FACTORS = (0.6, 0.9, 1.2)
DROP_ONSET = 0.02   # a rate "drops" when more than 2 % of its frames were dropped


def live_run(size: str, rate: float, workers: int, seconds: float, out: Path) -> dict:
    stats = streamer.run(f"lavfi:testsrc2=size={size}:rate={rate:.3f}", str(out), task="denoise",
                         workers=workers, duration=seconds, preset="ultrafast", copy_streams=False)
    keys = ("frames_in", "frames_out", "frames_dropped", "drop_reasons", "latency_ms_p50", "latency_ms_p95",
            "latency_ms_p99", "fps_steady", "startup_seconds")
    return {"rate": round(rate, 3), **{k: getattr(stats, k) for k in keys}}


def configuration(size: str, workers: int, seconds: float, folder: Path) -> dict:
    capacity = live_run(size, 30.0, workers, seconds, folder / "capacity.mkv")
    capacity_fps = capacity["fps_steady"] or 0.0
    per_frame_ms = 1000.0 / capacity_fps if capacity_fps else None
    rates = [live_run(size, max(0.5, f * capacity_fps), workers, seconds, folder / f"r{f}.mkv")
             for f in RATE_FACTORS]
    onset = next((r["rate"] for r in rates if r["frames_in"] and r["frames_dropped"] > DROP_ONSET * r["frames_in"]),
                 None)
    calm = rates[0]
    goal_ms = 2 * per_frame_ms + 150 if per_frame_ms else None
    return {"size": size, "workers": workers, "capacity_fps": round(capacity_fps, 3),
            "per_frame_ms": round(per_frame_ms, 1) if per_frame_ms else None, "capacity_run": capacity,
            # False: the model kept up with 30 fps, so capacity_fps is the source's rate, a lower bound
            "source_outran_model": capacity["frames_dropped"] > DROP_ONSET * max(1, capacity["frames_in"]),
            "rates": rates, "drops_begin_fps": onset, "goal_p50_ms": goal_ms,
            "goal_p50_ok": bool(goal_ms and calm["latency_ms_p50"] is not None and calm["latency_ms_p50"] <= goal_ms)}


class Viewer(threading.Thread):
    """Reads /stream.mjpg as fast as it comes until stopped; counts bytes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.bytes, self.stop = port, 0, threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/stream.mjpg")
        response = conn.getresponse()
        while not self.stop.is_set():
            chunk = response.read1(65536)
            if not chunk:
                break
            self.bytes += len(chunk)
        conn.close()


def viewers_cost(seconds: float, folder: Path, count: int = 3) -> dict:
    from streamer.options import options_from_mapping
    from streamer.pipeline import Run

    out = {}
    for watching in (0, count):
        run = Run("lavfi:testsrc2=size=320x240:rate=30", str(folder / f"v{watching}.mkv"),
                  options_from_mapping(dict(task="denoise", duration=seconds, serve="0", preset="ultrafast",
                                            copy_streams=False)))
        viewers = []
        thread = threading.Thread(target=run.execute, daemon=True)
        thread.start()
        while thread.is_alive() and (run.view is None or run.view.port is None):
            time.sleep(0.05)
        viewers = [Viewer(run.view.port) for _ in range(watching)]
        for viewer in viewers:
            viewer.start()
        thread.join()
        for viewer in viewers:
            viewer.stop.set()
        out[watching] = {"fps_steady": run.stats.fps_steady, "serve": run.stats.serve,
                         "viewer_bytes": [v.bytes for v in viewers]}
    fps0, fps3 = out[0]["fps_steady"], out[count]["fps_steady"]
    return {"viewers": count, "without": out[0], "with": out[count],
            "fps_ratio": round(fps3 / fps0, 3) if fps0 and fps3 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s runs instead of 15 s")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--workers", nargs="+", type=int, default=list(WORKERS))
    parser.add_argument("--viewers", action="store_true", help="only the browser view's cost")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 15.0
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.viewers:
            result = viewers_cost(seconds * 2, Path(tmp))
            print(json.dumps({"benchmark": "live-viewers", "date": time.strftime("%Y-%m-%d"),
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(), **result}, indent=2))
            return
        for size in args.sizes:
            for workers in args.workers:
                results.append(configuration(size, workers, seconds, Path(tmp)))
                print(json.dumps(results[-1]), file=sys.stderr)   # progress while it runs
    print(json.dumps({"benchmark": "live", "date": time.strftime("%Y-%m-%d"), "seconds_per_run": seconds,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "wall_seconds": round(time.monotonic() - started, 1), "results": results}, indent=2))


if __name__ == "__main__":
    main()
