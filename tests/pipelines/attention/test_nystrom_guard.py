"""Nyström's numerical safety: score lifting (float range) and the exact fallback (breakdowns)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attention_reference import (
    gather_bias, nystrom_reference, realistic_table, shift_regions, swin_relative_position_index,
)
from pipelines.attention import (
    PooledBias, RegionMask, RelativePositionBias, WindowAttentionBase, WindowBias, attention_plan, exact_attention,
    fallback_count, landmark_grid, nystrom_attention, patch_attention,
)
from pipelines.attention import guard
from pipelines.attention.nystrom import _nystrom_fast
from pipelines.attention.resolve import LayerBiases

GRID = (8, 8)
N = 64


def _relative(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def _uniform_inputs(windows, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (windows, 2, N, 16)
    return (torch.randn(shape, generator=gen) * 0.25, torch.randn(shape, generator=gen),
            torch.randn(shape, generator=gen))


def _low_rank_inputs(windows=600, seed=0):
    """Queries of rank one per window-head (plus a little noise): a landmark matrix A close to
    singular, where two pinv iterations leave some window-heads with outputs far outside v's
    range (about 3 % of them with this seed)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(windows, 2, 1, 16, generator=gen)
    coef = torch.randn(windows, 2, N, 1, generator=gen)
    q = (coef @ base + 0.05 * torch.randn(windows, 2, N, 16, generator=gen)) * 0.5
    k, v = torch.randn(windows, 2, N, 16, generator=gen), torch.randn(windows, 2, N, 16, generator=gen)
    return q, k, v


@pytest.mark.parametrize("offset", [0.0, -30.0, -60.0, -120.0])
def test_all_negative_scores_are_computed_as_well_as_any(offset):
    # A constant added to every score changes neither softmax nor, below tau, the Nystrom formula;
    # float32 used to underflow (NaN) once all of a window's scores lay some 40 below zero.
    q, k, v = _uniform_inputs(4)
    lgrid = landmark_grid(GRID, 16)
    bias = torch.full((2, N, N), offset)
    ref = nystrom_reference(q, k, v, GRID, lgrid, iters=2)  # the formula without the offset
    # (In float64 and without the epsilon of the normalisation, which is what breaks the
    # invariance once the row sums get as small as it, the offset indeed changes nothing.)
    shifted = nystrom_reference(q, k, v, GRID, lgrid, iters=2, bias=bias, eps=0.0)
    torch.testing.assert_close(shifted, nystrom_reference(q, k, v, GRID, lgrid, iters=2, eps=0.0), rtol=1e-9, atol=1e-9)
    pooled = PooledBias.from_bias(bias, GRID, lgrid=lgrid)  # pooled terms: the formula alone, no fallback
    with torch.inference_mode():
        fast = nystrom_attention(q, k, v, GRID, 16, 2, bias=pooled)
    assert torch.isfinite(fast).all()
    assert _relative(fast, ref) < 2e-5
    # The differentiable form (training) lifts the same way.
    plain = nystrom_attention(q.clone().requires_grad_(), k, v, GRID, 16, 2, bias=pooled)
    assert _relative(plain.detach(), ref) < 2e-5


def test_suspects_include_every_breakdown():
    q, k, v = _low_rank_inputs()
    lgrid = landmark_grid(GRID, 16)
    with torch.inference_mode():
        out, suspects = _nystrom_fast(q, k, v, GRID, lgrid, 2, ())
    broken = guard.broken(out, v).view(suspects.shape)
    assert broken.sum() >= 10, "the construction must produce breakdowns"
    assert not (broken & ~suspects).any()
    assert suspects.sum() < suspects.numel() / 4  # a cheap filter, not "check everything"


def test_broken_window_heads_get_exact_attention_and_the_rest_is_untouched():
    q, k, v = _low_rank_inputs()
    bias = gather_bias(realistic_table(8, 2, torch.Generator().manual_seed(3)), swin_relative_position_index(8))
    pooled = PooledBias.from_bias(bias, GRID, lgrid=landmark_grid(GRID, 16))
    with torch.inference_mode():
        raw = nystrom_attention(q, k, v, GRID, 16, 2, bias=pooled)  # pooled terms alone: no fallback
        guarded = nystrom_attention(q, k, v, GRID, 16, 2, bias=bias)  # a dense bias: fallback possible
        exact = exact_attention(q, k, v, bias)
    broken = guard.broken(raw, v).view(q.shape[:2])
    assert broken.sum() >= 5
    before = fallback_count()
    with torch.inference_mode():
        nystrom_attention(q, k, v, GRID, 16, 2, bias=bias)
    assert fallback_count() - before == broken.sum()
    torch.testing.assert_close(guarded[broken], exact[broken], rtol=1e-5, atol=1e-6)
    assert torch.equal(guarded[~broken], raw[~broken])
    assert not guard.broken(guarded, v).any()
    # Still per window: computed alone, each window gives what it gives in the batch.
    with torch.inference_mode():
        alone = torch.cat([nystrom_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], GRID, 16, 2, bias=bias)
                           for i in broken.any(1).nonzero().flatten().tolist()])
    torch.testing.assert_close(alone, guarded[broken.any(1)], rtol=1e-6, atol=1e-6)


def test_broken_detects_nan_inf_and_overshoot():
    v = torch.ones(4, 1, N, 16)
    out = torch.zeros(4, 1, N, 16)
    out[1, 0, 5, 3] = float("nan")
    out[2, 0, 0, 0] = -float("inf")
    out[3, 0, 7, 7] = -1.6  # beyond 1.5 x max|v|
    out[0, 0, 1, 1] = 1.4
    assert guard.broken(out, v).tolist() == [False, True, True, True]


class ShiftedLayer(WindowAttentionBase):
    """A shifted-window layer with a factored bias (position table + region mask)."""

    def __init__(self, heads=2, window=8, side=16) -> None:
        super().__init__()
        self.heads, self.window, self.side = heads, window, side
        self.table = nn.Parameter(realistic_table(window, heads, torch.Generator().manual_seed(5)))

    def forward(self, q, k, v):
        grid = (self.window, self.window)
        regions = shift_regions(self.side, self.side, self.window, self.window // 2)
        return self.attend(q, k, v, grid, make_bias=lambda: WindowBias(RelativePositionBias(self.table, grid, grid),
                                                                         RegionMask(regions)),
                           bias_key=("shifted", self.side))


@pytest.mark.parametrize("bias_aware", [True, False])
def test_layer_falls_back_to_exact_with_its_true_bias(monkeypatch, bias_aware):
    layer = ShiftedLayer()
    q, k, v = (x.view(1, 4, 2, N, 16) for x in _uniform_inputs(4, seed=2))
    with torch.inference_mode():
        patch_attention(layer, "exact")
        exact = layer(q, k, v)
        patch_attention(layer, "nystrom")
        layer.nystrom_bias = bias_aware
        approx = layer(q, k, v)
        assert layer.exact_fallbacks == 0 and not torch.allclose(approx, exact, atol=1e-3)
        monkeypatch.setattr(guard, "GUARD", 0.0)  # now every window-head counts as broken down
        fallback = layer(q, k, v)
    assert layer.exact_fallbacks == 8
    torch.testing.assert_close(fallback, exact, rtol=1e-5, atol=1e-6)
    assert attention_plan(layer)[0]["exact_fallbacks"] == 8


@pytest.mark.parametrize("form", ["factored", "dense position", "opaque"])
def test_item_rows_are_the_dense_bias_rows(form):
    heads, window, side = 3, 4, 12
    grid = (window, window)
    table = realistic_table(window, heads, torch.Generator().manual_seed(1))
    position = gather_bias(table, swin_relative_position_index(window))
    regions = shift_regions(side, side, window, window // 2)
    if form == "factored":
        desc = WindowBias(RelativePositionBias(table, grid, grid), RegionMask(regions))
    else:
        desc = WindowBias(position, RegionMask(regions))
    dense = desc.dense()  # (nW, heads, N, N)
    lead = (2, dense.shape[0], heads)  # a batch of 2 images
    if form == "opaque":
        biases = LayerBiases(None, grid, torch.device("cpu"), torch.float32, dense_factory=lambda: dense)
    else:
        biases = LayerBiases(desc, grid, torch.device("cpu"), torch.float32)
    items = torch.tensor([0, 5, 17, 40, math.prod(lead) - 1])
    expected = dense.expand(*lead, *dense.shape[-2:]).reshape(-1, *dense.shape[-2:])[items]
    torch.testing.assert_close(biases.item_rows(lead, items), expected)
