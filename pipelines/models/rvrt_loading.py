"""RVRT state dicts: recognise one, infer its :class:`~.rvrt.RVRTConfig`, build and load it.

The architecture registry's protocol (``matches``, ``from_state_dict``, ``NAME``) plus the
spandrel-like inference of every hyper-parameter the weights determine (windows from the bias
tables and indices, depths, heads, widths, the task from the input and output layers). Separate
from the model file because it reads checkpoints rather than defining layers; it imports
:mod:`.rvrt`, never the other way.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import CheckpointError
from .base import load_strictly
from .rvrt import BRANCHES, NAME, RVRT, RVRTConfig
from .rvrt_blocks import table_size

__all__ = ["NAME", "matches", "infer_config", "from_state_dict"]

_BLOCK = re.compile(r"main\.5\.(\d+)\.residual_group\.blocks\.(\d+)\.")


def matches(state_dict: Mapping[str, Tensor]) -> bool:
    return ("spynet.basic_module.0.basic_module.0.weight" in state_dict
            and "reconstruction.main.1.weight" in state_dict
            and "deform_align.backward_1.conv_offset.0.weight" in state_dict)


def _index_first_row(window: Tuple[int, int, int]) -> Tensor:
    """Row 0 of :func:`relative_position_index` (window), without building the N x N index."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
    row = torch.zeros(coords.shape[1], dtype=torch.long)
    for axis, size in enumerate(window):
        row = row * (2 * size - 1) + (size - 1) - coords[axis]
    return row


def _window_of(table: Tensor, index: Tensor, key: str) -> Tuple[int, int, int]:
    """The 3-D window whose table has ``table`` rows and whose index is ``index`` (N x N)."""
    rows, tokens = table.shape[0], index.shape[0]
    candidates = []
    for t in range(1, tokens + 1):
        if tokens % t:
            continue
        for h in range(1, tokens // t + 1):
            if (tokens // t) % h == 0 and table_size((t, h, tokens // t // h)) == rows:
                candidates.append((t, h, tokens // t // h))
    # Permuted windows share both sizes; the index's first row (query at the origin) tells them apart.
    first_row = index[0].long().cpu()
    for window in candidates:
        if len(candidates) == 1 or torch.equal(_index_first_row(window), first_row):
            return window
    raise CheckpointError(f"{key}: no 3-D window has a {rows}-row bias table and {tokens} tokens")


def _stage(sd: Mapping[str, Tensor], prefix: str) -> dict:
    """Hyper-parameters of one RSTBWithInputConv under ``prefix`` (ending in '.')."""
    conv = sd[prefix + "main.1.weight"]
    blocks: Dict[int, set] = {}
    for key in sd:
        if key.startswith(prefix):
            found = _BLOCK.match(key[len(prefix):])
            if found:
                blocks.setdefault(int(found[1]), set()).add(int(found[2]))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"RVRT checkpoint: no transformer blocks under {prefix}")
    attn = prefix + "main.5.0.residual_group.blocks.0."
    dim = conv.shape[0]
    return {
        "dim": dim, "in_per_group": conv.shape[1], "num_blocks": len(blocks), "depth": len(blocks[0]),
        "heads": sd[attn + "attn.relative_position_bias_table"].shape[1],
        "window": _window_of(sd[attn + "attn.relative_position_bias_table"],
                             sd[attn + "attn.relative_position_index"], attn + "attn"),
        "mlp_ratio": sd[attn + "mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": attn + "attn.qkv_self.bias" in sd,
    }


_DEFAULT_ATTENTION_HEADS = 12  # the official constructor's default, used by every release


def infer_config(state_dict: Mapping[str, Tensor]) -> RVRTConfig:
    """Every hyper-parameter the weights determine (the rest: see the module docstring)."""
    sd = state_dict
    try:
        if "feat_extract.main.1.weight" in sd:
            upscale, feat_prefix, feat_in, nonblind = 4, "feat_extract.", 3, False
        else:
            first = sd["feat_extract.1.weight"]
            upscale, feat_prefix = 1, "feat_extract.6."
            feat_in, nonblind = first.shape[0], first.shape[1] == 4
        feat = _stage(sd, feat_prefix)
        prop = _stage(sd, "backbone.backward_1.")
        recon = _stage(sd, "reconstruction.")
        e0 = feat["dim"]
        groups = [feat_in // feat["in_per_group"]]
        for i, name in enumerate(BRANCHES):
            groups.append((2 + i) * e0 // _stage(sd, f"backbone.{name}.")["in_per_group"])
        groups.append(5 * e0 // recon["in_per_group"])
        offset_in = sd["deform_align.backward_1.conv_offset.0.weight"].shape[1]
        offset_out = sd["deform_align.backward_1.conv_offset.10.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"RVRT checkpoint is missing {err.args[0]}") from None
    dim = prop["dim"]
    clip_size, rest = divmod(offset_in - dim, dim + 2)  # in = dim·(1 + clip) + 2·clip
    taps = 9  # 3x3 kernel, as every release
    if rest or clip_size < 1 or offset_out % (2 * clip_size * taps):
        raise CheckpointError("RVRT checkpoint: deform_align.conv_offset shapes fit no clip size / group count")
    deformable_groups = offset_out // (2 * clip_size * taps)
    if (1,) + prop["window"][1:] != feat["window"] or feat["window"] != recon["window"]:
        raise CheckpointError(f"RVRT checkpoint mixes windows {feat['window']}, {prop['window']}, {recon['window']}")
    try:
        return RVRTConfig(
            upscale=upscale, clip_size=clip_size, window_size=prop["window"],
            num_blocks=(feat["num_blocks"], prop["num_blocks"], recon["num_blocks"]),
            depths=(feat["depth"], prop["depth"], recon["depth"]),
            embed_dims=(e0, dim, recon["dim"]), num_heads=(feat["heads"], prop["heads"], recon["heads"]),
            mlp_ratio=prop["mlp_ratio"], qkv_bias=prop["qkv_bias"], inputconv_groups=tuple(groups),
            deformable_groups=deformable_groups,
            attention_heads=_DEFAULT_ATTENTION_HEADS if dim % _DEFAULT_ATTENTION_HEADS == 0 else deformable_groups,
            nonblind_denoising=nonblind)
    except ValueError as err:
        raise CheckpointError(f"RVRT checkpoint: {err}") from None



def from_state_dict(state_dict: Mapping[str, Tensor], window: Optional[Union[int, Sequence[int]]] = None,
                    attention_heads: Optional[int] = None,
                    max_residue_magnitude: Optional[float] = None) -> RVRT:
    """Build the model a state dict describes, load it strictly, optionally resize its windows.

    ``attention_heads`` / ``max_residue_magnitude`` override the two settings of the deformable
    alignment that no weight records (defaults: see the module docstring).
    """
    config = infer_config(state_dict)
    if attention_heads is not None:
        if attention_heads < 1 or config.embed_dims[1] % attention_heads:
            raise CheckpointError(f"RVRT: attention_heads={attention_heads} does not divide the "
                                  f"{config.embed_dims[1]} channels of the deformable attention")
        config = replace(config, attention_heads=int(attention_heads))
    if max_residue_magnitude is not None:
        config = replace(config, max_residue_magnitude=float(max_residue_magnitude))
    return load_strictly(RVRT(config), state_dict, "RVRT", window)
