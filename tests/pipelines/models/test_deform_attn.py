"""Guided deformable attention (grid_sample version) against a direct per-sample loop of the
official CUDA op's formula: DCNv2 bilinear sampling with zeros outside the frame, offsets
[frame][group][tap][(dy, dx)], key/value frame ``kv[b // clip][(n + b) % clip]``, groups over
all key+value channels, softmax over clip·taps keys per head and pixel."""
from __future__ import annotations

import math

import pytest
import torch

from pipelines.models import deform_attn
from pipelines.models.deform_attn import GuidedDeformAttnPack, guided_deform_attn


def _dcn_bilinear(plane, h: float, w: float) -> float:
    """The official ``dmcn_im2col_bilinear`` with the im2col bounds test, on a list-of-lists plane."""
    height, width = len(plane), len(plane[0])
    if not (h > -1 and w > -1 and h < height and w < width):
        return 0.0
    h_low, w_low = math.floor(h), math.floor(w)
    lh, lw = h - h_low, w - w_low
    total = 0.0
    for y, wy in ((h_low, 1 - lh), (h_low + 1, lh)):
        for x, wx in ((w_low, 1 - lw), (w_low + 1, lw)):
            if 0 <= y < height and 0 <= x < width:
                total += wy * wx * plane[y][x]
    return total


def _reference(q, kv, offset, heads, groups, kernel=(3, 3)):
    """Loops over samples, heads, pixels, frames and taps; float64 scalars throughout."""
    n_kv, clip, kv_ch, height, width = kv.shape
    channels = kv_ch // 2
    head_dim = channels // heads
    group_ch = kv_ch // groups
    kh, kw = kernel
    pad = kh // 2
    taps = kh * kw
    kvl = kv.double().tolist()
    ql = q.double().tolist()
    off = offset.double().view(q.shape[0], clip, groups, taps, 2, height, width).tolist()
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for head in range(heads):
            for y in range(height):
                for x in range(width):
                    logits, values = [], []
                    for n in range(clip):
                        frame = kvl[b // clip][(n + b) % clip]
                        for i in range(kh):
                            for j in range(kw):
                                k = i * kw + j
                                key, val = [], []
                                for e in range(head_dim):
                                    for part, store in ((0, key), (1, val)):
                                        c = part * channels + head * head_dim + e
                                        pair = off[b][n][c // group_ch][k]
                                        dy, dx = pair[0][y][x], pair[1][y][x]
                                        store.append(_dcn_bilinear(frame[c], y - pad + i + dy, x - pad + j + dx))
                                qv = [ql[b][head * head_dim + e][y][x] for e in range(head_dim)]
                                logits.append(sum(a * b_ for a, b_ in zip(qv, key)) * head_dim**-0.5)
                                values.append(val)
                    top = max(logits)
                    weights = [math.exp(v - top) for v in logits]
                    norm = sum(weights)
                    for e in range(head_dim):
                        out[b, head * head_dim + e, y, x] = sum(w_ * v[e] for w_, v in zip(weights, values)) / norm
    return out


def _inputs(n_kv, clip, channels, groups, height, width, spread, seed=0, taps=9):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_kv * clip, channels, height, width, generator=gen)
    kv = torch.randn(n_kv, clip, 2 * channels, height, width, generator=gen)
    offset = (torch.rand(n_kv * clip, clip * groups * taps * 2, height, width, generator=gen) * 2 - 1) * spread
    return q, kv, offset


@pytest.mark.parametrize(
    "n_kv, channels, heads, groups",
    [
        (1, 4, 2, 4),   # each group inside one head (K: groups 0-1, V: groups 2-3)
        (2, 6, 3, 4),   # group boundaries cut through heads; two key/value clips
        (1, 4, 4, 2),   # one group for all of K, one for all of V
    ],
)
def test_matches_per_sample_loop(n_kv, channels, heads, groups):
    q, kv, offset = _inputs(n_kv, 2, channels, groups, height=4, width=5, spread=3.5, seed=n_kv + heads)
    got = guided_deform_attn(q, kv, offset, heads, groups)
    want = _reference(q, kv, offset, heads, groups)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


def test_offsets_outside_frame_and_exact_borders():
    """Sample points exactly on -1 / H / W (zero), half a pixel outside (half weight of the
    edge pixel), and beyond the frame in every direction."""
    q, kv, offset = _inputs(1, 2, 4, 2, height=3, width=4, spread=4.0, seed=7)
    view = offset.view(2, 2, 2, 9, 2, 3, 4)  # (sample, frame, group, tap, (dy, dx), y, x)
    centre = 4  # tap (1, 1) samples at (y + dy, x + dx)
    view[0, 0, :, centre, :, 0, 0] = torch.tensor([-1.0, 0.0]).view(1, 2)   # row -1 exactly
    view[0, 0, :, centre, :, 0, 1] = torch.tensor([-0.5, 0.0]).view(1, 2)   # row -0.5
    view[0, 1, :, centre, :, 2, 3] = torch.tensor([1.0, 1.0]).view(1, 2)    # (H, W) exactly
    view[1, 0, :, centre, :, 2, 3] = torch.tensor([0.0, 0.5]).view(1, 2)    # column W - 0.5
    view[1, 1, :, centre, :, 1, 2] = torch.tensor([0.0, -3.0]).view(1, 2)   # column -1 exactly
    want = _reference(q, kv, offset, heads=2, groups=2)
    got = guided_deform_attn(q, kv, offset, heads=2, groups=2)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_far_outside_reads_zero_keys_and_values():
    """With every sample point outside the frame, keys and values are all zero: uniform softmax
    over zeros gives exactly zero output."""
    q, kv, offset = _inputs(1, 2, 4, 2, height=3, width=3, spread=0.0, seed=3)
    offset.fill_(10.0)
    out = guided_deform_attn(q, kv, offset, heads=2, groups=2)
    assert torch.count_nonzero(out) == 0
    offset.fill_(0.0)
    assert torch.count_nonzero(guided_deform_attn(q, kv, offset, heads=2, groups=2)) > 0


def test_chunked_pixels_match_single_pass(monkeypatch):
    q, kv, offset = _inputs(2, 2, 8, 4, height=9, width=11, spread=2.0, seed=5)
    whole = guided_deform_attn(q, kv, offset, heads=4, groups=4)
    monkeypatch.setattr(deform_attn, "_SAMPLED_BYTES_BUDGET", 1)  # one pixel per chunk
    chunked = guided_deform_attn(q, kv, offset, heads=4, groups=4)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_one_pixel_wide_frames():
    """grid_sample's align_corners=False convention keeps 1-px frames exact."""
    q, kv, offset = _inputs(1, 2, 4, 2, height=1, width=3, spread=1.5, seed=11)
    got = guided_deform_attn(q, kv, offset, heads=2, groups=2)
    assert torch.allclose(got.double(), _reference(q, kv, offset, heads=2, groups=2), atol=1e-5)


def test_rejects_inconsistent_shapes():
    q, kv, offset = _inputs(1, 2, 4, 2, height=3, width=3, spread=1.0)
    with pytest.raises(ValueError):
        guided_deform_attn(q, kv, offset[:, :-2], heads=2, groups=2)
    with pytest.raises(ValueError):
        guided_deform_attn(q, kv, offset, heads=3, groups=2)


def test_module_zero_residue_follows_the_flows():
    """With the offset head zeroed (as the official init), offsets are the flows themselves:
    the refined flows it returns are exactly the input flows."""
    torch.manual_seed(0)
    module = GuidedDeformAttnPack(dim=8, attention_heads=4, deformable_groups=4).eval()
    last = module.conv_offset[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    feats = [torch.randn(1, 2, 8, 6, 7) for _ in range(5)]
    flows = [torch.randn(1, 2, 2, 6, 7) * 2 for _ in range(2)]
    with torch.no_grad():
        out, refined = module(feats[0], feats[1], feats[2], feats[3:5], flows)
    assert out.shape == (1, 2, 8, 6, 7)
    for got, want in zip(refined, flows):
        assert torch.allclose(got, want, atol=1e-6)
