"""What a run is asked to do: :class:`Options`, the one description of every run option.

Each field of :class:`Options` carries its command-line spelling, help text, choices and
lower bound (:class:`Flag`, in the field's metadata). The CLI's flags (:mod:`streamer.cli`),
``streamer.run(**options)`` (:func:`options_from_mapping`) and the checks below are all
generated from those fields, so an option is added in one place.

Everything else here happens before a frame is decoded: the option checks that need neither
input nor model, the checks once the model is known (task, scale, noise level), loading the
model, and choosing the worker that will run it. :mod:`streamer.pipeline` then streams the frames.
"""
from __future__ import annotations

import difflib
import os
import threading
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pipelines import zoo
from pipelines.attention import MODES, RUN_DEFAULT, patch_attention
from pipelines.deconvolution import PREFILTERS
from pipelines.loading import load_model
from pipelines.precision import PRECISIONS, QUALITY_BOUND_DB, Choice, PrecisionError, check_precision
from pipelines.precision_auto import choose_precision
from pipelines.models.base import ModelInfo, NoiseLevelError, check_noise_level

from .encoding import EncoderSettings, check_pix_fmt, encoder_options, video_encoder
from .live.clocked import DEFAULT_STUB_AFTER
from .live.specs import DEFAULT_STALL_TIMEOUT, RTSP_TRANSPORTS
from .errors import UsageError
from .pool import CpuPool
from .process_env import cpu_cores
from .live.source import DROP_POLICIES
from .ranges import FrameRange
from .serve.address import check_serve
from .sources import DECODERS, DEFAULT_MAX_DECODE_ERRORS
from .windows import (DEFAULT_TILE, DEFAULT_TILE_OVERLAP, DEFAULT_VIDEO_TILE, DEFAULT_VIDEO_TILE_OTHER,
                      DEFAULT_VIDEO_TILE_OVERLAP, check_window_options)
from .workers import DeviceWorker, Worker

# From benchmarks/pipeline.py and the CLI on the 2-core target machine (2026-11-25, quiet,
# bundled denoiser, 640x360): 2 worker processes x 1 thread ran 3.88 fps steady against 3.51
# in this process (2 threads) and 3.46 for 1 process x 2 threads; through the CLI on 240
# frames 3.69 vs 3.33 fps, twice. A one-thread process has no OpenMP team to wake at each of
# the thousands of parallel regions of a forward pass, and decode/encode get their own share
# of time. The price: ~1.5 s more start-up and a model per process. (Earlier runs, under load
# and before the allocator setting, had this process ahead: benchmarks/RESULTS.md.) One core:
# in this process. Larger machines get 2 workers x cores/2 threads: not measured there.
DEFAULT_WORKERS = 2 if cpu_cores() >= 2 else 0
DEFAULT_MAX_LATENCY_MS = 1000.0   # live inputs: arrival -> encoded
VIDEO_TASKS = ("vsr", "video-deblur", "video-denoise")
SCALE_FOR_TASK = {"sr2": 2, "sr3": 3, "sr4": 4, "sr8": 8, "vsr": 4}

Progress = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class Spelling:
    """One command-line flag for an option (most have one; ``model`` has ``--model`` and ``--weights``)."""

    flag: str
    metavar: Optional[str] = None
    help: str = ""


@dataclass(frozen=True)
class Flag:
    """How an option is offered to users: its group in ``--help``, help text, choices (a
    function: some come from the preset files) and lower bound. ``spellings`` overrides the
    one flag ``--field-name``; with more than one they are mutually exclusive."""

    group: str
    help: str = ""
    metavar: Optional[str] = None
    choices: Optional[Callable[[], Sequence[str]]] = None
    minimum: Optional[float] = None
    spellings: Tuple[Spelling, ...] = ()
    in_job_files: bool = True   # False: one interactive run's option (--serve), not a batch job's

    def flags(self, name: str) -> Tuple[Spelling, ...]:
        return self.spellings or (Spelling("--" + name.replace("_", "-"), self.metavar, self.help),)


def _option(default: Any, group: str, help: str = "", **flag: Any) -> Any:
    return field(default=default, metadata={"flag": Flag(group, help, **flag)})


def _tasks() -> Sequence[str]:
    return zoo.TASKS


_VIDEO_TILE = DEFAULT_VIDEO_TILE[4]


@dataclass
class Options:
    """Everything ``run`` accepts besides input and output (the CLI's flags, by name)."""

    # -- model -----------------------------------------------------------------------------
    task: Optional[str] = _option(
        None, "model", "what to restore; picks the default model for it (video tasks: RVRT, downloaded "
        "on first use, non-commercial licence)", choices=_tasks)
    model: Union[str, os.PathLike, nn.Module, None] = _option(   # preset name, checkpoint path or a module
        None, "model", spellings=(Spelling("--model", "NAME", "a model preset (see `nystra-stream models`)"),
                                  Spelling("--weights", "PATH", "a checkpoint file (.pth, .safetensors)")))
    attention: Optional[str] = _option(   # None: the preset's (nystrom), or leave a module as it is
        None, "model", f"window-attention kernel (default: {RUN_DEFAULT.mode}, or the preset's own setting)",
        choices=lambda: MODES)
    landmarks: Optional[int] = _option(
        None, "model", f"Nystrom landmarks per window (default {RUN_DEFAULT.landmarks})", metavar="M", minimum=1)
    iters: Optional[int] = _option(
        None, "model", f"pseudo-inverse iterations (default {RUN_DEFAULT.iters})", metavar="T", minimum=1)
    window: Optional[int] = _option(
        None, "model", "run the model at this attention window size", metavar="W", minimum=1)
    sigma: Optional[float] = _option(   # noise level (0-255) for non-blind video denoisers
        None, "model", "noise level on the 0-255 scale for --task video-denoise (required there), e.g. 25",
        metavar="S")
    prefilter: Optional[str] = _option(   # None: the model's (info.prefilter); "none" or a name
        None, "model", "whole-frame step before the model (default: the preset's; --task deblur finds a "
        "frame's motion blur and inverts it, motion-wiener); none turns it off",
        choices=lambda: ("none",) + PREFILTERS)
    # -- execution -------------------------------------------------------------------------
    device: str = _option("cpu", "execution", "cpu or cuda (default: cpu)")
    workers: Optional[int] = _option(   # CPU: worker processes (0 = in this process)
        None, "execution", f"CPU worker processes; 0 runs the model in this process (default here "
        f"{DEFAULT_WORKERS}: 2 with 2 or more cores, measured fastest on 2 cores)", metavar="N", minimum=0)
    threads_per_worker: Optional[int] = _option(
        None, "execution", "torch threads per worker (default: cores // workers, all cores for 0)",
        metavar="N", minimum=1)
    worker_timeout: Optional[float] = _option(
        None, "execution", "seconds one work item may take in a CPU worker process before the worker counts "
        "as hung: it is killed and replaced, the item retried (default: 10x the slowest item so far, at least "
        "60)", metavar="S", minimum=1)
    precision: str = _option(
        "auto", "execution", "arithmetic: fp32, bf16 (autocast), fp16 (CUDA), int8 (dynamically quantised Linear "
        f"layers, CPU) or auto: the fastest measured here within {QUALITY_BOUND_DB:g} dB PSNR of fp32 on "
        "calibration frames, cached (default auto)", choices=lambda: PRECISIONS)
    fp16: bool = _option(False, "execution", "the same as --precision fp16 (CUDA only)")
    target_fps: Optional[float] = _option(
        None, "execution", "the latency/quality dial: choose the attention settings, window and resolution that "
        "reach F frames a second here with the least PSNR lost (a quality table of the model and a calibration "
        "of a few seconds at start); a live run follows its measured speed (stats: dial)", metavar="F",
        minimum=0.01)
    tile: Optional[int] = _option(   # 0 = whole frames; None: 512, video models 128 (x4) / 256
        None, "execution", f"tile size in input pixels, 0 = whole frames (default {DEFAULT_TILE}; video models "
        f"{_VIDEO_TILE} for x4, {DEFAULT_VIDEO_TILE_OTHER} otherwise); with a video model each clip is cut "
        "into clip-len x PX x PX tiles, like RVRT's --tile T H W", metavar="PX")
    tile_overlap: Optional[int] = _option(   # None: 32, video models 20
        None, "execution", f"overlap between tiles (default {DEFAULT_TILE_OVERLAP}; video models "
        f"{DEFAULT_VIDEO_TILE_OVERLAP})", metavar="PX")
    clip_len: Optional[int] = _option(   # None: the model's (1 for per-frame models)
        None, "execution", "frames a video model restores together (default: the model's, 16 for RVRT)",
        metavar="N")
    clip_overlap: Optional[int] = _option(   # None: 0, or clip_len // 4 for video models
        None, "execution", "frames shared by consecutive clips, blended with linear ramps (default clip-len // 4)",
        metavar="N")
    decoder: str = _option("pyav", "execution", "file decoder (default pyav)", choices=lambda: DECODERS)
    max_decode_errors: int = _option(
        DEFAULT_MAX_DECODE_ERRORS, "execution", "video packets of a damaged input that may fail to decode "
        f"(skipped, leaving a gap) before the run stops (default {DEFAULT_MAX_DECODE_ERRORS})", metavar="N",
        minimum=0)
    # -- output ----------------------------------------------------------------------------
    codec: Optional[str] = _option(None, "output", "video encoder (default libx264; libvpx-vp9 for .webm)")
    crf: Optional[int] = _option(None, "output", "encoder quality (codec default if unset)", metavar="Q")
    preset: Optional[str] = _option(
        None, "output", "encoder speed preset (x264 names work for every codec)", metavar="P")
    pix_fmt: Optional[str] = _option(
        None, "output", "pixel format to encode, e.g. yuv420p10le (default: yuv420p for 8-bit input; the "
        "codec's 10-bit format for 10/12-bit input; its alpha variant for input with alpha)", metavar="NAME")
    compare: bool = _option(   # side-by-side: input (resized) | result
        False, "output", "write a side-by-side video instead: input (resized) left, result right")
    keep_partial: bool = _option(False, "output", "on failure or Ctrl-C keep a playable file of the frames done")
    live_output: bool = _option(
        False, "output", "write the output as a live input's is, for any input: low-latency encoding (no "
        "B-frames, a keyframe every second) and a file playable at every moment, even after kill -9 "
        "(fragmented MP4, flushed MKV/TS) under its .NAME.partial-* name until the run ends")
    # -- quality ---------------------------------------------------------------------------
    audit: Optional[int] = _option(
        None, "quality", "every Nth frame, restore one tile again with exact attention at the model's trained "
        "window in fp32 (a low-priority thread) and report what the run's settings cost there (stats: audit)",
        metavar="N", minimum=1)
    # -- live input ------------------------------------------------------------------------
    listen: bool = _option(
        False, "live input", "wait for a sender to push to INPUT (rtsp://, rtmp://, srt://, tcp://) instead of "
        "connecting to it")
    rtsp_transport: str = _option(
        "tcp", "live input", "how an rtsp:// input's packets travel (default tcp: no losses through NAT and "
        "firewalls)", choices=lambda: RTSP_TRANSPORTS)
    stall_timeout: float = _option(
        DEFAULT_STALL_TIMEOUT, "live input", f"seconds without data before a live input counts as stalled and is "
        f"reopened (also: how long a pipe input may stay silent; default {DEFAULT_STALL_TIMEOUT:g})",
        metavar="S", minimum=0.1)
    reconnect: Optional[int] = _option(
        None, "live input", "reconnect tries in a row before a lost live input ends the run (exit 1); "
        "0 = fail at once (default: unlimited)", metavar="N", minimum=0)
    max_latency: Optional[float] = _option(
        None, "live input", f"milliseconds from a live frame's arrival to its encoding that no frame may exceed: one "
        f"that can no longer make it is dropped before the model (default {DEFAULT_MAX_LATENCY_MS:g} for live "
        "inputs)", metavar="MS", minimum=1)
    drop: Optional[str] = _option(
        None, "live input", "which frame a live run drops when the model is behind: oldest (the latest picture "
        "wins), newest, or none (wait: latency then grows; default oldest, none for http(s) files, which "
        "are not paced)", choices=lambda: DROP_POLICIES)
    duration: Optional[float] = _option(
        None, "live input", "end the run cleanly after this many seconds of input (any input; a live one "
        "otherwise runs until stopped)", metavar="S", minimum=0.001)
    frames: Optional[int] = _option(
        None, "live input", "end the run cleanly after this many input frames (any input)", metavar="N", minimum=1)
    input_size: Optional[str] = _option(None, "live input", "webcam picture size, e.g. 1280x720", metavar="WxH")
    input_rate: Optional[float] = _option(None, "live input", "webcam frame rate, e.g. 30", metavar="F")
    input_format: Optional[str] = _option(
        None, "live input", "webcam pixel format (mjpeg, yuyv422, ...; v4l2's -input_format)", metavar="FMT")
    # -- live output -----------------------------------------------------------------------
    stub_after: float = _option(
        DEFAULT_STUB_AFTER, "live output", "seconds a network output repeats the last frame while no new one "
        f"comes (the source is away) before it shows a 'no signal' picture (default {DEFAULT_STUB_AFTER:g})",
        metavar="S", minimum=0)
    # -- view ------------------------------------------------------------------------------
    serve: Optional[str] = _option(
        None, "view", "watch the run in a browser at http://HOST:PORT/ (MJPEG, ?compare=1 beside the input, "
        "/stats, /metrics, /snapshot.jpg); HOST defaults to 127.0.0.1, PORT 0 picks a free one; OUTPUT may "
        "then be left out", metavar="[HOST:]PORT", in_job_files=False)
    serve_token: Optional[str] = _option(
        None, "view", "the token every request to --serve must carry (header 'Authorization: Bearer TOKEN' or "
        "?token=TOKEN); required for any address but loopback", metavar="TOKEN", in_job_files=False)
    # -- Python API only -------------------------------------------------------------------
    progress: Optional[Progress] = None     # called with (frames written, total or None)
    queue_size: int = 8
    cancel: Optional[threading.Event] = None  # set: stop as on Ctrl-C (KeyboardInterrupt)
    frame_range: Optional[FrameRange] = None  # restore only these frames (a segment of a batch job)
    copy_streams: bool = True               # audio, subtitles and tags from the input (False: video only)


@dataclass(frozen=True)
class OptionField:
    """One user-facing option: its name, value type (``int``, ``float``, ``str``, ``bool``, or
    ``object`` for ``model``), default and :class:`Flag`."""

    name: str
    type: type
    default: Any
    flag: Flag


def _value_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in (int, float, str, bool):
        return hint
    if len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0]
    return object


def option_fields() -> List[OptionField]:
    """The options users set (CLI flags, job-file keys), in ``--help`` order."""
    hints = typing.get_type_hints(Options)
    out = []
    for f in fields(Options):
        flag = f.metadata.get("flag")
        if flag is not None:
            default = f.default if f.default is not MISSING else None
            out.append(OptionField(f.name, _value_type(hints[f.name]), default, flag))
    return out


def options_from_mapping(values: Mapping[str, Any]) -> Options:
    """:class:`Options` from keyword arguments or a job file's keys (``tile_overlap`` or
    ``tile-overlap``); an unknown name is a :class:`UsageError` with the closest known ones."""
    known = {f.name for f in fields(Options)}
    given: Dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UsageError(f"unknown option {key!r}{hint}")
        given[name] = value
    return Options(**given)


def check_option_value(option: OptionField, value: Any) -> None:
    """One option's own rules (its choices and lower bound); ``None`` is always allowed."""
    if value is None:
        return
    flag = option.flag
    if flag.choices is not None and value not in flag.choices():
        raise UsageError(f"unknown {option.name} {value!r} (choose from {', '.join(flag.choices())})")
    if flag.minimum is not None and value < flag.minimum:
        raise UsageError(f"{flag.flags(option.name)[0].flag} must be >= {flag.minimum:g}, got {value}")


def check_options(opts: Options) -> None:
    """The checks that need neither the input nor the model."""
    for option in option_fields():
        check_option_value(option, getattr(opts, option.name))
    if opts.task is None and opts.model is None:
        raise UsageError(f"give a task ({', '.join(zoo.TASKS)}) or a model")
    overlap = opts.clip_overlap or 0
    # What the user left out depends on the model (video or not): checked again once it is known.
    tile = opts.tile if opts.tile is not None else 0
    check_window_options(tile, opts.tile_overlap if opts.tile_overlap is not None else 0,
                         opts.clip_len or overlap + 1, overlap)
    _check_noise_level(opts.sigma, needs=opts.sigma is not None, name="")   # its range
    if opts.task == "video-denoise" and opts.sigma is None:
        raise UsageError("--task video-denoise needs --sigma S, the noise level on the 0-255 scale (e.g. 25)")
    if opts.sigma is not None and opts.task is not None and opts.task != "video-denoise":
        raise UsageError(f"--sigma is for --task video-denoise, not {opts.task}")
    check_serve(opts.serve, opts.serve_token)
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
    if opts.fp16 and opts.precision not in ("auto", "fp16"):
        raise UsageError(f"--fp16 is --precision fp16; it contradicts --precision {opts.precision}")
    try:
        check_precision(requested_precision(opts), device)
    except PrecisionError as err:
        raise UsageError(str(err)) from None
    if device.type == "cuda" and (opts.workers or opts.threads_per_worker):
        raise UsageError("--workers and --threads-per-worker are for --device cpu (one GPU worker runs the model)")
    if opts.target_fps is not None:
        given = [f"--{n}" for n in ("attention", "landmarks", "iters") if getattr(opts, n) is not None]
        if given:
            raise UsageError(f"--target-fps chooses the attention settings itself: drop {', '.join(given)}")
        if device.type != "cpu":
            raise UsageError("--target-fps calibrates on the CPU: it is for --device cpu for now")
    if isinstance(opts.model, nn.Module) and opts.window is not None:
        raise UsageError("window= applies to checkpoints and presets, not to a model object")


def check_encoder(opts: Options, output: str) -> None:
    """Codec, crf, preset and pixel format, checked before the model loads (the sink checks the rest)."""
    settings = EncoderSettings(codec=opts.codec, crf=opts.crf, preset=opts.preset).for_output(output)
    codec = video_encoder(settings.codec)
    encoder_options(settings)
    if opts.pix_fmt is not None:
        check_pix_fmt(codec, opts.pix_fmt)


def prepare_model(opts: Options) -> Tuple[nn.Module, str]:
    """The model to run and a name for it (raises CheckpointError for bad checkpoints)."""
    if isinstance(opts.model, nn.Module):
        model = opts.model.eval()
        if opts.attention is not None:
            patch_attention(model, RUN_DEFAULT.override(mode=opts.attention, landmarks=opts.landmarks,
                                                        iters=opts.iters))
        return model, type(model).__name__
    target = zoo.resolve(opts.model) if opts.model is not None else zoo.default_preset(opts.task)
    if isinstance(target, zoo.Preset):
        check_preset_fits(target, opts)
        attention, name = opts.attention, target.name   # None: the preset's own settings
    else:
        attention, name = RUN_DEFAULT.override(mode=opts.attention), os.path.basename(str(target))
    model = load_model(target, attention=attention, landmarks=opts.landmarks, iters=opts.iters, window=opts.window)
    return model, name


def _check_noise_level(sigma: Optional[float], needs: bool, name: str) -> None:
    try:
        check_noise_level(sigma, needs, name, option="--sigma")
    except NoiseLevelError as err:
        raise UsageError(str(err)) from None


def check_preset_fits(preset: "zoo.Preset", opts: Options) -> None:
    """What a preset says about itself, checked before its checkpoint is downloaded or loaded."""
    if opts.task is not None and preset.task != opts.task:
        raise UsageError(f"model {preset.name} restores {preset.task}, not {opts.task}")
    if opts.sigma is None:   # (a sigma it cannot take is reported once the model is known)
        _check_noise_level(None, preset.task == "video-denoise", preset.name)


def check_model_fits(info: ModelInfo, opts: Options, name: str = "this model") -> None:
    task = opts.task
    expected = SCALE_FOR_TASK.get(task or "", 1 if task else None)
    if expected is not None and info.scale != expected:
        raise UsageError(f"--task {task} needs a x{expected} model, this one scales x{info.scale}")
    if task in VIDEO_TASKS and info.clip_len is None:
        raise UsageError(f"--task {task} needs a video model (e.g. RVRT); {name} restores single frames")
    if task is not None and info.task in VIDEO_TASKS and info.task != task:
        raise UsageError(f"{name} is a {info.task} model, not one for --task {task}")
    try:
        info.check_sigma(opts.sigma, name, option="--sigma")
    except NoiseLevelError as err:
        raise UsageError(str(err)) from None


def choose_prefilter(info: ModelInfo, opts: Options) -> Optional[str]:
    """The whole-frame step to run before the model: the one it was trained behind, unless
    the user named another (``--prefilter``) or turned it off (``none``)."""
    if opts.prefilter is None:
        return info.prefilter
    if opts.prefilter != "none" and info.clip_len is not None:
        raise UsageError(f"--prefilter {opts.prefilter} is for per-frame models, not video models")
    return None if opts.prefilter == "none" else opts.prefilter


def requested_precision(opts: Options) -> str:
    """``--precision``, with ``--fp16`` its alias for fp16."""
    return "fp16" if opts.fp16 else opts.precision


def resolve_precision(model: nn.Module, opts: Options) -> Tuple[str, Optional[Choice]]:
    """The precision the run uses and, for ``auto``, what it was chosen from."""
    precision = requested_precision(opts)
    if precision != "auto":
        return precision, None
    choice = choose_precision(model, opts.device, sigma=opts.sigma)
    return choice.precision, choice


def make_worker(model: nn.Module, info: ModelInfo, opts: Options, precision: str = "fp32",
                live: bool = False) -> Worker:
    """The worker for the run; ``precision`` already resolved (:func:`resolve_precision`).
    For a live input each worker process holds one item at a time (a second one queued behind
    it would wait a whole model time, and that wait is latency) and gets none before it has
    loaded the model."""
    if torch.device(opts.device).type == "cuda":
        return DeviceWorker(model, device=opts.device, precision=precision, sigma=opts.sigma)
    workers = DEFAULT_WORKERS if opts.workers is None else opts.workers
    if workers == 0:
        return DeviceWorker(model, device="cpu", threads=opts.threads_per_worker, sigma=opts.sigma,
                            precision=precision)
    return CpuPool(model, workers, threads_per_worker=opts.threads_per_worker, scale=info.scale, sigma=opts.sigma,
                   item_timeout=opts.worker_timeout, precision=precision, **({"depth": 1, "ready_first": True} if live else {}))
