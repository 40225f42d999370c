"""Tile geometry and blend weights: cutting an image (or a stream) into overlapping pieces
and putting the restored pieces back without visible seams.

Pure geometry on 1-D spans and 2-D boxes, plus padding helpers; no video knowledge. Works
for spatial tiles (rows x columns) and for temporal clips (the same 1-D maths along time).

Blending rule: every piece gets a weight that ramps linearly across the region it shares
with its neighbour before it and the one after it, then weights are normalised so they sum
to one at every position. Ramps start at half a step (never exactly 0), so every covered
position has a positive total weight; a model that returns its input therefore comes back
bit-exact after rounding, whatever the tile and overlap sizes.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Box = Tuple[int, int, int, int]  # (top, left, bottom, right), half-open


def spans(length: int, size: int, overlap: int) -> List[Tuple[int, int]]:
    """Half-open spans of ``size`` covering ``[0, length)``, neighbours sharing at least
    ``overlap``; the last span is aligned to the end (it may overlap more).

    ``size <= 0`` or ``size >= length`` gives one span covering everything.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if size <= 0 or size >= length:
        return [(0, length)]
    if not 0 <= overlap < size:
        raise ValueError(f"overlap ({overlap}) must be >= 0 and smaller than the size ({size})")
    step = size - overlap
    count = math.ceil((length - size) / step) + 1
    starts = [min(i * step, length - size) for i in range(count)]
    return [(s, s + size) for s in starts]


def balanced_spans(length: int, size: int, overlap: int, align: int = 8) -> List[Tuple[int, int]]:
    """As many spans as :func:`spans` needs, but all of the smallest equal size (a multiple
    of ``align``, at most ``size``) that still covers ``[0, length)`` with ``overlap``.

    Plain spans pad the last one out to ``size``: a 640-px row in 512-px tiles is 1024 px of
    work (+60 %); balanced it is two 336-px tiles (+5 %). Tiles stay equal in size, and
    aligned, so models that pad to their window waste little more.
    """
    plain = spans(length, size, overlap)
    count = len(plain)
    if count == 1:
        return plain
    fitted = -(-(length + (count - 1) * overlap) // count)  # ceil: count spans sharing `overlap`
    fitted = min(size, -(-fitted // align) * align)
    room = length - fitted                                  # spread the starts evenly over it
    starts = [round(i * room / (count - 1)) for i in range(count)]
    return [(s, s + fitted) for s in starts]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> List[Box]:
    """Row-major boxes of (at most) ``tile`` x ``tile`` covering an image, overlapping by
    at least ``overlap`` pixels; ``tile <= 0`` means one box for the whole image. Rows and
    columns are :func:`balanced_spans`: no tile does more work than the image needs."""
    rows = balanced_spans(height, tile, overlap)
    cols = balanced_spans(width, tile, overlap)
    return [(t, l, b, r) for t, b in rows for l, r in cols]


def ramp(size: int, lead: int, trail: int) -> np.ndarray:
    """1-D weights of a piece of ``size`` whose first ``lead`` positions are shared with
    the piece before it and last ``trail`` with the piece after it: a linear rise across
    the lead, a linear fall across the trail, 1 in between (float32, all > 0)."""
    pos = np.arange(size, dtype=np.float64) + 0.5
    w = np.ones(size, dtype=np.float64)
    if lead > 0:
        w = np.minimum(w, pos / lead)
    if trail > 0:
        w = np.minimum(w, (size - pos) / trail)
    return w.astype(np.float32)


def span_weights(all_spans: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
    """Ramp weights for consecutive spans along one axis (sorted by start)."""
    out = []
    for i, (start, end) in enumerate(all_spans):
        lead = max(0, all_spans[i - 1][1] - start) if i > 0 else 0
        trail = max(0, end - all_spans[i + 1][0]) if i + 1 < len(all_spans) else 0
        out.append(ramp(end - start, min(lead, end - start), min(trail, end - start)))
    return out


def blend_weights(boxes: Sequence[Box], height: int, width: int) -> List[np.ndarray]:
    """Normalised (h, w) float32 weights for each box so that the weighted boxes sum to
    exactly one at every pixel of the ``height`` x ``width`` image they cover.

    Boxes must form a grid (as :func:`tile_boxes` makes, possibly scaled).
    """
    row_spans = sorted({(t, b) for t, _, b, _ in boxes})
    col_spans = sorted({(l, r) for _, l, _, r in boxes})
    row_w = dict(zip(row_spans, span_weights(row_spans)))
    col_w = dict(zip(col_spans, span_weights(col_spans)))
    raw = [np.outer(row_w[(t, b)], col_w[(l, r)]) for t, l, b, r in boxes]
    total = np.zeros((height, width), np.float32)
    for (t, l, b, r), w in zip(boxes, raw):
        total[t:b, l:r] += w
    if (total <= 0).any():
        raise ValueError("boxes do not cover the whole image")
    return [(w / total[t:b, l:r]).astype(np.float32) for (t, l, b, r), w in zip(boxes, raw)]


def scale_box(box: Box, scale: int) -> Box:
    t, l, b, r = box
    return (t * scale, l * scale, b * scale, r * scale)


def pad_to_multiple(x: Tensor, multiple: int) -> Tuple[Tensor, Tuple[int, int]]:
    """Pad the last two dims of ``x`` at the bottom/right up to a multiple of ``multiple``
    (reflecting, as the official SwinIR test code does; replicating where the image is too
    small to reflect). Returns the padded tensor and the original ``(h, w)``."""
    h, w = x.shape[-2:]
    if multiple <= 1:
        return x, (h, w)
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    mode = "reflect" if ph < h and pw < w else "replicate"
    if flat.dtype in (torch.float16, torch.bfloat16) and flat.device.type == "cpu":
        padded = F.pad(flat.float(), (0, pw, 0, ph), mode=mode).to(flat.dtype)
    else:
        padded = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return padded.reshape(*lead, *padded.shape[-3:]), (h, w)
