"""Named model presets: which checkpoint restores which task, and how to run it.

A preset names a checkpoint file and the settings the project recommends for it (attention
kernel, landmarks, iterations, window). Bundled presets point into ``pipelines/weights/``
(small SwinIRs trained by ``python -m pipelines.weights.train``, file names from
``pipelines.weights.FILES``); downloadable presets
(official checkpoints, a later addition) set ``url`` and ``sha256`` and live in a cache.

``default_preset(task)`` is what ``nystra-stream --task T`` uses when no model is named.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from torch import nn

from .errors import CheckpointError
from .weights import FILES as BUNDLED_FILES
from .weights import TASKS, WEIGHTS_DIR


@dataclass(frozen=True)
class Preset:
    """A named checkpoint plus how to run it."""

    name: str
    task: str                       # one of TASKS
    arch: str                       # architecture name (``pipelines.models`` NAME)
    file: str                       # file name under WEIGHTS_DIR (bundled) or the download cache
    description: str
    attention: str = "nystrom"      # default kernel for this model: exact | nystrom | auto
    landmarks: int = 16             # PnP-Nystra settings the paper uses for SwinIR
    iters: int = 2
    window: Optional[int] = None    # run at this window (None: the checkpoint's own)
    url: Optional[str] = None       # downloadable presets only (verified by sha256)
    sha256: Optional[str] = None

    @property
    def bundled(self) -> bool:
        return self.url is None

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    def available(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0


class MissingWeightsError(CheckpointError):
    """A preset whose checkpoint file is not on this machine."""


_BUNDLED: List[Preset] = [
    Preset("swinir-tiny-denoise", "denoise", "swinir", BUNDLED_FILES["denoise"],
           "small SwinIR for colour Gaussian noise (sigma up to 50)"),
    Preset("swinir-tiny-deblur", "deblur", "swinir", BUNDLED_FILES["deblur"],
           "small SwinIR for Gaussian and motion blur"),
    Preset("swinir-tiny-sr2", "sr2", "swinir", BUNDLED_FILES["sr2"],
           "small SwinIR, bicubic x2 super-resolution"),
    Preset("swinir-tiny-sr4", "sr4", "swinir", BUNDLED_FILES["sr4"],
           "small SwinIR, bicubic x4 super-resolution"),
]

PRESETS: Dict[str, Preset] = {p.name: p for p in _BUNDLED}

# What ``--task`` picks when no ``--model``/``--weights`` is given.
DEFAULT_FOR_TASK: Dict[str, str] = {p.task: p.name for p in _BUNDLED}


def presets() -> List[Preset]:
    return list(PRESETS.values())


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r} (known: {', '.join(PRESETS)})") from None


def default_preset(task: str) -> Preset:
    if task not in DEFAULT_FOR_TASK:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    return PRESETS[DEFAULT_FOR_TASK[task]]


def checkpoint_path(preset: Preset) -> Path:
    """The preset's checkpoint file; raises :class:`MissingWeightsError` if absent."""
    if not preset.available():
        if preset.bundled:
            raise MissingWeightsError(
                f"the bundled weights for {preset.name} are not installed "
                f"({preset.path} is missing; train it with python -m pipelines.weights.train --task {preset.task})"
            )
        raise MissingWeightsError(f"the weights for {preset.name} are not downloaded yet ({preset.path})")
    return preset.path


def load_preset(
    name: str,
    attention: Optional[str] = None,
    landmarks: Optional[int] = None,
    iters: Optional[int] = None,
    window: Optional[int] = None,
    device=None,
) -> nn.Module:
    """Load a preset with its recommended settings, each overridable."""
    from .loading import load_model

    preset = get_preset(name)
    return load_model(
        checkpoint_path(preset),
        attention=attention or preset.attention,
        landmarks=landmarks or preset.landmarks,
        iters=iters or preset.iters,
        window=window or preset.window,
        device=device,
    )


def resolve(name_or_path: Union[str, os.PathLike]) -> Union[Preset, Path]:
    """A preset if ``name_or_path`` names one, else the path (not checked here)."""
    text = os.fspath(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    return Path(text)
