"""``streamer.run``: source -> cutter -> worker(s) -> stitcher -> sink, joined by bounded queues.

(What comes before the first frame, the options, their checks, the model and the worker, is
:mod:`streamer.options`; the stage threads are :mod:`streamer.stages`, the record of a run
:mod:`streamer.stats`.) A :class:`Run` owns everything one run opens: the source, the model's
worker, the sink, the stage threads and the timers; ``streamer.run`` is ``Run(...).execute()``.

Threads (all daemon, so a stuck stage can never keep the process alive):

- ``decode`` (:class:`DecodeStage`): reads frames from the source and cuts them into work
  items (``work`` queue);
- ``model`` (:class:`ModelStage`): a :class:`~streamer.workers.Worker` turns work items into
  results, in index order (``results`` queue);
- the caller's thread stitches results into frames and encodes them (and watches the others).

Every queue is bounded, so a slow stage slows the ones before it and memory stays flat
however long the video. Video models (``info.clip_len`` set) get clips of ``clip_len`` frames
overlapping by ``clip_overlap``, each cut into spatial tiles (3-D tiles, like the official RVRT
test's ``--tile T H W``); their queues hold a couple of items rather than ``queue_size`` (see
:func:`~streamer.windows.queue_items`), so what is in flight stays a few clips
(``Stats.peak_frames_held`` records it).

The first error in any stage sets a stop flag every loop checks (at least every 50 ms,
:mod:`streamer.flow`); the caller's thread then tears everything down (worker processes
terminated, sink aborted: nothing left under the output name, or with ``keep_partial`` a
playable file of the frames written) and re-raises that first error. Ctrl-C arrives in the
caller's thread as ``KeyboardInterrupt`` and takes the same path. Either way ``Run.stats``
says what was done.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import asdict
from collections import deque
from typing import Deque, Dict, List, Optional, Tuple

import numpy as np
import torch

from pipelines.deconvolution import make_prefilter
from pipelines.pixels import round_pixels
from pipelines.restorer import describe_model

from .audit import JOIN_S, Auditor, reference_model
from .dial import Dial, start_dial
from .encoding import EncoderSettings
from .errors import UsageError
from .flow import DemandQueue, Stopped, get
from .frames import Frame
from .options import (DEFAULT_MAX_LATENCY_MS, Options, check_encoder, check_model_fits, check_options, choose_prefilter, make_worker,
                      options_from_mapping, prepare_model, resolve_precision)
from .process_env import peak_rss_bytes
from .ranges import FrameIndex, FrameRange
from .serve import FrameBoard, check_serve, open_view
from .sinks import NoOutput, VideoSink, check_output_path
from .stages import DecodeStage, ModelStage, RunState
from .stats import Stats
from .live.clocked import ClockedWriter, FrameSink
from .live.inputs import open_input
from .live.source import LiveSource
from .sources import PyAVSource, VideoSource
from .windows import Cutter, Stitcher, queue_items, whole_frames_if_they_fit, window_settings
from .workers import Worker

log = logging.getLogger(__name__)

LIVE_QUEUE_ITEMS = 1   # work items between stages for a live input (see Run.stream)
LIVE_FPS_WINDOW_S = 5.0     # live_stats: fps over this many seconds
LIVE_LATENCY_FRAMES = 300   # live_stats: latency percentiles over this many frames

def run(input: str, output: Optional[str], **options) -> Stats:
    """Restore the video ``input`` into ``output``; see :class:`Options` for the options.

    Raises :class:`UsageError` (bad input/options), ``CheckpointError`` (bad model file),
    :class:`ProcessingError` or the first error of any stage; ``KeyboardInterrupt`` passes
    through after cleaning up. Nothing is left under ``output`` unless the run completed
    (or ``keep_partial`` kept the frames done); ``output`` may be None with ``serve`` (frames
    are then only shown). For the stats of a failed run, use
    :class:`Run` (its ``stats`` are kept whatever happens).
    """
    return Run(input, output, options_from_mapping(options)).execute()


# -- the run -----------------------------------------------------------------------------------


class Run:
    """One run of ``input`` into ``output``: a context manager that owns what the run opens.

    :meth:`execute` (or, by hand, ``with run: run.prepare(); run.stream()``) checks
    everything that can be checked before the first frame (options, input, output, encoder,
    model), then streams. Leaving the ``with`` block tears down whatever is still open:
    threads stopped, workers terminated, an unfinished sink aborted, the source closed.
    :attr:`stats` holds what was done, whether the run completed or failed.
    """

    def __init__(self, input: str, output: Optional[str], options: Optional[Options] = None) -> None:
        self.input = os.fspath(input)
        self.output = os.fspath(output) if output is not None else None
        self.opts = options or Options()
        self.stats = Stats(input=self.input, output=self.output)
        self.state = RunState()
        self.source: Optional[VideoSource] = None
        self.worker: Optional[Worker] = None
        self.cutter: Optional[Cutter] = None
        self.sink: Optional[FrameSink] = None
        self.auditor: Optional[Auditor] = None
        self.board: Optional[FrameBoard] = None   # --serve: the latest frame, for viewers
        self.view = None                           # --serve: its started ViewServer
        self.dial: Optional[Dial] = None
        self.scale = 1
        self._threads: List[threading.Thread] = []
        self._latencies: List[float] = []
        self._write_range: Optional[Tuple[int, int]] = None   # frame range runs: what is written
        self._started: Optional[float] = None
        self._first_out: Optional[float] = None
        self._written_at: Deque[float] = deque(maxlen=1024)   # when recent frames were written (live fps)
        self._post_s = 0.0   # writer-thread time spent posting frames to the board (--serve's cost)
        self._budget: Optional[float] = None   # seconds from arrival to encoded (--max-latency)

    def execute(self) -> Stats:
        with self:
            self.prepare()
            self.stream()
        return self.stats

    # -- before the first frame ------------------------------------------------------------

    def prepare(self) -> None:
        opts = self.opts
        check_options(opts)
        self.source = open_input(self.input, opts)
        if opts.frame_range is not None and not isinstance(self.source, PyAVSource):
            raise UsageError("a frame range needs a file read with the pyav decoder")
        serve = check_serve(opts.serve, opts.serve_token)
        if self.output is not None:
            check_output_path(self.output, input_path=self.input)
            check_encoder(opts, self.output)
        elif serve is None:
            raise UsageError("no OUTPUT given (leave it out only with --serve, to watch without writing)")
        model, self.stats.model = prepare_model(opts)
        info = describe_model(model)
        check_model_fits(info, opts, self.stats.model)
        info_in = self.source.info
        windows = window_settings(info, opts.tile, opts.tile_overlap, opts.clip_len, opts.clip_overlap)
        windows = whole_frames_if_they_fit(windows, opts.tile, info_in.width, info_in.height)
        if info_in.live and windows.clip_len > 1:
            _check_clip_budget(windows.clip_len, info_in.average_rate, opts)
        if opts.frame_range is not None:
            self._restrict(opts.frame_range, windows.clip_len, windows.clip_overlap)
        prefilter = make_prefilter(choose_prefilter(info, opts), device=opts.device)
        self.stats.prefilter = getattr(prefilter, "name", None)
        self.cutter = Cutter(windows.clip_len, windows.clip_overlap, windows.tile, windows.tile_overlap,
                             info.scale, prefilter=prefilter)
        self.scale = info.scale
        precision, choice = resolve_precision(model, opts)
        self.stats.precision = precision
        if choice is not None:
            self.stats.precision_auto = {m: asdict(v) for m, v in choice.measurements.items()}
        if opts.target_fps is not None:
            self.dial = start_dial(model, info, opts, precision, info_in.height, info_in.width, windows.tile,
                                   windows.tile_overlap, self.stats.model)
        self.worker = make_worker(self.dial.model if self.dial is not None else model, info, opts, precision,
                                  live=info_in.live)
        if opts.audit:
            self.auditor = Auditor(reference_model(opts.model, opts.task, model), opts.audit, info.scale,
                                   sigma=opts.sigma, prefilter=prefilter)
        self.stats.worker = self.worker.description
        if serve is not None:   # last: a port that cannot be bound fails before any frame
            self.board = FrameBoard()
            self.view = open_view(serve, self.board, self.live_stats, opts.serve_token)

    def _restrict(self, frames: FrameRange, clip_len: int, clip_overlap: int) -> None:
        """Decode only what frames ``[start, end)`` need, and write only those.

        A per-frame model needs just them. A video model's clips lie on a grid from frame 0
        (:mod:`pipelines.clips`: starts 0, s, 2s, ... with s = clip_len - overlap) and blend where
        they overlap, so to compute each frame from the same clips and weights as one pass does,
        decoding starts on that grid at least ``overlap`` frames before ``start`` and goes on a
        whole clip past ``end`` (the run's own last clip, aligned to where it stops, then touches
        only frames it does not write). Restored frames outside the range are discarded."""
        index = FrameIndex.scan(self.input)
        if frames.end > len(index):
            raise UsageError(f"frame range [{frames.start}, {frames.end}) is past the end of {self.input} "
                             f"({len(index)} frames)")
        first, last = frames.start, frames.end
        if clip_len > 1:
            stride = clip_len - clip_overlap
            first = max(0, (frames.start - clip_overlap) // stride * stride)
            last = min(len(index), frames.end + clip_len)
        self._write_range = (frames.start - first, frames.end - first)   # in the run's own frame numbers
        self.source.restrict(index.pts[first], index.pts[last] if last < len(index) else None)

    # -- streaming ---------------------------------------------------------------------------

    def stream(self) -> None:
        """Frames through every stage; returns once the sink is finalised."""
        assert self.source is not None and self.worker is not None and self.cutter is not None, "prepare() first"
        opts, state, source = self.opts, self.state, self.source
        # A live input gets shallow queues: what waits in them is latency, and a stop (Ctrl-C)
        # finishes what is in flight; LiveSource's own handoff holds 2 more frames.
        depth = min(opts.queue_size, LIVE_QUEUE_ITEMS) if source.info.live else opts.queue_size
        capacity = queue_items(depth, self.cutter.windower.clip_len)
        self._budget = self._budget_s()
        work: "queue.Queue" = DemandQueue(capacity) if self._budget is not None and source.info.live \
            else queue.Queue(maxsize=capacity)
        results: "queue.Queue" = queue.Queue(maxsize=capacity)
        self._started = time.monotonic()
        self.worker.start()   # worker processes load the model while the sink opens and frames decode
        width, height = source.info.width * self.scale, source.info.height * self.scale
        settings = EncoderSettings(codec=opts.codec, crf=opts.crf, preset=opts.preset, pix_fmt=opts.pix_fmt,
                                   no_reordering=opts.frame_range is not None)   # (pieces that join)
        if self.output is None:
            self.sink = NoOutput()
        else:
            sink = VideoSink(self.output, source.info, width * (2 if opts.compare else 1), height, settings,
                             streams_from=source.streams_from if opts.copy_streams else None,
                             live=source.info.live or opts.live_output,
                             live_audio=source.audio() if isinstance(source, LiveSource) and opts.copy_streams
                             else None)
            # A network output keeps its clock while no frame comes (repeats, then "no signal").
            self.sink = ClockedWriter(sink, source.info.average_rate, opts.stub_after) \
                if sink.spec.always_on else sink
        self._threads = [
            threading.Thread(target=DecodeStage(source, self.cutter, work, state, self._budget, opts.frames,
                                                opts.duration), name="decode", daemon=True),
            threading.Thread(target=ModelStage(self.worker, work, results, state), name="model", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self._write(results)
        except Stopped:
            pass
        if state.error is not None:
            raise state.error
        self.worker.close()
        self.sink.close(video_only_end=opts.frames is not None or opts.duration is not None)
        self.stats.completed = True

    def _write(self, results: "queue.Queue") -> None:
        """Stitch results into frames and encode them, until the end of the stream."""
        opts, state, sink = self.opts, self.state, self.sink
        stitcher: Optional[Stitcher] = None
        total = self.source.info.frames
        while True:
            result = get(results, state.stop, interrupt=opts.cancel)
            t0 = time.perf_counter()
            if result is None:
                pairs = stitcher.finish() if stitcher is not None else []
            else:
                if stitcher is None:
                    stitcher = Stitcher(self.cutter.layout)
                pairs = stitcher.add(result)
            t1 = time.perf_counter()
            state.seconds["stitch"] += t1 - t0
            for original, restored in pairs:
                if self._write_range is not None and not \
                        self._write_range[0] <= original.index < self._write_range[1]:
                    state.decoded_at.pop(original.index, None)
                    state.cut_at.pop(original.index, None)
                    continue   # context for a frame range's clips: restored, not written
                if self.auditor is not None:
                    self.auditor.offer(original, restored.image)
                if self.board is not None:
                    posted = time.perf_counter()
                    self.board.post(original.index, original.image, restored.image)
                    self._post_s += time.perf_counter() - posted
                if opts.compare:
                    restored = _side_by_side(original, restored)
                sink.write(restored)
                done_at = time.monotonic()
                self._written_at.append(done_at)
                if self._first_out is None:
                    self._first_out = done_at
                if self.dial is not None:
                    self.dial.frame_done(self.stats.frames_out, done_at, self.worker.counters.busy_seconds, self.worker,
                                         self.source.info.live)
                latency = done_at - state.decoded_at.pop(original.index, done_at)
                self._latencies.append(latency)
                if self._budget is not None and latency > self._budget:
                    self.stats.frames_late += 1
                state.services.append(done_at - state.cut_at.pop(original.index, done_at))
                state.service_s = max(state.services)
                self.stats.frames_out += 1
                state.frames_out = self.stats.frames_out
                if opts.progress is not None:
                    opts.progress(self.stats.frames_out, total)
            state.seconds["encode"] += time.perf_counter() - t1
            if result is None:
                return

    def live_stats(self) -> dict:
        """The run's figures so far (for ``--serve``'s panel, ``/stats`` and ``/metrics``; any
        thread): counts since the start, fps over the last few seconds, latency over the last
        frames. Read without locks: each figure is consistent, their sum may be a frame apart."""
        state, source, now = self.state, self.source, time.monotonic()
        started = self._started if self._started is not None else now
        window = min(LIVE_FPS_WINDOW_S, now - started)
        recent = sum(1 for t in list(self._written_at) if t >= now - window)
        latencies = self._latencies[-LIVE_LATENCY_FRAMES:]
        stats = {"input": self.input, "output": self.output, "model": self.stats.model,
                 "worker": self.stats.worker, "precision": self.stats.precision,
                 "live": bool(source is not None and source.info.live),
                 "frames_total": source.info.frames if source is not None else None,
                 "frames_in": state.frames_in + (source.frames_dropped if source is not None else 0),
                 "frames_out": self.stats.frames_out, "elapsed_s": now - started,
                 "fps": recent / window if window > 0.5 else None,
                 "reconnects": source.reconnects if source is not None else 0,
                 "stalls": source.stalls if source is not None else 0,
                 "decode_errors": source.decode_errors if source is not None else 0,
                 "completed": self.stats.completed}
        stats["drop_reasons"] = self._drop_reasons()
        stats["frames_dropped"] = sum(stats["drop_reasons"].values())
        for name, q in (("latency_ms_p50", 50), ("latency_ms_p95", 95), ("latency_ms_p99", 99)):
            stats[name] = float(np.percentile(latencies, q)) * 1000 if latencies else None
        return stats

    def _drop_reasons(self) -> Dict[str, int]:
        reasons = dict(self.state.drops)
        if self.source is not None and self.source.frames_dropped:
            reasons["behind"] = self.source.frames_dropped
        return reasons

    def _budget_s(self) -> Optional[float]:
        """The latency budget in seconds: ``max_latency``, by default 1 s for live inputs."""
        if not self.source.info.live:
            return self.opts.max_latency / 1000 if self.opts.max_latency else None
        if self.source.drop == "none":
            if self.opts.drop == "none":
                log.warning("--drop none: a live frame waits for the model, so latency grows when it is behind")
            return None
        return (self.opts.max_latency or DEFAULT_MAX_LATENCY_MS) / 1000

    def finish_input(self) -> bool:
        """End a live input as if it had ended (the normal stop of a live run, from Ctrl-C or
        SIGTERM): the frames in flight are restored and the output is finalised. False, doing
        nothing, for an input that cannot be closed from another thread (files)."""
        source = self.source
        if source is None or not source.info.live or not source.closes_from_any_thread:
            return False
        source.close()
        return True

    # -- tearing down ------------------------------------------------------------------------

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        state = self.state
        if exc is not None:
            state.fail(exc)
        state.stop.set()
        if not self.stats.completed:
            if self.worker is not None:
                self.worker.terminate()
            if self.sink is not None:
                self.stats.kept_partial = self.sink.abort(keep_partial=self.opts.keep_partial)
        deadline = time.monotonic() + 1.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._started is not None:
            self._finish_stats()
        if self.view is not None:
            self.view.stop()
            self.stats.serve = dict(self.view.report(), post_seconds=round(self._post_s, 4))
        # Closing the container under a decode thread still inside FFmpeg could crash; such
        # a thread is a daemon and the caller is about to get an error anyway.
        if self.source is not None and (self.source.closes_from_any_thread
                                        or not (self._threads and self._threads[0].is_alive())):
            self.source.close()
        if exc is not None and state.error is not None and state.error is not exc \
                and not isinstance(exc, KeyboardInterrupt):
            raise state.error   # the first error of any stage, not what it caused here
        return False

    def _finish_stats(self) -> None:
        stats, state = self.stats, self.state
        ended = time.monotonic()
        stats.live = self.source.info.live
        stats.drop_reasons = self._drop_reasons()
        stats.frames_dropped = sum(stats.drop_reasons.values())
        stats.frames_in = state.frames_in + self.source.frames_dropped
        stats.seconds = ended - self._started
        stats.fps = stats.frames_out / stats.seconds if stats.seconds > 0 else 0.0
        if self._first_out is not None:
            stats.startup_seconds = self._first_out - self._started
            if stats.frames_out > 1 and ended > self._first_out:
                stats.fps_steady = (stats.frames_out - 1) / (ended - self._first_out)
        counters = self.worker.counters
        state.seconds["model"] = counters.busy_seconds
        stats.stage_seconds = {k: round(v, 4) for k, v in state.seconds.items()}
        stats.peak_rss_mb = peak_rss_bytes() / 2**20
        stats.peak_frames_held = state.peak_held
        stats.workers_peak_rss_mb = counters.peak_rss_bytes / 2**20
        stats.worker_restarts = counters.restarts
        stats.attention_fallbacks = counters.attention_fallbacks
        stats.frames_deconvolved = getattr(self.cutter.prefilter, "deconvolved", 0)
        stats.decode_errors, stats.frames_damaged = self.source.decode_errors, self.source.frames_damaged
        if self.dial is not None:
            stats.dial = asdict(self.dial.report)
        if self.auditor is not None:
            stats.audit = asdict(self.auditor.finish(timeout=JOIN_S if stats.completed else 0.5))
        stats.reconnects, stats.stalls = self.source.reconnects, self.source.stalls
        if isinstance(self.sink, ClockedWriter):
            stats.frames_repeated, stats.frames_no_signal = self.sink.frames_repeated, self.sink.frames_stub
        if self._latencies:
            ms = np.asarray(self._latencies) * 1000
            stats.latency_ms_p50 = float(np.percentile(ms, 50))
            stats.latency_ms_p95 = float(np.percentile(ms, 95))
            stats.latency_ms_p99 = float(np.percentile(ms, 99))


def _check_clip_budget(clip_len: int, rate, opts: Options) -> None:
    """A video model holds back a whole clip before it restores any of it: that is latency the
    budget must allow for. Said at start; a smaller ``--max-latency`` is refused, naming the least."""
    fps = float(rate) if rate else 30.0
    need_ms = 1000.0 * clip_len / fps
    log.warning("a video model restores clips of %d frames: every frame waits for its clip, at least %.0f ms "
                "of latency at %.4g fps", clip_len, need_ms, fps)
    budget = opts.max_latency if opts.max_latency is not None else DEFAULT_MAX_LATENCY_MS
    if budget < need_ms:
        raise UsageError(f"--max-latency {budget:g} is below what a clip of {clip_len} frames needs at {fps:.4g} fps: "
                         f"give at least {need_ms:.0f} ms (or a shorter --clip-len)")


def _side_by_side(original: Frame, restored: Frame) -> Frame:
    """Input resized to the output's size on the left, the result on the right."""
    h, w = restored.image.shape[:2]
    left = original.image
    if left.shape[:2] != (h, w):
        x = torch.from_numpy(left).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
        left = round_pixels(x[0].permute(1, 2, 0).numpy(), left.dtype)   # uint8, or uint16 (deep input)
    image = np.concatenate([left, restored.image], axis=1)
    return Frame(index=restored.index, pts=restored.pts, time_base=restored.time_base, image=image)
