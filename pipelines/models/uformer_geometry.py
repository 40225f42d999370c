"""Uformer's window geometry: pure tensor functions of sizes, no parameters.

Relative-position index, window partition / head split and its inverse, shifted-window regions
and masks, the per-window modulator sum, bicubic resampling of bias tables and modulators for
another window, and the mirror padding of the input. Kept apart from
:mod:`pipelines.models.uformer` so that the model file holds the architecture only; that module
re-exports these names.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


# --------------------------------------------------------------------------------------------------
# window helpers


def relative_position_index(window: int) -> Tensor:
    """(N, N) index into the ((2w-1)^2, heads) bias table for token pairs of a w x w window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, N
    delta = coords[:, :, None] - coords[:, None, :] + (window - 1)  # both offsets now >= 0
    return delta[0] * (2 * window - 1) + delta[1]


def window_heads(x: Tensor, window: int, groups: int, heads: int) -> Tensor:
    """(B, H, W, groups*heads*d) map -> (groups, B, nW, heads, N, d), windows in raster order.

    Window partition and head split in one permute-copy (channels are (group, head, d) as in
    the official ``reshape(B_, N, 2, heads, C // heads)``).
    """
    b, h, w, c = x.shape
    rows, cols, d = h // window, w // window, c // (groups * heads)
    x = x.view(b, rows, window, cols, window, groups, heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
    return x.reshape(groups, b, rows * cols, heads, window * window, d)


def merge_window_heads(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_heads` for one group: (B, nW, heads, N, d) -> (B, H, W, heads*d)."""
    b, _, heads, n, d = x.shape
    window = math.isqrt(n)
    x = x.view(b, h // window, w // window, heads, window, window, d).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, h, w, heads * d)


def shift_regions(h: int, w: int, window: int, shift: int, device=None) -> Tensor:
    """(nW, N) image region of every token of every shifted window, before the cyclic roll."""

    def bands(n: int) -> Tensor:  # official slices (0:-window), (-window:-shift), (-shift:)
        ids = torch.zeros(n, dtype=torch.int64, device=device)
        ids[n - window:] = 1
        ids[n - shift:] = 2
        return ids

    region = (bands(h)[:, None] * 3 + bands(w)[None, :]).view(1, h, w, 1)
    return window_heads(region, window, 1, 1)[0, 0, :, 0, :, 0]  # nW, N


def shift_attention_mask(h: int, w: int, window: int, shift: int, device=None) -> Tensor:
    """(nW, N, N) mask for shifted windows: -100 (the official value, not -inf) between tokens that
    came from different image regions before the cyclic roll, 0 elsewhere."""
    labels = shift_regions(h, w, window, shift, device)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, -100.0)


def add_per_window(x: Tensor, embedding: Tensor, window: int) -> Tensor:
    """x (B, H, W, C) + embedding (window*window, C) at each token's position inside its window."""
    b, h, w, c = x.shape
    grid = x.view(b, h // window, window, w // window, window, c)
    return (grid + embedding.view(1, 1, window, 1, window, c)).view(b, h, w, c)


def resize_bias_table(table: Tensor, window: int) -> Tensor:
    """((2w-1)^2, heads) -> ((2W-1)^2, heads), bicubic over the 2-D offset grid."""
    return _resize_grid(table, 2 * window - 1)


def resize_modulator(weight: Tensor, window: int) -> Tensor:
    """(w*w, dim) per-window-position embedding -> (W*W, dim), bicubic over the w x w grid."""
    return _resize_grid(weight, window)


def _resize_grid(rows: Tensor, side: int) -> Tensor:
    """(s*s, ch) values on an s x s raster grid -> (side*side, ch), bicubic (align_corners=False)."""
    old = math.isqrt(rows.shape[0])
    if old == side:
        return rows
    grid = rows.detach().float().T.reshape(1, -1, old, old)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, side * side).T.contiguous().to(rows.dtype)


def reflect_pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Pad bottom/right to (height, width) by mirroring (as SwinIR pads): where one reflection is not
    enough the mirror pattern repeats (abcdcbabcd...); a 1-pixel side is replicated."""
    h, w = x.shape[-2:]
    if height - h < h and width - w < w:
        return F.pad(x, (0, width - w, 0, height - h), mode="reflect") if (h, w) != (height, width) else x
    return x.index_select(-2, _mirror_index(h, height, x.device)).index_select(-1, _mirror_index(w, width, x.device))


def _mirror_index(size: int, total: int, device: torch.device) -> Tensor:
    if size == 1:
        return torch.zeros(total, dtype=torch.int64, device=device)
    pos = torch.arange(total, device=device) % (2 * (size - 1))
    return torch.where(pos < size, pos, 2 * (size - 1) - pos)
