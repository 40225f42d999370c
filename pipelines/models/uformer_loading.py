"""Uformer state dicts: recognise one, infer its :class:`~.uformer.UformerConfig`, build and load it.

The architecture registry's protocol (``matches``, ``from_state_dict``) plus the spandrel-like
inference of the config from key names and shapes (``img_size`` from the window clamp's trace).
Separate from the model file because it reads checkpoints rather than defining layers; it
imports :mod:`.uformer`, never the other way.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Optional

from torch import Tensor

from ..errors import CheckpointError
from .base import load_strictly
from .uformer import NAME, RELEASED_IMG_SIZE, STAGES, Uformer, UformerConfig

__all__ = ["NAME", "matches", "infer_config", "from_state_dict"]


# --------------------------------------------------------------------------------------------------
# registry protocol: recognise, infer, build


def matches(state_dict: Mapping[str, Tensor]) -> bool:
    return ("input_proj.proj.0.weight" in state_dict and "output_proj.proj.0.weight" in state_dict
            and "encoderlayer_0.blocks.0.attn.relative_position_bias_table" in state_dict)


def _table_window(table: Tensor) -> int:
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0] or side % 2 == 0:
        raise CheckpointError(f"a relative_position_bias_table has {table.shape[0]} rows, not (2w-1)**2")
    return (side + 1) // 2


def infer_config(state_dict: Mapping[str, Tensor]) -> UformerConfig:
    """The config of an (unwrapped) official state dict.

    ``img_size`` is read from stages whose bias table is smaller than the window (the official clamp
    left a trace). Without such a trace it cannot be told apart from larger sizes: the released value
    128 is assumed when consistent (window <= 8), else the smallest consistent size ``16 * window``;
    both leave the bottleneck exactly one window at training size (so it never shifts), as released.
    ``shift_flag`` is not visible either and taken as True (official default, released models).
    """
    sd = state_dict
    if any("cross_modulator" in k for k in sd):
        raise CheckpointError("Uformer with cross_modulator is not supported")
    try:
        first = sd["input_proj.proj.0.weight"]
        depths, heads, windows = [], [], []
        for name in STAGES:
            blocks = {int(k.split(".")[2]) for k in sd if k.startswith(f"{name}.blocks.")}
            if not blocks or blocks != set(range(len(blocks))):
                raise CheckpointError(f"Uformer checkpoint has no or gapped blocks in {name}")
            table = sd[f"{name}.blocks.0.attn.relative_position_bias_table"]
            depths.append(len(blocks))
            heads.append(int(table.shape[1]))
            windows.append(_table_window(table))
        block = "encoderlayer_0.blocks.0"
        conv_projection = f"{block}.attn.qkv.to_q.depthwise.weight" in sd
        leff = f"{block}.mlp.linear1.0.weight" in sd
        hidden = sd[f"{block}.mlp.linear1.0.weight" if leff else f"{block}.mlp.fc1.weight"].shape[0]
        win_size = windows[0]
        img_size = RELEASED_IMG_SIZE if RELEASED_IMG_SIZE // 16 >= win_size else 16 * win_size
        for level in range(5):  # STAGES[level] runs at ``level``; the shallowest clamp pins img_size
            if windows[level] < win_size:
                img_size = windows[level] * 2 ** level
                break
    except KeyError as err:
        raise CheckpointError(f"Uformer checkpoint is missing {err.args[0]}") from None
    return UformerConfig(
        embed_dim=int(first.shape[0]), depths=tuple(depths), num_heads=tuple(heads), win_size=win_size,
        img_size=img_size, mlp_ratio=hidden / first.shape[0],
        token_projection="conv" if conv_projection else "linear", token_mlp="leff" if leff else "ffn",
        modulator="decoderlayer_0.blocks.0.modulator.weight" in sd,
        qkv_bias=conv_projection or f"{block}.attn.qkv.to_q.bias" in sd,
        in_chans=int(sd["output_proj.proj.0.weight"].shape[0]), dd_in=int(first.shape[1]))



def from_state_dict(state_dict: Mapping[str, Tensor], window: Optional[int] = None,
                    img_size: Optional[int] = None) -> Uformer:
    """Build the Uformer a state dict describes, load it strictly, optionally resize its window.

    ``img_size`` overrides the inferred one (see :func:`infer_config`); ``window``: see
    :meth:`Uformer.resize_window`.
    """
    config = infer_config(state_dict)
    if img_size is not None:
        config = replace(config, img_size=int(img_size))
    return load_strictly(Uformer(config), state_dict, "Uformer", window)
