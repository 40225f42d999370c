"""What a run is asked to do: ``Options``, their checks, and the model and worker they lead to.

Everything here happens before a frame is decoded: the option checks that need neither input
nor model, the checks once the model is known (task, scale, noise level), loading the model,
and choosing the worker that will run it. :mod:`streamer.pipeline` then streams the frames.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn

from pipelines import zoo
from pipelines.deconvolution import PREFILTERS
from pipelines.models.base import ModelInfo

from .errors import UsageError
from .encoding import EncoderSettings, encoder_options, video_encoder
from .windows import check_window_options
from .pool import CpuPool
from .workers import DeviceWorker, cpu_cores

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
