"""``--precision auto``: measure the modes on calibration frames once per machine, cache the answer.

The calibration frames are a :data:`~pipelines.precision.CALIBRATION_SIDE`-pixel crop of a sample
photo (``skimage.data``'s astronaut; a seeded smooth pattern without scikit-image), degraded as
the model's task expects (noise sigma 25 for denoisers, Gaussian blur for deblurrers, bicubic
downscaling for super-resolution); each mode's output is scored against the clean crop.

The cache is one small JSON file per key under the user cache dir
(``$NYSTRA_HOME`` or ``~/.cache/nystra-stream``, ``precision/``), the key a hash of the model's
parameters and buffers, the device, ``torch.backends.cpu.get_cpu_capability()``, the torch
version and the calibration settings: another CPU, torch or checkpoint measures again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import degradations
from .download import cache_root
from .precision import CALIBRATION_SIDE, QUALITY_BOUND_DB, Choice, Measurement, candidates, measure_modes, pick
from .restorer import Restorer, describe_model
from .weights.data import load_photo

CACHE_VERSION = 1


def calibration_pair(task: str, scale: int, side: int = CALIBRATION_SIDE,
                     photo: str = "astronaut") -> "tuple[Tensor, Tensor]":
    """``(input, clean)`` calibration frames, ``(1, 3, h, w)`` float in [0, 1], for a model of
    ``task`` and ``scale`` (the input is ``side / scale`` pixels wide for super-resolution)."""
    clean = _photo_crop(side, photo)
    gen = torch.Generator().manual_seed(0)
    if "denoise" in task:
        degraded = degradations.add_gaussian_noise(clean, 25.0, generator=gen)
    elif "deblur" in task:
        degraded = degradations.gaussian_blur(clean, 2.5)
    elif scale > 1:
        degraded = degradations.bicubic_resize(clean, 1 / scale)
    else:
        degraded = clean
    return (torch.round(degraded.clamp(0, 1) * 255) / 255), clean


def _photo_crop(side: int, name: str = "astronaut") -> Tensor:
    try:
        photo = load_photo(name)[None]
        top, left = (photo.shape[-2] - side) // 3, (photo.shape[-1] - side) // 2
        return photo[..., top:top + side, left:left + side].contiguous()
    except RuntimeError:   # no scikit-image: a smooth seeded pattern with some edges
        gen = torch.Generator().manual_seed(1)
        coarse = torch.rand(1, 3, side // 8, side // 8, generator=gen)
        return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


def model_key(model: nn.Module, device: torch.device, sigma: Optional[float]) -> str:
    """What the cached answer depends on, hashed (see the module doc)."""
    digest = state_digest(model)
    for part in (device.type, torch.backends.cpu.get_cpu_capability(), torch.__version__,
                 CALIBRATION_SIDE, QUALITY_BOUND_DB, sigma, CACHE_VERSION):
        digest.update(repr(part).encode())
    return digest.hexdigest()[:32]


def state_digest(model: nn.Module) -> "hashlib._Hash":
    """A sha256 fed with ``model``'s parameters and buffers (names and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest


def cache_path(key: str) -> Path:
    return cache_root() / "precision" / f"{key}.json"


def choose_precision(model: nn.Module, device="cpu", sigma: Optional[float] = None,
                     use_cache: bool = True) -> Choice:
    """The precision ``auto`` runs ``model`` at on ``device``: the fastest candidate within
    :data:`QUALITY_BOUND_DB` of fp32 on the calibration frames, from the cache when it has it."""
    device = torch.device(device)
    key = model_key(model, device, sigma)
    path = cache_path(key)
    if use_cache:
        cached = _read(path)
        if cached is not None:
            return cached
    info = describe_model(model)
    degraded, clean = calibration_pair(info.task, info.scale)
    frames = degraded.to(device)
    if info.clip_len is not None:   # a video model: a short clip of the same frame
        frames = frames.expand(2, -1, -1, -1)
    # fp16 converts the parameters in place: it gets its own copy, the others share the model.
    restorers = {mode: Restorer(copy.deepcopy(model) if mode == "fp16" else model, device=device, precision=mode,
                                sigma=sigma, prefilter=False)
                 for mode in candidates(device)}

    def run(mode: str) -> Tensor:
        with torch.inference_mode():
            return restorers[mode].restore_tensor(frames)[:1].float().cpu()

    try:
        measurements = measure_modes(run, clean, tuple(restorers))
    except Exception:
        # The model cannot run on the calibration frames (e.g. a fixed input size): run fp32 and
        # let the run itself report what is wrong, on the user's frames. Nothing cached.
        return Choice("fp32")
    choice = Choice(pick(measurements), measurements)
    if use_cache:
        _write(path, choice)
    return choice


def _read(path: Path) -> Optional[Choice]:
    try:
        data = json.loads(path.read_text())
        measurements = {m: Measurement(**v) for m, v in data["measurements"].items()}
        return Choice(data["precision"], measurements, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, choice: Choice) -> None:
    """Atomically (a temporary name, renamed): concurrent runs never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"precision": choice.precision, "capability": torch.backends.cpu.get_cpu_capability(),
                "torch": torch.__version__,
                "measurements": {m: asdict(v) for m, v in choice.measurements.items()}}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only cache costs a measurement next time, nothing else
