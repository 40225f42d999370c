"""Tile geometry, ramp weights and padding (pipelines/tiling.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import tiling

CASES = [  # (length, size, overlap)
    (100, 32, 8), (197, 50, 13), (333, 64, 0), (64, 64, 16), (65, 64, 16), (10, 64, 8),
    (100, 20, 15),   # overlap > size / 2: a position lies in three or more spans
    (7, 3, 2), (1, 4, 1),
]


@pytest.mark.parametrize("length,size,overlap", CASES)
def test_spans_cover_with_the_requested_overlap(length, size, overlap):
    spans = tiling.spans(length, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for start, end in spans:
        assert end - start == min(size, length)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1, "spans go forward"
        assert e0 - s1 >= overlap, "neighbours share at least the overlap"


def test_spans_without_tiling_or_with_bad_overlap():
    assert tiling.spans(50, 0, 8) == [(0, 50)]
    assert tiling.spans(50, 80, 8) == [(0, 50)]
    with pytest.raises(ValueError):
        tiling.spans(100, 16, 16)
    with pytest.raises(ValueError):
        tiling.spans(0, 16, 4)


def test_tile_boxes_are_a_row_major_grid():
    boxes = tiling.tile_boxes(197, 333, 100, 20)
    rows = tiling.balanced_spans(197, 100, 20)
    cols = tiling.balanced_spans(333, 100, 20)
    assert boxes == [(t, l, b, r) for t, b in rows for l, r in cols]


@pytest.mark.parametrize("length,size,overlap", CASES + [(640, 512, 32), (1920, 512, 32), (361, 128, 20)])
def test_balanced_spans_cover_with_the_overlap_and_no_more_work(length, size, overlap):
    plain = tiling.spans(length, size, overlap)
    spans = tiling.balanced_spans(length, size, overlap)
    assert len(spans) == len(plain)
    assert spans[0][0] == 0 and spans[-1][1] == length
    sizes = {end - start for start, end in spans}
    assert len(sizes) == 1 and sizes.pop() <= min(size, length), "equal tiles, never larger"
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 - s1 >= overlap


def test_balanced_spans_do_not_pad_the_last_tile_out():
    # A 640-px row in 512-px tiles: plain tiling does 1024 px of work, balanced 2 x 336.
    assert tiling.spans(640, 512, 32) == [(0, 512), (128, 640)]
    assert tiling.balanced_spans(640, 512, 32) == [(0, 336), (304, 640)]


def test_ramp_rises_and_falls_linearly_across_overlaps():
    w = tiling.ramp(20, lead=4, trail=6)
    assert w.dtype == np.float32 and (w > 0).all() and (w <= 1).all()
    np.testing.assert_allclose(w[:4], (np.arange(4) + 0.5) / 4, rtol=1e-6)
    np.testing.assert_allclose(w[-6:], (6 - np.arange(6) - 0.5) / 6, rtol=1e-6)
    assert (w[4:14] == 1).all()
    # A falling trail and the next piece's rising lead over the same positions sum to one.
    np.testing.assert_allclose(tiling.ramp(10, 0, 4)[-4:] + tiling.ramp(10, 4, 0)[:4], 1, rtol=1e-6)


@pytest.mark.parametrize("height,width,tile,overlap", [(197, 333, 64, 16), (48, 64, 20, 7), (50, 50, 12, 9),
                                                       (30, 40, 100, 8)])
def test_blend_weights_sum_to_one_everywhere(height, width, tile, overlap):
    boxes = tiling.tile_boxes(height, width, tile, overlap)
    weights = tiling.blend_weights(boxes, height, width)
    total = np.zeros((height, width), np.float64)
    for (t, l, b, r), w in zip(boxes, weights):
        assert w.shape == (b - t, r - l) and (w > 0).all()
        total[t:b, l:r] += w
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)


def test_blend_weights_have_no_jump_at_tile_borders():
    """Across an overlap the weight of a tile moves in small steps (no visible seam)."""
    height, width, tile, overlap = 64, 100, 40, 10
    boxes = tiling.tile_boxes(height, width, tile, overlap)
    weights = tiling.blend_weights(boxes, height, width)
    for (t, l, b, r), w in zip(boxes, weights):
        full = np.zeros((height, width), np.float32)
        full[t:b, l:r] = w
        # Inside the image (tiles at its edge keep weight 1 up to the edge) a weight never
        # changes by more than one ramp step between neighbouring pixels.
        step = max(np.abs(np.diff(full, axis=0)).max(), np.abs(np.diff(full, axis=1)).max())
        assert step <= 1.0 / overlap + 1e-6


def test_blending_identity_tiles_returns_the_image_exactly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (197, 333, 3)).astype(np.uint8)
    boxes = tiling.tile_boxes(197, 333, 50, 13)
    acc = np.zeros(image.shape, np.float32)
    for (t, l, b, r), w in zip(boxes, tiling.blend_weights(boxes, 197, 333)):
        acc[t:b, l:r] += image[t:b, l:r] * w[..., None]
    assert (np.rint(acc).astype(np.uint8) == image).all()


def test_scale_box():
    assert tiling.scale_box((1, 2, 3, 4), 4) == (4, 8, 12, 16)


@pytest.mark.parametrize("h,w,m", [(197, 333, 8), (16, 16, 8), (5, 3, 8), (10, 10, 1)])
def test_pad_to_multiple_keeps_the_image_and_pads_bottom_right(h, w, m):
    x = torch.rand(2, 3, h, w)
    padded, size = tiling.pad_to_multiple(x, m)
    assert size == (h, w)
    assert padded.shape[-2] % m == 0 and padded.shape[-1] % m == 0
    assert padded.shape[-2] - h < m and padded.shape[-1] - w < m
    assert torch.equal(padded[..., :h, :w], x)
    ph, pw = padded.shape[-2] - h, padded.shape[-1] - w
    if ph and ph < h and pw < w:  # reflect: mirrored rows, the edge row not repeated
        assert torch.equal(padded[..., h, :w], x[..., h - 2, :])
    elif ph:  # too small to reflect: the edge row repeats
        assert torch.equal(padded[..., h, :w], x[..., h - 1, :])


def test_pad_to_multiple_in_half_precision_on_cpu():
    x = torch.rand(1, 3, 13, 21).half()
    padded, _ = tiling.pad_to_multiple(x, 8)
    assert padded.dtype == torch.float16 and padded.shape[-2:] == (16, 24)
