"""Reading checkpoints safely: tensors only, never code."""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict, Mapping

import torch
from torch import Tensor

from .errors import CheckpointError

# The wrappers official training code puts around a state dict, most preferred first
# (SwinIR's real-world models hold the EMA weights, which its test script uses).
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")


def read_checkpoint(path: str | os.PathLike) -> Mapping:
    """Load a checkpoint file as plain tensors/containers; refuses pickled code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors raises several types
            raise CheckpointError(f"not a valid safetensors file: {path} ({err})") from None
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"not a PyTorch checkpoint: {path} (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        culprit = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(err))
        if culprit:
            name = culprit.group(1) or culprit.group(2)
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled code ({name}), not just tensors "
                "(only weights-only checkpoints are loaded)"
            ) from None
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({first})") from None
    except Exception as err:  # a non-checkpoint file can break the unpickler in many ways (IndexError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({first})") from None


def _looks_like_torch_file(path: str) -> bool:
    """torch.save writes a zip archive (or, in old versions, a protocol-2+ pickle); sniffing the
    magic bytes first keeps a text or video file from being reported as "pickled code"."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def unwrap_state_dict(ckpt: Mapping) -> Dict[str, Tensor]:
    """The state dict inside the wrappers official code uses, without ``module.`` prefixes."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError("checkpoint does not hold a state dict")
    sd = ckpt
    for key in _WRAPPER_KEYS:
        inner = sd.get(key) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            sd = inner
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError("checkpoint holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors
