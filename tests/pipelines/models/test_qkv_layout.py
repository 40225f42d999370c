"""q, k, v layouts: the head-major product equals the fused linear's output, rearranged; the
layout rule; RVRT's attention gives the same output in either layout."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.attention import patch_attention
from pipelines.models.qkv_layout import HEADS_LAYOUT_MIN_DIM, head_major_qkv, heads_layout
from pipelines.models.rvrt_blocks import WindowAttention3D


@pytest.mark.parametrize("bias", [True, False])
def test_head_major_product_is_the_linear_rearranged(bias):
    torch.manual_seed(0)
    batch, windows, n, channels, heads = 2, 3, 16, 12, 3
    layer = nn.Linear(channels, 3 * channels, bias=bias)
    x = torch.randn(batch, windows * n, channels)
    with torch.inference_mode():
        q, k, v = head_major_qkv(layer, x, n, heads)
        reference = layer(x).view(batch, windows, n, 3, heads, channels // heads).permute(3, 0, 1, 4, 2, 5)
    for got, want in zip((q, k, v), reference):
        assert got.shape == (batch, windows, heads, n, channels // heads)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        got.view(-1, n, channels // heads)  # windows and heads fold without a copy


def test_layout_rule():
    from pipelines.attention import auto
    from pipelines.attention.exact import MATERIALISED_MAX_N

    dim, big, small = HEADS_LAYOUT_MIN_DIM, 1024, 64
    layer = WindowAttention3D(dim, (2, 4, 4), 6)
    assert layer.qkv_layout == "tokens"  # RVRT's default (see its docstring)
    layer.qkv_layout = "auto"
    x = torch.zeros(1, 2, 32, dim)
    with torch.inference_mode():
        # exact: head-major only where the scores are materialised (SDPA wants rows contiguous)
        assert heads_layout(layer, x, dim, small, layer.qkv_self) and heads_layout(layer, x, dim, MATERIALISED_MAX_N, layer.qkv_self)
        assert not heads_layout(layer, x, dim, MATERIALISED_MAX_N + 1, layer.qkv_self)
        assert not heads_layout(layer, x.to(torch.bfloat16), dim, small, layer.qkv_self)  # SDPA takes bfloat16
        patch_attention(layer, "nystrom")
        assert heads_layout(layer, x, dim, big, layer.qkv_self)
        assert not heads_layout(layer, x, dim - 1, big, layer.qkv_self)  # too narrow
        patch_attention(layer, "auto")
        assert not heads_layout(layer, x, dim, big, layer.qkv_self)  # no choice made yet: as exact
        layer.last_decision = auto.Decision("nystrom", "measured")
        assert heads_layout(layer, x, dim, big, layer.qkv_self)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not heads_layout(layer, x, dim, big, layer.qkv_self)
        layer.qkv_layout = "tokens"
        assert not heads_layout(layer, x, dim, big, layer.qkv_self)
        layer.qkv_layout = "heads"
        assert heads_layout(layer, x, dim - 1, big, layer.qkv_self)
        layer.qkv_layout = "sideways"
        with pytest.raises(ValueError, match="unknown qkv_layout"):
            heads_layout(layer, x, dim, big, layer.qkv_self)
    layer.qkv_layout = "heads"
    assert not heads_layout(layer, x, dim, big, layer.qkv_self)  # autograd on: the plain product


@pytest.mark.parametrize("mode", ["nystrom", "exact"])
def test_rvrt_attention_same_output_in_either_layout(mode):
    torch.manual_seed(0)
    layer = patch_attention(WindowAttention3D(24, (2, 4, 4), 3).eval(), mode)
    windows = torch.randn(2, 5, 32, 24)
    outs = {}
    with torch.inference_mode():
        for layout in ("tokens", "heads"):
            layer.qkv_layout = layout
            outs[layout] = layer(windows, (2, 4, 4), None, ())
    torch.testing.assert_close(outs["heads"], outs["tokens"], atol=2e-6, rtol=1e-5)
