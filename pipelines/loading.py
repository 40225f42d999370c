"""``load_model``: a checkpoint file (or preset name) in, a ready model out."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .checkpoint import read_checkpoint, unwrap_state_dict
from .errors import CheckpointError
from .models import architectures


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
    path_or_name: Union[str, os.PathLike],
    attention: Optional[str] = "exact",
    landmarks: Optional[int] = None,
    iters: Optional[int] = None,
    window=None,
    device: Optional[Union[str, torch.device]] = None,
    **options,
) -> nn.Module:
    """Load a checkpoint file or a model preset, return it in eval mode with its attention set.

    ``path_or_name``: an existing checkpoint file, else a preset name (``pipelines.zoo``; its
    checkpoint is downloaded and verified on first use). A preset brings its recommended settings:
    ``exact`` at the trained window, ``nystrom``/``auto`` at the paper's window, landmarks and
    iterations; ``attention=None`` runs the preset's own default kernel. Arguments given here win.
    For a file, ``landmarks``/``iters`` default to 16/2 and ``window`` to the trained one.

    ``window`` runs the model at another window size than it was trained with.
    ``attention`` is ``exact``, ``nystrom`` or ``auto`` (see ``pipelines.attention``).
    ``options`` go to the architecture (e.g. ``img_range=255.0`` for a SwinIR checkpoint).
    """
    from . import zoo

    target = zoo.resolve(path_or_name)
    if isinstance(target, zoo.Preset):
        return zoo.load_preset(target, attention=attention, landmarks=landmarks, iters=iters, window=window,
                               device=device, **options)
    return load_checkpoint_model(target, attention=attention or "exact",
                                 landmarks=16 if landmarks is None else landmarks,
                                 iters=2 if iters is None else iters, window=window, device=device, **options)


def load_checkpoint_model(
    path: Union[str, os.PathLike],
    attention: str = "exact",
    landmarks: int = 16,
    iters: int = 2,
    window=None,
    device: Optional[Union[str, torch.device]] = None,
    **options,
) -> nn.Module:
    """:func:`load_model` for a checkpoint file: infer the architecture, build, load strictly."""
    from .attention import patch_attention

    sd = unwrap_state_dict(read_checkpoint(path))
    model = model_from_state_dict(sd, window=window, **options)
    model.eval()
    if device is not None:
        model.to(device)
    return patch_attention(model, attention, landmarks=landmarks, iters=iters)
