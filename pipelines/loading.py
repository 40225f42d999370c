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
    attention: str = "exact",
    landmarks: int = 16,
    iters: int = 2,
    window=None,
    device: Optional[Union[str, torch.device]] = None,
    **options,
) -> nn.Module:
    """Load a checkpoint, infer its architecture and hyper-parameters, return it in eval mode.

    ``window`` runs the model at another window size than it was trained with.
    ``attention`` is ``exact``, ``nystrom`` or ``auto`` (see ``pipelines.attention``).
    ``options`` go to the architecture (e.g. ``img_range=255.0`` for a SwinIR checkpoint).
    """
    from .attention import patch_attention

    sd = unwrap_state_dict(read_checkpoint(path_or_name))
    model = model_from_state_dict(sd, window=window, **options)
    model.eval()
    if device is not None:
        model.to(device)
    return patch_attention(model, attention, landmarks=landmarks, iters=iters)
