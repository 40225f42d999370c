"""``streamer.run``: source -> cutter -> worker(s) -> stitcher -> sink, joined by bounded queues.

(What comes before the first frame, the options, their checks, the model and the worker, is
:mod:`streamer.options`.)

Threads (all daemon, so a stuck stage can never keep the process alive):

- ``decode``: reads frames from the source and cuts them into work items (``work`` queue);
- ``model``: a :class:`~streamer.workers.DeviceWorker` or :class:`~streamer.pool.CpuPool`
  turns work items into results, in index order (``results`` queue);
- the caller's thread stitches results into frames and encodes them (and watches the others).

Every queue is bounded, so a slow stage slows the ones before it and memory stays flat
however long the video. Video models (``info.clip_len`` set) get clips of ``clip_len`` frames
overlapping by ``clip_overlap``, each cut into spatial tiles (3-D tiles, like the official RVRT
test's ``--tile T H W``); their queues hold a couple of items rather than ``queue_size`` (see
:func:`~streamer.windows.queue_items`), so what is in flight stays a few clips
(``Stats.peak_frames_held`` records it).

The first error in any stage sets a stop flag every loop checks (at least every 50 ms); the
caller's thread then tears everything down (worker processes terminated, sink aborted: nothing
left under the output name, or with ``keep_partial`` a playable file of the frames written) and
re-raises that first error. Ctrl-C arrives in the caller's thread as ``KeyboardInterrupt`` and
takes the same path.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from pipelines.deconvolution import make_prefilter
from pipelines.restorer import describe_model
from pipelines.models.base import ModelInfo

from .encoding import EncoderSettings
from .frames import Frame
from .options import (Options, check_encoder, check_model_fits, check_options, choose_prefilter, make_worker,
                      prepare_model)
from .sinks import VideoSink, check_output_path
from .sources import open_source
from .windows import Cutter, Stitcher, queue_items, whole_frames_if_they_fit, window_settings
from .workers import Stopped, peak_rss_bytes


@dataclass
class Stats:
    """What a run did; ``to_dict()`` is the ``--stats`` JSON."""

    input: str
    output: str
    model: str = ""
    worker: str = ""
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    startup_seconds: Optional[float] = None  # until the first restored frame was written
    fps_steady: Optional[float] = None       # frames after the first / time after the first
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0                # this process
    peak_frames_held: int = 0               # most frames decoded and not yet written at once
    workers_peak_rss_mb: float = 0.0        # largest worker process (CPU pool)
    latency_ms_p50: Optional[float] = None  # decode of a frame -> its restored frame encoded
    latency_ms_p95: Optional[float] = None
    worker_restarts: int = 0
    attention_fallbacks: int = 0            # window-heads where Nyström broke down and exact ran
    prefilter: Optional[str] = None         # whole-frame step before the model, if any
    frames_deconvolved: int = 0             # frames where it found a motion blur and inverted it
    completed: bool = False
    kept_partial: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lat = f", latency p50 {self.latency_ms_p50:.0f} ms p95 {self.latency_ms_p95:.0f} ms" \
            if self.latency_ms_p50 is not None else ""
        fallbacks = (f", Nyström fell back to exact attention on {self.attention_fallbacks} window-heads"
                     if self.attention_fallbacks else "")
        if self.prefilter == "motion-wiener":
            fallbacks += f", motion blur found and deconvolved in {self.frames_deconvolved} frames"
        return (f"{self.frames_out}/{self.frames_in} frames in {self.seconds:.1f} s ({self.fps:.2f} fps{lat}), "
                f"peak RSS {self.peak_rss_mb:.0f} MB, {self.worker}{fallbacks}")


# -- running -------------------------------------------------------------------------------


class _Shared:
    """State the stages share: the stop flag, the first error, timings."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._lock = threading.Lock()
        self.seconds: Dict[str, float] = {"decode": 0.0, "cut": 0.0, "model": 0.0, "stitch": 0.0, "encode": 0.0}
        self.decoded_at: Dict[int, float] = {}
        self.frames_in = 0
        self.frames_out = 0      # written by the caller's thread
        self.peak_held = 0       # most frames decoded and not yet written (read racily: an upper bound)

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if self.error is None and not isinstance(err, Stopped):
                self.error = err
        self.stop.set()

    def put(self, q: "queue.Queue", item) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped()
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                pass


def _decode_stage(source, cutter: Cutter, work: "queue.Queue", shared: _Shared) -> None:
    try:
        frames = iter(source)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            shared.seconds["decode"] += t1 - t0
            if frame is None:
                break
            shared.decoded_at[frame.index] = time.monotonic()
            shared.frames_in += 1
            shared.peak_held = max(shared.peak_held, shared.frames_in - shared.frames_out)
            items = cutter.push(frame)
            shared.seconds["cut"] += time.perf_counter() - t1
            for item in items:
                shared.put(work, item)
        for item in cutter.finish():
            shared.put(work, item)
        shared.put(work, None)
    except BaseException as err:
        shared.fail(err)


def _model_stage(worker, work: "queue.Queue", results: "queue.Queue", shared: _Shared) -> None:
    try:
        worker.run(work, lambda result: shared.put(results, result), shared.stop)
        shared.put(results, None)
    except BaseException as err:
        shared.fail(err)


def run(input: str, output: str, **options) -> Stats:
    """Restore the video ``input`` into ``output``; see :class:`Options` for the options.

    Raises :class:`UsageError` (bad input/options), ``CheckpointError`` (bad model file),
    :class:`ProcessingError` or the first error of any stage; ``KeyboardInterrupt`` passes
    through after cleaning up. Nothing is left under ``output`` unless the run completed
    (or ``keep_partial`` kept the frames done).
    """
    opts = Options(**options)
    input, output = os.fspath(input), os.fspath(output)
    check_options(opts)
    stats = Stats(input=input, output=output)
    source = open_source(input, decoder=opts.decoder)
    streaming = False
    try:
        check_output_path(output, input_path=input)
        check_encoder(opts, output)
        model, stats.model = prepare_model(opts)
        info = describe_model(model)
        check_model_fits(info, opts, stats.model)
        windows = window_settings(info, opts.tile, opts.tile_overlap, opts.clip_len, opts.clip_overlap)
        windows = whole_frames_if_they_fit(windows, opts.tile, source.info.width, source.info.height)
        prefilter = make_prefilter(choose_prefilter(info, opts), device=opts.device)
        stats.prefilter = getattr(prefilter, "name", None)
        cutter = Cutter(windows.clip_len, windows.clip_overlap, windows.tile, windows.tile_overlap, info.scale,
                        prefilter=prefilter)
        worker = make_worker(model, info, opts)
        stats.worker = worker.description
        streaming = True
        _stream(source, cutter, worker, info, opts, stats, output)
    except BaseException as err:
        try:
            err.stats = stats  # type: ignore[attr-defined]  # for --stats after a failure
        except Exception:
            pass
        raise
    finally:
        if not streaming:
            source.close()   # _stream closes it itself
    return stats


def _stream(source, cutter: Cutter, worker, info: ModelInfo, opts: Options, stats: Stats, output: str) -> None:
    scale = info.scale
    out_w, out_h = source.info.width * scale, source.info.height * scale
    settings = EncoderSettings(codec=opts.codec, crf=opts.crf, preset=opts.preset)
    shared = _Shared()
    capacity = queue_items(opts.queue_size, cutter.windower.clip_len)
    work: "queue.Queue" = queue.Queue(maxsize=capacity)
    results: "queue.Queue" = queue.Queue(maxsize=capacity)
    latencies: List[float] = []
    started = time.monotonic()
    first_out: Optional[float] = None
    threads: List[threading.Thread] = []
    sink: Optional[VideoSink] = None
    completed = False
    try:
        worker.start()   # worker processes load the model while the sink opens and frames decode
        sink = VideoSink(output, source.info, out_w * (2 if opts.compare else 1), out_h, settings,
                         streams_from=source.path)
        threads = [
            threading.Thread(target=_decode_stage, args=(source, cutter, work, shared), name="decode", daemon=True),
            threading.Thread(target=_model_stage, args=(worker, work, results, shared), name="model", daemon=True),
        ]
        for thread in threads:
            thread.start()
        stitcher: Optional[Stitcher] = None
        total = source.info.frames
        while True:
            try:
                result = _get_result(results, shared, opts.cancel)
            except Stopped:
                break
            t0 = time.perf_counter()
            if result is None:
                pairs = stitcher.finish() if stitcher is not None else []
            else:
                if stitcher is None:
                    stitcher = Stitcher(cutter.layout)
                pairs = stitcher.add(result)
            t1 = time.perf_counter()
            shared.seconds["stitch"] += t1 - t0
            for original, restored in pairs:
                if opts.compare:
                    restored = _side_by_side(original, restored)
                sink.write(restored)
                done_at = time.monotonic()
                if first_out is None:
                    first_out = done_at
                latencies.append(done_at - shared.decoded_at.pop(original.index, done_at))
                stats.frames_out += 1
                shared.frames_out = stats.frames_out
                if opts.progress is not None:
                    opts.progress(stats.frames_out, total)
            shared.seconds["encode"] += time.perf_counter() - t1
            if result is None:
                break
        if shared.error is not None:
            raise shared.error
        worker.close()
        sink.close()
        completed = True
    except BaseException as err:
        shared.fail(err)
        raise shared.error if shared.error is not None and not isinstance(err, KeyboardInterrupt) else err
    finally:
        shared.stop.set()
        if not completed:
            worker.terminate()
            if sink is not None:
                stats.kept_partial = sink.abort(keep_partial=opts.keep_partial)
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        _finish_stats(stats, shared, worker, latencies, started, first_out, completed, cutter.prefilter)
        # Closing the container under a decode thread still inside FFmpeg could crash; such
        # a thread is a daemon and the caller is about to get an error anyway.
        if not (threads and threads[0].is_alive()):
            source.close()


def _get_result(results: "queue.Queue", shared: _Shared, cancel: Optional[threading.Event]):
    while True:
        if shared.stop.is_set():
            raise Stopped()
        if cancel is not None and cancel.is_set():
            # The caller's Ctrl-C, whose KeyboardInterrupt some library may have swallowed.
            raise KeyboardInterrupt()
        try:
            return results.get(timeout=0.05)
        except queue.Empty:
            pass


def _side_by_side(original: Frame, restored: Frame) -> Frame:
    """Input resized to the output's size on the left, the result on the right."""
    h, w = restored.image.shape[:2]
    left = original.image
    if left.shape[:2] != (h, w):
        x = torch.from_numpy(left).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        left = x[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    image = np.concatenate([left, restored.image], axis=1)
    return Frame(index=restored.index, pts=restored.pts, time_base=restored.time_base, image=image)


def _finish_stats(stats: Stats, shared: _Shared, worker, latencies: List[float], started: float,
                  first_out: Optional[float], completed: bool, prefilter=None) -> None:
    ended = time.monotonic()
    stats.completed = completed
    stats.frames_in = shared.frames_in
    stats.seconds = ended - started
    stats.fps = stats.frames_out / stats.seconds if stats.seconds > 0 else 0.0
    if first_out is not None:
        stats.startup_seconds = first_out - started
        if stats.frames_out > 1 and ended > first_out:
            stats.fps_steady = (stats.frames_out - 1) / (ended - first_out)
    shared.seconds["model"] = worker.busy_seconds
    stats.stage_seconds = {k: round(v, 4) for k, v in shared.seconds.items()}
    stats.peak_rss_mb = peak_rss_bytes() / 2**20
    stats.peak_frames_held = shared.peak_held
    stats.workers_peak_rss_mb = getattr(worker, "peak_rss_bytes", 0) / 2**20
    stats.worker_restarts = worker.restarts
    stats.attention_fallbacks = getattr(worker, "attention_fallbacks", 0)
    stats.frames_deconvolved = getattr(prefilter, "deconvolved", 0)
    if latencies:
        ms = np.asarray(latencies) * 1000
        stats.latency_ms_p50 = float(np.percentile(ms, 50))
        stats.latency_ms_p95 = float(np.percentile(ms, 95))
