"""SwinIR state dicts: recognise one, infer its :class:`~.swinir.SwinIRConfig`, build and load it.

The architecture registry's protocol (``matches``, ``from_state_dict``) plus the spandrel-like
inference of every hyper-parameter from key names and shapes. Separate from the model file
because it reads checkpoints rather than defining layers; it imports :mod:`.swinir`, never the
other way.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Mapping, Optional

from torch import Tensor

from ..errors import CheckpointError
from .base import load_strictly
from .swinir import NAME, SwinIR, SwinIRConfig

__all__ = ["NAME", "matches", "infer_config", "from_state_dict"]

_TABLE_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.attn\.relative_position_bias_table$")
_MASK_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.blocks\.(\d+)\.attn_mask$")


# --------------------------------------------------------------------------------------------
# Registry protocol: recognise a state dict, infer its config, build and load it


def matches(state_dict: Mapping[str, Tensor]) -> bool:
    return ("conv_first.weight" in state_dict
            and "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" in state_dict)


def _window_from_table(rows: int, key: str) -> int:
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise CheckpointError(f"{key} has {rows} rows, not (2w-1)**2 for a window w")
    return (side + 1) // 2


def infer_config(state_dict: Mapping[str, Tensor], img_range: Optional[float] = None) -> SwinIRConfig:
    """Every hyper-parameter from key names and shapes (``img_range``: see :mod:`.swinir`)."""
    sd = state_dict
    try:
        embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
        tables: Dict[int, Dict[int, Tensor]] = {}
        for key, value in sd.items():
            found = _TABLE_KEY.match(key)
            if found:
                tables.setdefault(int(found[1]), {})[int(found[2])] = value
        if sorted(tables) != list(range(len(tables))):
            raise CheckpointError("SwinIR checkpoint has gaps in its layer numbering")
        depths = tuple(len(tables[i]) for i in range(len(tables)))
        num_heads = tuple(tables[i][0].shape[1] for i in range(len(tables)))
        windows = {_window_from_table(t.shape[0], "relative_position_bias_table")
                   for blocks in tables.values() for t in blocks.values()}
        if len(windows) != 1:
            raise CheckpointError(f"SwinIR checkpoint mixes window sizes {sorted(windows)}")
        window = windows.pop()

        masks = [v for k, v in sd.items() if _MASK_KEY.match(k)]
        if masks:  # (nW, N, N) for the square img_size grid
            per_side = math.isqrt(masks[0].shape[0])
            if per_side * per_side != masks[0].shape[0]:
                raise CheckpointError("SwinIR attn_mask does not describe a square img_size")
            img_size = per_side * window
        elif max(depths) > 1:
            img_size = window  # shifted blocks without a mask: the img_size <= window rule fired
        else:
            img_size = max(64, 2 * window)  # never shifts: img_size only must not trigger the rule

        hidden = sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
        if "conv_after_body.weight" in sd:
            resi = "1conv"
        elif "conv_after_body.0.weight" in sd:
            resi = "3conv"
        else:
            raise CheckpointError("SwinIR checkpoint has no conv_after_body")

        num_feat = 64
        if "conv_up1.weight" in sd:
            upsampler, upscale = "nearest+conv", 4 if "conv_up2.weight" in sd else 2
            num_feat = sd["conv_up1.weight"].shape[0]
        elif "conv_before_upsample.0.weight" in sd:
            upsampler = "pixelshuffle"
            num_feat = sd["conv_before_upsample.0.weight"].shape[0]
            stages = [k for k in sd if re.fullmatch(r"upsample\.\d+\.weight", k)]
            first = sd["upsample.0.weight"].shape[0]
            upscale = 3 if len(stages) == 1 and first == 9 * num_feat else 2 ** len(stages)
        elif "upsample.0.weight" in sd:
            upsampler = "pixelshuffledirect"
            upscale = math.isqrt(sd["upsample.0.weight"].shape[0] // in_chans)
        else:
            upsampler, upscale = "", 1
    except KeyError as err:
        raise CheckpointError(f"SwinIR checkpoint is missing {err.args[0]}") from None

    return SwinIRConfig(
        img_size=img_size, in_chans=int(in_chans), embed_dim=int(embed_dim), depths=depths,
        num_heads=num_heads, window_size=window, mlp_ratio=hidden / embed_dim,
        qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in sd, upscale=upscale,
        img_range=float(img_range) if img_range is not None else (255.0 if window == 7 else 1.0),
        upsampler=upsampler, resi_connection=resi, patch_norm="patch_embed.norm.weight" in sd,
        ape="absolute_pos_embed" in sd, num_feat=int(num_feat))



def from_state_dict(state_dict: Mapping[str, Tensor], window: Optional[int] = None,
                    img_range: Optional[float] = None) -> SwinIR:
    """Build the model a state dict describes, load it strictly, optionally resize its window."""
    return load_strictly(SwinIR(infer_config(state_dict, img_range=img_range)), state_dict, "SwinIR", window)
