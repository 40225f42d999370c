"""``--target-fps F``: the latency/quality dial.

At the start of a run the dial picks the setting (:class:`pipelines.quality_table.Setting`:
attention kernel, landmarks, iterations, window, resolution) that reaches ``F`` frames a second
with the least PSNR lost:

1. the model's **quality table** (:mod:`pipelines.quality_table`: shipped for the bundled
   models, measured once and cached for others) says what each setting costs in PSNR;
2. a short **calibration** (:func:`calibrate`) times a few of them here, at the run's real tile
   size: per (window, resolution) the setting with the least ΔPSNR (the cheapest of those within
   :data:`TIE_DB` of it), plus the preset's own setting, on a crop of at most
   :data:`CALIBRATION_PIXELS` pixels (scaled to the tiles' area), each warmed up once and then
   timed :data:`REPS` times interleaved, as many calls at once as the run has workers, with their
   threads. Warm-ups stop at half of :data:`CALIBRATION_BUDGET_S` (3.5 s), the timed rounds at all
   of it, so the whole start-up stays under 5 s: measured 1.9-3.6 s for the bundled denoiser at
   640x360 on the 2-core AVX2 CPU while other sessions loaded it (load average 3-7), 9 settings
   timed when it was least loaded; ``calibration_s`` in the stats says what a run took;
3. :func:`choose`: among the timed settings whose predicted fps reaches ``F`` x
   :data:`HEADROOM` (decode, stitch and encode run beside the model), the one with the least
   ΔPSNR; if none does, the fastest, with one warning naming the best fps reachable.

One line on stderr says what it picked. Then, during the run (:class:`Controller`), the dial
follows the model's measured capacity (frames a second the workers could do, from their busy
time: a live source slower than the model does not read as a slow model; for a file, no more
than the frames written a second) over a moving window of :data:`WINDOW_S` seconds, and steps
along a ladder of the timed settings at the chosen window:

- down (faster) when capacity stays below :data:`DOWN_RATIO` x ``F`` for :data:`DOWN_S` s: to the
  best rung whose calibrated speed ratio to the current one predicts ``F`` x :data:`HEADROOM`
  (at least one rung; the last if none does);
- up (better) when it stays above :data:`UP_RATIO` x ``F`` for :data:`UP_S` s *and* the better
  rung, at its calibrated speed ratio, would still reach ``F`` (so it does not climb into a
  setting it must leave again 3 s later).

Live runs are what this is for (load changes over an hour, and a live source cannot wait); file
runs follow too, since the start-up calibration is a few seconds on a machine whose load may
change: on the shared 2-core test machine the same setting measured 1.2 to 2.9 fps minutes apart.

A change reaches the workers between frames (:class:`Tunable`): an in-process worker applies it
before its next item; worker processes get a message on their task pipe, ordered after the
items already sent. The window is fixed for the run (changing it rebuilds bias tables).

For a live input ``--max-latency`` is not a target: the latency budget is kept by dropping
frames that cannot make it (issue 14), and it names no frame rate (a 1000 ms budget holds at
1 fps as well as at 30). Without ``--target-fps`` the dial is off and the settings stay as given.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from pipelines import tiling
from pipelines.attention import attention_plan
from pipelines.models.base import ModelInfo
from pipelines.quality_table import (Entry, QualityTable, Setting, apply_setting, dial_model, quality_table,
                                     resizable, with_window)
from pipelines.rescale import Rescaled
from pipelines.restorer import Restorer

from .errors import UsageError
from .options import DEFAULT_WORKERS, Options
from .process_env import cpu_cores

log = logging.getLogger(__name__)

# Predicted fps must exceed the target by this: decode, stitch, encode and an audit share the cores
# with the workers. Runs of the bundled denoiser at 640x360 (2 workers, loaded machine) reached
# 0.83-1.04x of the prediction.
HEADROOM = 1.25
TIE_DB = 0.02                  # settings within this of a group's best ΔPSNR count as as good
CALIBRATION_PIXELS = 192 * 128  # the per-pixel cost is what scales; a call's fixed cost is small
REPS = 2                       # timed calls per setting (the least counts: load only slows)
CALIBRATION_BUDGET_S = 3.5     # seconds of timing; the stats' calibration_s is what start-up took
WINDOW_S = 2.0                 # capacity: busy time over the frames of the last WINDOW_S seconds
DOWN_RATIO, DOWN_S = 0.9, 3.0
UP_RATIO, UP_S = 1.2, 10.0


# -- choosing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """A setting, its quality cost (table) and its predicted fps here (calibration)."""

    setting: Setting
    delta_db: float
    fps: float


def choose(timed: Sequence[Timed], target: float, headroom: float = HEADROOM) -> Tuple[Timed, bool]:
    """The least-ΔPSNR setting whose fps reaches ``target x headroom`` (ties: the faster), and
    True; if none does, the fastest and False."""
    if not timed:
        raise ValueError("nothing was timed")
    fast_enough = [t for t in timed if t.fps >= target * headroom]
    if fast_enough:
        return min(fast_enough, key=lambda t: (t.delta_db, -t.fps)), True
    return max(timed, key=lambda t: t.fps), False


def to_calibrate(table: QualityTable, default: Setting, windows: Sequence[Optional[int]]) -> List[Entry]:
    """Which settings to time: ``default`` first, then per (window, resolution) the best."""
    groups: Dict[Tuple[Optional[int], float], List[Entry]] = {}
    for entry in table.entries:
        if entry.setting.window in windows:
            groups.setdefault((entry.setting.window, entry.setting.resolution), []).append(entry)
    picked = [e for e in table.entries if e.setting == default][:1]
    for key in sorted(groups, key=lambda k: (k[0] or 0, -k[1])):
        group = groups[key]
        best = min(e.delta_db for e in group)
        entry = min((e for e in group if e.delta_db <= best + TIE_DB), key=lambda e: e.cost)
        if entry not in picked:
            picked.append(entry)
    return picked


def ladder(timed: Sequence[Timed], window: Optional[int]) -> List[Timed]:
    """The rungs the dial steps along during a run: the timed settings at ``window``, best first,
    keeping only those faster than every better one (a slower, worse rung is never worth it)."""
    rungs: List[Timed] = []
    for t in sorted((t for t in timed if t.setting.window == window), key=lambda t: (t.delta_db, -t.fps)):
        if not rungs or t.fps > rungs[-1].fps:
            rungs.append(t)
    return rungs


# -- timing ------------------------------------------------------------------------------------


def calibration_crop(tile_h: int, tile_w: int, multiple: int) -> Tuple[int, int]:
    """The crop timed for a ``tile_h`` x ``tile_w`` tile: the tile, shrunk to at most
    :data:`CALIBRATION_PIXELS` keeping its shape, sides on the model's multiple."""
    shrink = min(1.0, math.sqrt(CALIBRATION_PIXELS / max(1, tile_h * tile_w)))
    def side(n: int) -> int:
        return max(multiple, int(n * shrink) // multiple * multiple)
    return side(tile_h), side(tile_w)


def frame_pixels(height: int, width: int, tile: int, overlap: int) -> int:
    """Pixels the model sees per frame (tiles overlap)."""
    return sum((b - t) * (r - l) for t, l, b, r in tiling.tile_boxes(height, width, tile, overlap))


def calibrate(model: Rescaled, entries: Sequence[Entry], height: int, width: int, tile: int, overlap: int,
              precision: str, sigma: Optional[float] = None, threads: int = 1, lanes: int = 1,
              budget_s: float = CALIBRATION_BUDGET_S,
              clock: Callable[[], float] = time.perf_counter) -> Tuple[List[Timed], Dict[Optional[int], Rescaled]]:
    """Time ``entries`` on a crop standing for the run's tiles, with ``threads`` torch threads
    as each of the run's ``lanes`` workers has them (on the loaded 2-core machine a 2-thread
    call took 5x a 1-thread one: threads wait for each other at every parallel region); fps per
    frame of ``height`` x ``width`` with ``lanes`` workers. Returns the timed settings and the
    model built for each window."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _calibrate(model, entries, height, width, tile, overlap, precision, sigma, lanes, budget_s, clock)
    finally:
        torch.set_num_threads(before)


def _calibrate(model: Rescaled, entries: Sequence[Entry], height: int, width: int, tile: int, overlap: int,
               precision: str, sigma: Optional[float], lanes: int, budget_s: float,
               clock: Callable[[], float]) -> Tuple[List[Timed], Dict[Optional[int], Rescaled]]:
    info = model.info
    th, tw = (height, width) if tile <= 0 else (min(tile, height), min(tile, width))
    ch, cw = calibration_crop(th, tw, info.size_multiple)
    per_frame = frame_pixels(height, width, tile, overlap) / (ch * cw)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, ch, cw, generator=gen)
    models: Dict[Optional[int], Rescaled] = {None: model}

    pool = ThreadPoolExecutor(lanes) if lanes > 1 else None

    def call(restorer: Restorer) -> None:
        with torch.inference_mode():
            restorer.restore_tensor(x)

    def run(setting: Setting) -> float:
        """One call at ``setting`` per lane, the lanes at once (as the run's workers will compete
        for the cores: under load two lanes are not twice one), timed. The setting is set on the
        shared model just before: settings share it."""
        if setting.window not in models:
            models[setting.window] = with_window(model, setting.window)
        net = apply_setting(models[setting.window], setting)
        restorers = [Restorer(net, device="cpu", sigma=sigma, prefilter=False, precision=precision)
                     for _ in range(lanes)]
        t0 = clock()
        if pool is None:
            call(restorers[0])
        else:
            list(pool.map(call, restorers))
        return clock() - t0

    started = clock()
    best: Dict[Setting, float] = {}
    for entry in entries:      # warm-up (each setting's caches: bias pooling, padding shapes), timed too
        if best and clock() - started > budget_s / 2:
            break
        best[entry.setting] = run(entry.setting)
    warm = [e for e in entries if e.setting in best]
    for _ in range(REPS):      # interleaved, so a change of load touches every setting alike
        for entry in warm:
            if clock() - started > budget_s:
                break
            best[entry.setting] = min(best[entry.setting], run(entry.setting))
    timed = [Timed(e.setting, e.delta_db, lanes / max(best[e.setting] * per_frame, 1e-6)) for e in warm]
    if pool is not None:
        pool.shutdown()
    return timed, models


# -- during the run: the hysteresis controller -------------------------------------------------------------


@dataclass
class Change:
    frame: int
    time_s: float
    from_: str
    to: str
    reason: str

    def to_dict(self) -> dict:
        return {"frame": self.frame, "time_s": round(self.time_s, 3), "from": self.from_, "to": self.to,
                "reason": self.reason}


class Controller:
    """Steps along ``rungs`` (best first) from ``start`` as capacity samples come in; a pure
    state machine: time is what :meth:`observe` is told, never the wall clock."""

    def __init__(self, rungs: Sequence[Timed], start: int, target: float, headroom: float = HEADROOM) -> None:
        if not rungs or not 0 <= start < len(rungs):
            raise ValueError(f"start rung {start} outside {len(rungs)} rungs")
        if target <= 0:
            raise ValueError(f"target fps must be positive, got {target}")
        self.rungs, self.index, self.target, self.headroom = list(rungs), start, target, headroom
        self._samples: Deque[Tuple[float, float]] = deque()   # (time, fps)
        self._low_since: Optional[float] = None
        self._high_since: Optional[float] = None

    @property
    def current(self) -> Timed:
        return self.rungs[self.index]

    def capacity(self) -> Optional[float]:
        if not self._samples:
            return None
        return sum(f for _, f in self._samples) / len(self._samples)

    def observe(self, now: float, fps: float) -> Optional[Tuple[Timed, Timed, str]]:
        """One capacity sample at ``now`` (seconds); returns (from, to, reason) when it steps."""
        self._samples.append((now, fps))
        while self._samples and self._samples[0][0] < now - WINDOW_S:
            self._samples.popleft()
        capacity = self.capacity()
        low = capacity < DOWN_RATIO * self.target
        # Up only where the better rung, at its calibrated speed ratio, would still reach the target.
        high = capacity > UP_RATIO * self.target and self.index > 0 and \
            capacity * self.rungs[self.index - 1].fps / self.current.fps >= self.target
        self._low_since = (self._low_since if self._low_since is not None else now) if low else None
        self._high_since = (self._high_since if self._high_since is not None else now) if high else None
        if low and now - self._low_since >= DOWN_S and self.index + 1 < len(self.rungs):
            # As far down as the calibrated ratios say it takes to reach the target (with the
            # headroom), at least one rung: one step per DOWN_S would take a long ladder long.
            ratio = capacity / self.current.fps
            to = next((i for i in range(self.index + 1, len(self.rungs))
                       if ratio * self.rungs[i].fps >= self.target * self.headroom), len(self.rungs) - 1)
            return self._step(to - self.index, f"{capacity:.2f} fps < {DOWN_RATIO:g} x target for {DOWN_S:g} s")
        if high and now - self._high_since >= UP_S:
            return self._step(-1, f"{capacity:.2f} fps > {UP_RATIO:g} x target for {UP_S:g} s, enough for the "
                                  "better setting")
        return None

    def _step(self, by: int, reason: str) -> Tuple[Timed, Timed, str]:
        old = self.current
        self.index += by
        self._samples.clear()   # what was measured belongs to the old setting
        self._low_since = self._high_since = None
        return old, self.current, reason


# -- the dial of one run ---------------------------------------------------------------------------


class Tunable(Protocol):
    """A worker that can take a new setting between frames."""

    lanes: int   # items it runs at once (worker processes; 1 in-process)

    def retune(self, setting: Setting) -> None:
        """Apply ``setting`` from the next item on (called from any thread)."""


@dataclass
class DialReport:
    """The stats' ``dial``."""

    target_fps: float
    chosen: dict
    predicted_fps: float
    predicted_delta_db: float
    reached: bool
    calibration_s: float
    timed: List[dict] = field(default_factory=list)
    final: Optional[dict] = None          # the setting at the end, where it changed
    changes: List[dict] = field(default_factory=list)


class Dial:
    """Chooses at start (:meth:`start`), then follows the capacity (:meth:`frame_done`)."""

    def __init__(self, timed: Sequence[Timed], models: Dict[Optional[int], Rescaled], target: float,
                 calibration_s: float) -> None:
        chosen, reached = choose(timed, target)
        self.target = target
        self.model = apply_setting(models[chosen.setting.window], chosen.setting)
        rungs = ladder(timed, chosen.setting.window)   # (the chosen setting is always one: see ladder)
        start = [r.setting for r in rungs].index(chosen.setting)
        self.controller = Controller(rungs, start, target)
        self.report = DialReport(target, asdict(chosen.setting), round(chosen.fps, 3), round(chosen.delta_db, 4),
                                 reached, round(calibration_s, 3),
                                 [{"setting": t.setting.label(), "fps": round(t.fps, 3),
                                   "delta_db": round(t.delta_db, 4)} for t in timed])
        self._started: Optional[float] = None
        self._last: Optional[Tuple[float, int, float]] = None   # (time, frames, busy seconds)
        if reached:   # one line on stderr, a library user's too (not a warning)
            print(f"nystra-stream: target fps {target:g}: {chosen.setting.label()} (predicted {chosen.fps:.1f} fps, "
                  f"{chosen.delta_db:.2f} dB from exact; calibrated in {calibration_s:.1f} s)", file=sys.stderr)
        else:
            log.warning("target fps %g is out of reach here: the fastest setting, %s, is predicted at %.1f fps "
                        "(%.2f dB from exact)", target, chosen.setting.label(), chosen.fps, chosen.delta_db)

    @classmethod
    def start(cls, model, table: QualityTable, default: Setting, height: int, width: int, tile: int,
              overlap: int, precision: str, target: float, can_resize: bool,
              sigma: Optional[float] = None, threads: int = 1, lanes: int = 1) -> "Dial":
        started = time.perf_counter()
        base = dial_model(model)
        windows: List[Optional[int]] = [None] + ([2 * base.info.size_multiple] if can_resize else [])
        timed, models = calibrate(base, to_calibrate(table, default, windows), height, width, tile, overlap,
                                  precision, sigma, threads, lanes)
        return cls(timed, models, target, time.perf_counter() - started)

    def frame_done(self, frame: int, now: float, busy_seconds: float, worker: Tunable, live: bool) -> None:
        """After each written frame: feed the controller, retune on a step.
        Capacity: frames per busy second of one lane, times the lanes; for a file (whose source
        never waits) no more than the frames written per second, so that what bounds the run
        beside the model (decode, encode, an audit) counts too."""
        if self._started is None:
            self._started = now
        if self._last is None:
            self._last = (now, frame, busy_seconds)
            return
        t0, f0, b0 = self._last
        if now - t0 < 0.25:   # samples of a quarter second: busy time is counted per item
            return
        self._last = (now, frame, busy_seconds)
        busy = busy_seconds - b0
        if busy <= 0 or frame <= f0:
            return
        capacity = (frame - f0) * worker.lanes / busy
        if not live:
            capacity = min(capacity, (frame - f0) / (now - t0))
        step = self.controller.observe(now - self._started, capacity)
        if step is None:
            return
        old, new, reason = step
        worker.retune(new.setting)
        self.report.changes.append(Change(frame, now - self._started, old.setting.label(), new.setting.label(),
                                          reason).to_dict())
        self.report.final = asdict(new.setting)
        log.warning("dial: %s -> %s (%s)", old.setting.label(), new.setting.label(), reason)


def start_dial(model, info: ModelInfo, opts: Options, precision: str, height: int, width: int, tile: int,
               overlap: int, name: str = "") -> Dial:
    """The dial for a run of ``model`` (loaded as the options say) on ``height`` x ``width`` frames."""
    if info.clip_len is not None:
        raise UsageError("--target-fps is for per-frame models, not video models (their clips set the pace)")
    table = quality_table(model, opts.sigma, name)
    layers = attention_plan(model)
    default = Setting(layers[0]["mode"], layers[0]["landmarks"], layers[0]["iters"]) if layers else Setting()
    workers = DEFAULT_WORKERS if opts.workers is None else opts.workers   # as make_worker runs them
    threads = opts.threads_per_worker or (max(1, cpu_cores() // workers) if workers else torch.get_num_threads())
    return Dial.start(model, table, default, height, width, tile, overlap, precision, opts.target_fps,
                      can_resize=resizable(model) and opts.window is None, sigma=opts.sigma,
                      threads=threads, lanes=max(1, workers))
