"""``streamer.run``: source -> cutter -> worker(s) -> stitcher -> sink, joined by bounded queues.

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
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from pipelines import zoo
from pipelines.deconvolution import PREFILTERS, make_prefilter
from pipelines.restorer import describe_model
from pipelines.models.base import ModelInfo

from .errors import UsageError
from .frames import Frame
from .encoding import EncoderSettings, encoder_options, video_encoder
from .sinks import VideoSink, check_output_path
from .sources import open_source
from .windows import Cutter, Stitcher, check_window_options, queue_items, whole_frames_if_they_fit, window_settings
from .pool import CpuPool
from .workers import DeviceWorker, Stopped, cpu_cores, peak_rss_bytes

# From benchmarks/pipeline.py and the CLI on the 2-core target machine (2026-11-25, quiet,
# bundled denoiser, 640x360): 2 worker processes x 1 thread ran 3.88 fps steady against 3.51
# in this process (2 threads) and 3.46 for 1 process x 2 threads; through the CLI on 240
# frames 3.69 vs 3.33 fps, twice. A one-thread process has no OpenMP team to wake at each of
# the thousands of parallel regions of a forward pass, and decode/encode get their own share
# of time. The price: ~1.5 s more start-up and a model per process. (Earlier runs, under load
# and before the allocator setting, had this process ahead: benchmarks/RESULTS.md.) One core:
# in this process. Larger machines get 2 workers x cores/2 threads: not measured there.
DEFAULT_WORKERS = 2 if cpu_cores() >= 2 else 0
ATTENTION_MODES = ("exact", "nystrom", "auto")
VIDEO_TASKS = ("vsr", "video-deblur", "video-denoise")
SCALE_FOR_TASK = {"sr2": 2, "sr3": 3, "sr4": 4, "sr8": 8, "vsr": 4}

Progress = Callable[[int, Optional[int]], None]


@dataclass
class Options:
    """Everything ``run`` accepts besides input and output (the CLI's flags, by name)."""

    task: Optional[str] = None              # denoise | deblur | sr2 | sr4 | vsr | video-deblur | video-denoise
    model: Union[str, os.PathLike, nn.Module, None] = None   # preset name, checkpoint path or a module
    attention: Optional[str] = None         # None: the preset's (nystrom), or leave a module as it is
    landmarks: Optional[int] = None
    iters: Optional[int] = None
    window: Optional[int] = None
    device: str = "cpu"
    workers: Optional[int] = None           # CPU: worker processes (0 = in this process; default 0)
    threads_per_worker: Optional[int] = None
    tile: Optional[int] = None              # 0 = whole frames; None: 512, video models 128 (x4) / 256
    tile_overlap: Optional[int] = None      # None: 32, video models 20
    clip_len: Optional[int] = None          # None: the model's (1 for per-frame models)
    clip_overlap: Optional[int] = None      # None: 0, or clip_len // 4 for video models
    sigma: Optional[float] = None           # noise level (0-255) for non-blind video denoisers
    prefilter: Optional[str] = None         # None: the model's (info.prefilter); "none" or a name
    fp16: bool = False
    codec: Optional[str] = None             # None: libx264 (libvpx-vp9 for .webm)
    crf: Optional[int] = None
    preset: Optional[str] = None
    compare: bool = False                   # side-by-side: input (resized) | result
    keep_partial: bool = False
    decoder: str = "pyav"
    progress: Optional[Progress] = None     # called with (frames written, total or None)
    queue_size: int = 8
    cancel: Optional[threading.Event] = None  # set: stop as on Ctrl-C (KeyboardInterrupt)


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


# -- preparing -----------------------------------------------------------------------------


def check_options(opts: Options) -> None:
    """The checks that need neither the input nor the model."""
    if opts.task is not None and opts.task not in zoo.TASKS:
        raise UsageError(f"unknown task {opts.task!r} (choose from {', '.join(zoo.TASKS)})")
    if opts.task is None and opts.model is None:
        raise UsageError(f"give a task ({', '.join(zoo.TASKS)}) or a model")
    if opts.attention is not None and opts.attention not in ATTENTION_MODES:
        raise UsageError(f"unknown attention {opts.attention!r} (choose from {', '.join(ATTENTION_MODES)})")
    for name in ("landmarks", "iters", "window"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if opts.workers is not None and opts.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {opts.workers}")
    if opts.threads_per_worker is not None and opts.threads_per_worker < 1:
        raise UsageError(f"--threads-per-worker must be >= 1, got {opts.threads_per_worker}")
    overlap = opts.clip_overlap or 0
    # What the user left out depends on the model (video or not): checked again once it is known.
    tile = opts.tile if opts.tile is not None else 0
    check_window_options(tile, opts.tile_overlap if opts.tile_overlap is not None else 0,
                         opts.clip_len or overlap + 1, overlap)
    if opts.sigma is not None and not 0 <= opts.sigma <= 255:
        raise UsageError(f"--sigma is a noise level on the 0-255 scale, got {opts.sigma:g}")
    if opts.task == "video-denoise" and opts.sigma is None:
        raise UsageError("--task video-denoise needs --sigma S, the noise level on the 0-255 scale (e.g. 25)")
    if opts.sigma is not None and opts.task is not None and opts.task != "video-denoise":
        raise UsageError(f"--sigma is for --task video-denoise, not {opts.task}")
    try:
        device = torch.device(opts.device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {opts.device!r} (cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {opts.device!r} (cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here (use --device cpu)")
    if opts.fp16 and device.type != "cuda":
        raise UsageError("--fp16 needs --device cuda (half precision is slower than float32 on a CPU)")
    if device.type == "cuda" and (opts.workers or opts.threads_per_worker):
        raise UsageError("--workers and --threads-per-worker are for --device cpu (one GPU worker runs the model)")
    if opts.prefilter is not None and opts.prefilter not in ("none",) + PREFILTERS:
        raise UsageError(f"unknown prefilter {opts.prefilter!r} (choose from none, {', '.join(PREFILTERS)})")
    if isinstance(opts.model, nn.Module) and opts.window is not None:
        raise UsageError("window= applies to checkpoints and presets, not to a model object")


def check_encoder(opts: Options, output: str) -> None:
    """Codec, crf and preset, checked before the model loads (the sink checks the rest)."""
    settings = EncoderSettings(codec=opts.codec, crf=opts.crf, preset=opts.preset).for_output(output)
    video_encoder(settings.codec)
    encoder_options(settings)


def prepare_model(opts: Options) -> Tuple[nn.Module, str]:
    """The model to run and a name for it (raises CheckpointError for bad checkpoints)."""
    from pipelines.attention import patch_attention
    from pipelines.loading import load_model

    if isinstance(opts.model, nn.Module):
        model = opts.model.eval()
        if opts.attention is not None:
            patch_attention(model, opts.attention, landmarks=opts.landmarks or 16, iters=opts.iters or 2)
        return model, type(model).__name__
    target = zoo.resolve(opts.model) if opts.model is not None else zoo.default_preset(opts.task)
    if isinstance(target, zoo.Preset):
        check_preset_fits(target, opts)
        model = zoo.load_preset(target.name, attention=opts.attention, landmarks=opts.landmarks,
                                iters=opts.iters, window=opts.window)
        return model, target.name
    model = load_model(target, attention=opts.attention or "nystrom", landmarks=opts.landmarks or 16,
                       iters=opts.iters or 2, window=opts.window)
    return model, os.path.basename(str(target))


def check_preset_fits(preset: "zoo.Preset", opts: Options) -> None:
    """What a preset says about itself, checked before its checkpoint is downloaded or loaded."""
    if opts.task is not None and preset.task != opts.task:
        raise UsageError(f"model {preset.name} restores {preset.task}, not {opts.task}")
    if preset.task == "video-denoise" and opts.sigma is None:
        raise UsageError(f"{preset.name} is a non-blind denoiser: give the noise level with --sigma S "
                         "(0-255 scale, e.g. 25)")


def check_model_fits(info: ModelInfo, opts: Options, name: str = "this model") -> None:
    task = opts.task
    expected = SCALE_FOR_TASK.get(task or "", 1 if task else None)
    if expected is not None and info.scale != expected:
        raise UsageError(f"--task {task} needs a x{expected} model, this one scales x{info.scale}")
    if task in VIDEO_TASKS and info.clip_len is None:
        raise UsageError(f"--task {task} needs a video model (e.g. RVRT); {name} restores single frames")
    if task is not None and info.task in VIDEO_TASKS and info.task != task:
        raise UsageError(f"{name} is a {info.task} model, not one for --task {task}")
    if info.needs_sigma and opts.sigma is None:
        raise UsageError(f"{name} is a non-blind denoiser: give the noise level with --sigma S "
                         "(0-255 scale, e.g. 25)")
    if opts.sigma is not None and not info.needs_sigma:
        raise UsageError(f"--sigma is for models that take a noise level (video-denoise); {name} does not")


def choose_prefilter(info: ModelInfo, opts: Options) -> Optional[str]:
    """The whole-frame step to run before the model: the one it was trained behind, unless
    the user named another (``--prefilter``) or turned it off (``none``)."""
    if opts.prefilter is None:
        return info.prefilter
    if opts.prefilter != "none" and info.clip_len is not None:
        raise UsageError(f"--prefilter {opts.prefilter} is for per-frame models, not video models")
    return None if opts.prefilter == "none" else opts.prefilter


def make_worker(model: nn.Module, info: ModelInfo, opts: Options):
    if torch.device(opts.device).type == "cuda":
        return DeviceWorker(model, device=opts.device, fp16=opts.fp16, sigma=opts.sigma)
    workers = DEFAULT_WORKERS if opts.workers is None else opts.workers
    if workers == 0:
        return DeviceWorker(model, device="cpu", threads=opts.threads_per_worker, sigma=opts.sigma)
    return CpuPool(model, workers, threads_per_worker=opts.threads_per_worker, scale=info.scale, sigma=opts.sigma)


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
