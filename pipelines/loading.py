"""``load_model``: a checkpoint file or a preset name in, a ready model out.

This is the one place that tells a name from a path (:func:`pipelines.zoo.resolve`) and
turns either into a model:

- a **file**: infer the architecture from its state dict, build it, load strictly
  (spandrel-like: :func:`model_from_state_dict`);
- a **preset**: its checkpoint (downloaded and sha256-verified on first use, see
  :mod:`pipelines.zoo`) with the preset's recommended attention settings.

Attention settings are an :class:`~pipelines.attention.AttentionSettings`; the defaults are
stated once in :mod:`pipelines.attention.settings`.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from . import zoo
from .attention import DEFAULT, AttentionSettings, Window, patch_attention
from .checkpoint import read_checkpoint, unwrap_state_dict
from .errors import CheckpointError
from .models import architectures

# ``ModelInfo.task`` for each preset task (the models name tasks without the scale).
_MODEL_TASKS = {"sr2": "sr", "sr3": "sr", "sr4": "sr", "sr8": "sr", "jpeg": "car"}


def model_from_state_dict(state_dict: Mapping[str, Tensor], window=None, **options) -> nn.Module:
    """Infer the architecture of a state dict and build it (strict load).

    ``options``: architecture-specific overrides of what a state dict cannot tell
    (e.g. SwinIR's ``img_range``).
    """
    for arch in architectures():
        if arch.matches(state_dict):
            return arch.from_state_dict(dict(state_dict), window=window, **options)
    known = ", ".join(a.NAME for a in architectures())
    raise CheckpointError(f"not a checkpoint of a supported architecture ({known})")


def load_model(
    path_or_name: Union[str, os.PathLike, "zoo.Preset"],
    attention: Union[str, AttentionSettings, None] = DEFAULT.mode,
    landmarks: Optional[int] = None,
    iters: Optional[int] = None,
    window: Optional[Window] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[bool] = None,
    **options,
) -> nn.Module:
    """Load a checkpoint file or a model preset, return it in eval mode with its attention set.

    ``path_or_name``: an existing checkpoint file, else a preset name (``pipelines.zoo``; its
    checkpoint is downloaded and verified on first use) or a :class:`~pipelines.zoo.Preset`.

    ``attention``: ``exact`` (the default: the network as trained), ``nystrom`` or ``auto``
    (see ``pipelines.attention``), or a whole :class:`AttentionSettings`. A preset brings its
    recommended settings: ``exact`` at the trained window, ``nystrom``/``auto`` at the paper's
    window, landmarks and iterations; ``attention=None`` runs the preset's own default kernel
    (for a file: exact). ``landmarks``, ``iters`` and ``window`` given here win over either;
    otherwise a file takes :data:`~pipelines.attention.settings.DEFAULT`'s and its trained window.

    ``options`` go to the architecture (e.g. ``img_range=255.0`` for a SwinIR checkpoint).
    """
    target = zoo.resolve(path_or_name)
    if isinstance(attention, AttentionSettings):
        settings = attention.override(landmarks=landmarks, iters=iters, window=window)
    elif isinstance(target, zoo.Preset):
        settings = target.settings(attention, landmarks, iters, window)
    else:
        settings = DEFAULT.override(mode=attention, landmarks=landmarks, iters=iters, window=window)
    if isinstance(target, zoo.Preset):
        return load_preset(target, settings, device=device, progress=progress, **options)
    return load_checkpoint_model(target, settings, device=device, **options)


def load_checkpoint_model(path: Union[str, os.PathLike], settings: AttentionSettings = DEFAULT,
                          device: Optional[Union[str, torch.device]] = None, **options) -> nn.Module:
    """A checkpoint file as a model: infer the architecture, build, load strictly, set attention."""
    sd = unwrap_state_dict(read_checkpoint(path))
    model = model_from_state_dict(sd, window=settings.window, **options)
    model.eval()
    if device is not None:
        model.to(device)
    return patch_attention(model, settings)


def load_preset(preset: Union["zoo.Preset", str], settings: Optional[AttentionSettings] = None, device=None,
                progress: Optional[bool] = None, **options) -> nn.Module:
    """A preset's checkpoint as a model, run with ``settings`` (default: the preset's own)."""
    preset = preset if isinstance(preset, zoo.Preset) else zoo.get_preset(preset)
    settings = settings if settings is not None else preset.settings()
    model = load_checkpoint_model(zoo.checkpoint_path(preset, progress=progress), settings, device=device,
                                  **options)
    info = getattr(model, "info", None)
    if info is not None and getattr(info, "arch", None) != preset.arch:
        raise CheckpointError(f"{preset.name}: the checkpoint {preset.path} is a {info.arch} model, "
                              f"the preset says {preset.arch}")
    task = _MODEL_TASKS.get(preset.task, preset.task)
    if info is not None and (info.task != task or info.prefilter != preset.prefilter):
        # e.g. Uformer's SIDD and GoPro checkpoints have the same layout; the preset knows which
        # it is, and what its checkpoint was trained behind.
        model.info = replace(info, task=task, prefilter=preset.prefilter)
    return model
