"""Reading checkpoints safely: tensors only, never code, and nothing that inflates in memory.

- safetensors files: the library validates the header (length, dtypes, offsets that cover the data
  exactly, no overlaps) before it maps anything; we only turn its errors into one line.
- PyTorch zip archives are loaded with ``weights_only=True`` (no pickled code), after a look at the
  archive's directory: ``torch.load`` inflates a compressed member to its declared size, so a 1 MB
  file can ask for 1 GB or 1 TB (measured: a deflated 1 GiB tensor loads from a 1.0 MB file). Refused:
  members that declare more bytes than :data:`MAX_INFLATION` times the file plus 64 MiB, and a pickle
  larger than 64 MiB (weights live in the data records, the pickle is a few KB).
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Dict, Mapping

import torch
from torch import Tensor

from .errors import CheckpointError

# The wrappers official training code puts around a state dict, most preferred first
# (SwinIR's real-world models hold the EMA weights, which its test script uses).
_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")

MAX_INFLATION = 4                 # declared bytes per byte of file (torch writes members stored: 1)
_SLACK_BYTES = 64 << 20
_MAX_PICKLE_BYTES = 64 << 20


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
    if zipfile.is_zipfile(path):
        _check_archive(path)
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


def _check_archive(path: str) -> None:
    """Refuse a zip checkpoint whose members would inflate far beyond the file (see the module doc)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"not a PyTorch checkpoint: {path} (a broken zip archive: {err})") from None
    declared = sum(m.file_size for m in members)
    limit = MAX_INFLATION * os.path.getsize(path) + _SLACK_BYTES
    if declared > limit:
        raise CheckpointError(f"refusing to load {path}: its members declare {declared / 2**20:.0f} MB for a "
                              f"{os.path.getsize(path) / 2**20:.1f} MB file (a decompression bomb?)")
    for member in members:
        if member.filename.endswith(".pkl") and member.file_size > _MAX_PICKLE_BYTES:
            raise CheckpointError(f"refusing to load {path}: its pickle {member.filename} declares "
                                  f"{member.file_size / 2**20:.0f} MB (a checkpoint's pickle is a few KB)")


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
