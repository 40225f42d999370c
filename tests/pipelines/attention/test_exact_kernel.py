"""``exact_attention``: softmax(q kᵀ + bias) v: SDPA's fused CPU kernel, or materialised
scores for small windows on the CPU."""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attention_reference import softmax_reference
from pipelines.attention import exact_attention
from pipelines.attention import exact as exact_module

FUSED = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


def _qkv(shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(shape, generator=gen) * s).to(dtype) for s in (0.5, 1.0, 1.0))


def _kernels_used(fn) -> set:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()} & {FUSED, MATH}


# (q shape, bias shape) with N tokens: 4-D plain, heads-only 3-D bias, shifted windows 5-D,
# per-batch bias, a mixed pattern that needs materialising, a 2-D bias, 3-D inputs.
def _shapes(n):
    return [
        ((4, 3, n, 8), None),
        ((4, 3, n, 8), (3, n, n)),
        ((2, 5, 3, n, 8), (5, 3, n, n)),
        ((1, 5, 3, n, 8), (5, 3, n, n)),
        ((2, 5, 3, n, 8), (2, 1, 1, n, n)),
        ((2, 5, 3, n, 8), (5, 1, n, n)),
        ((4, 3, n, 8), (n, n)),
        ((6, n, 8), (6, n, n)),
    ]


SMALL, LARGE = 16, exact_module.MATERIALISED_MAX_N + 4


@pytest.mark.parametrize("q_shape,bias_shape", _shapes(SMALL) + _shapes(LARGE))
def test_matches_softmax_reference_on_the_kernel_for_its_size(q_shape, bias_shape):
    q, k, v = _qkv(q_shape)
    bias = None if bias_shape is None else torch.randn(bias_shape)
    with torch.inference_mode():
        out = exact_attention(q, k, v, bias)
        assert out.shape == v.shape
        torch.testing.assert_close(out.double(), softmax_reference(q, k, v, bias), rtol=1e-5, atol=1e-5)
        # small windows: materialised scores (neither SDPA kernel); larger: the fused one
        expected = {FUSED} if q_shape[-2] > exact_module.MATERIALISED_MAX_N else set()
        assert _kernels_used(lambda: exact_attention(q, k, v, bias)) == expected


def test_materialised_path_in_chunks_equals_one_chunk(monkeypatch):
    q, k, v = _qkv((1, 7, 3, 64, 8), seed=3)
    bias = torch.randn(7, 3, 64, 64)  # a per-window bias: each chunk must take its own windows'
    with torch.inference_mode():
        whole = exact_attention(q, k, v, bias)
        monkeypatch.setattr(exact_module, "CHUNK_BYTES", 2 * 3 * 64 * 64 * 4)  # 2 windows a chunk: 4 chunks
        chunked = exact_attention(q, k, v, bias)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole.double(), softmax_reference(q, k, v, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_non_contiguous_inputs_like_a_qkv_permute(n):
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, n, 3, 3, 8, generator=gen).permute(2, 0, 3, 1, 4)  # (3, B_, heads, N, d) view
    q, k, v = qkv.unbind(0)
    bias = torch.randn(3, n, n, generator=gen)
    with torch.inference_mode():
        out = exact_attention(q, k, v, bias)
        expected = {FUSED} if n > exact_module.MATERIALISED_MAX_N else set()
        assert _kernels_used(lambda: exact_attention(q, k, v, bias)) == expected
    torch.testing.assert_close(out.double(), softmax_reference(q, k, v, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    q, k, v = _qkv((2, 4, 3, 16, 8), dtype=dtype)
    bias = torch.randn(4, 3, 16, 16)  # float32 bias is cast to the inputs' dtype
    with torch.inference_mode():
        out = exact_attention(q, k, v, bias)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), softmax_reference(q, k, v, bias.to(dtype)), rtol=2e-2, atol=2e-2)


def test_gradients_flow_to_inputs_and_bias():
    q, k, v = _qkv((2, 3, 16, 8))
    q.requires_grad_()
    table = torch.randn(3, 16, 16, requires_grad=True)
    exact_attention(q, k, v, table * 1.0).square().sum().backward()
    q2 = q.detach().double().requires_grad_()
    table2 = table.detach().double().requires_grad_()
    softmax_reference(q2, k, v, table2).square().sum().backward()
    torch.testing.assert_close(q.grad.double(), q2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(table.grad.double(), table2.grad, rtol=1e-4, atol=1e-5)


def test_rejects_bias_that_does_not_broadcast():
    q, k, v = _qkv((2, 5, 3, 16, 8))
    with pytest.raises((ValueError, RuntimeError)):
        exact_attention(q, k, v, torch.randn(4, 3, 16, 16))
