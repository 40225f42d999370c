"""``nystrom_attention`` against a float64 transcription of DESIGN §3, and its properties."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_reference import (
    gather_bias, kappa as kappa_reference, nystrom_reference, pinv_iteration, pooling_rows, realistic_table,
    shift_mask, softmax_reference, swin_relative_position_index,
)
from pipelines.attention import (
    PooledBias, exact_attention, iterative_pinv, kappa, landmark_grid, nystrom_attention, pool_tokens, pooling_matrix,
)
from pipelines.attention.nystrom import _kappa_


def _inputs(shape, grid, seed=0, q_scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n, d = math.prod(grid), 16
    full = tuple(shape) + (n, d)
    q = torch.randn(full, generator=gen) * d**-0.5 * q_scale
    k, v = torch.randn(full, generator=gen), torch.randn(full, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _relative(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


# grid, landmarks: divisible 2-D, non-divisible 2-D (7x7 with 16), 4x8 landmarks, 3-D, non-square
CASES = [((8, 8), 16), ((7, 7), 16), ((16, 16), 32), ((2, 8, 8), 32), ((4, 12), 16)]


@pytest.mark.parametrize("grid,landmarks", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_reference(grid, landmarks, with_bias):
    # q scaled up so that some scores exceed tau and the linear branch of kappa is exercised.
    q, k, v = _inputs((2, 3), grid, q_scale=6.0)
    n = math.prod(grid)
    bias = torch.randn(3, n, n) if with_bias else None
    lgrid = landmark_grid(grid, landmarks)
    pool = pooling_rows(grid, lgrid)
    assert ((q.double() @ (pool @ k.double()).transpose(-1, -2)) > 5.0).any(), "test must cross tau"
    ref = nystrom_reference(q, k, v, grid, lgrid, iters=2, bias=bias)
    with torch.inference_mode():
        fast = nystrom_attention(q, k, v, grid, landmarks, 2, bias=bias)
    assert fast.shape == v.shape and fast.dtype == torch.float32
    assert _relative(fast, ref) < 2e-5
    # The differentiable implementation (used while autograd records) computes the same thing.
    q_grad = q.clone().requires_grad_()
    plain = nystrom_attention(q_grad, k, v, grid, landmarks, 2, bias=bias)
    assert _relative(plain.detach(), ref) < 2e-5
    plain.sum().backward()
    assert q_grad.grad is not None and torch.isfinite(q_grad.grad).all()


def test_iters_and_5d_leading_dims_follow_the_reference():
    grid = (8, 8)
    q, k, v = _inputs((2, 3, 2), grid, seed=3)  # (B, nW, heads, N, d)
    bias = torch.randn(3, 2, 64, 64)  # (nW, heads, N, N) broadcast over B
    for iters in (0, 1, 4):
        ref = nystrom_reference(q, k, v, grid, (4, 4), iters=iters, bias=bias)
        with torch.no_grad():
            out = nystrom_attention(q, k, v, grid, 16, iters, bias=bias)
        assert _relative(out, ref) < 2e-5


def test_precomputed_pooled_bias_equals_dense_bias():
    grid = (8, 8)
    q, k, v = _inputs((4, 2), grid, seed=5)
    bias = torch.randn(2, 64, 64)
    pooled = PooledBias.from_bias(bias, grid, 16)
    assert pooled.query_to_landmark.shape == (2, 64, 16)
    assert pooled.landmark_to_key.shape == (2, 16, 64)
    assert pooled.landmark_to_landmark.shape == (2, 16, 16)
    with torch.inference_mode():
        a = nystrom_attention(q, k, v, grid, 16, 2, bias=pooled)
        b = nystrom_attention(q, k, v, grid, 16, 2, bias=bias)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError):
        nystrom_attention(q, k, v, grid, 32, 2, bias=pooled)  # pooled for another landmark grid


def test_window_output_does_not_depend_on_its_batch():
    grid = (8, 8)
    q, k, v = _inputs((6, 2), grid, seed=1)
    # Windows of very different score scales: a batch-wide pinv scaling would couple them.
    k[0] *= 4.0
    q[3] *= 0.05
    with torch.inference_mode():
        together = nystrom_attention(q, k, v, grid, 16, 2)
        alone = torch.cat([nystrom_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], grid, 16, 2) for i in range(6)])
    torch.testing.assert_close(alone, together, rtol=1e-6, atol=1e-6)


def test_pinv_scaling_is_per_matrix():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(3, 8, 8, generator=gen) + torch.eye(8) * 4
    a[1] *= 100.0
    together = iterative_pinv(a, 2)
    for i in range(3):
        torch.testing.assert_close(iterative_pinv(a[i:i + 1], 2)[0], together[i], rtol=1e-6, atol=1e-7)
        ref = pinv_iteration(a[i].double(), 2)
        torch.testing.assert_close(together[i].double(), ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("with_bias", [False, True])
def test_all_tokens_as_landmarks_with_exact_pinv_is_exact_attention(with_bias):
    # m = N: F = A = B = exp(scores); F A^+ B = A when the pinv iteration has converged
    # (many iterations of a well-conditioned A), and with scores below tau kappa is exp.
    grid, n = (4, 4), 16
    gen = torch.Generator().manual_seed(4)
    q = torch.linalg.qr(torch.randn(3, 32, n, generator=gen))[0].transpose(-1, -2) * 1.5
    k = q + 0.1 * torch.randn(3, n, 32, generator=gen)
    v = torch.randn(3, n, 32, generator=gen)
    bias = 0.3 * torch.randn(3, n, n, generator=gen) if with_bias else None
    scores = q @ k.transpose(-1, -2) + (0 if bias is None else bias)
    assert scores.max() < 5.0
    assert landmark_grid(grid, n) == grid
    with torch.inference_mode():
        out = nystrom_attention(q, k, v, grid, landmarks=n, iters=40, bias=bias)
        exact = exact_attention(q, k, v, bias)
    torch.testing.assert_close(out.double(), softmax_reference(q, k, v, bias), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, exact, rtol=1e-4, atol=1e-4)


def _relative_error(approx, target):
    return ((approx.double() - target).norm() / target.norm()).item()


@pytest.mark.parametrize("shifted", [False, True])
def test_bias_aware_is_closer_to_exact_than_bias_dropped(shifted):
    window, heads, side = 8, 3, 16
    gen = torch.Generator().manual_seed(7)
    table = realistic_table(window, heads, gen)
    bias = gather_bias(table, swin_relative_position_index(window))  # (heads, N, N)
    n_windows = (side // window) ** 2
    if shifted:
        bias = bias.unsqueeze(0) + shift_mask(side, side, window, window // 2).unsqueeze(1)  # (nW, heads, N, N)
    q, k, v = _inputs((n_windows, heads), (window, window), seed=8)
    target = softmax_reference(q, k, v, bias)
    with torch.inference_mode():
        aware = nystrom_attention(q, k, v, (window, window), 16, 2, bias=bias)
        dropped = nystrom_attention(q, k, v, (window, window), 16, 2)
    assert _relative_error(aware, target) < 0.9 * _relative_error(dropped, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_tolerance_of_float32(dtype):
    grid = (16, 16)
    q, k, v = _inputs((2, 2), grid, seed=9, q_scale=2.0)
    bias = torch.randn(2, 256, 256) * 0.5
    with torch.inference_mode():
        full = nystrom_attention(q, k, v, grid, 16, 2, bias=bias)
        half = nystrom_attention(q.to(dtype), k.to(dtype), v.to(dtype), grid, 16, 2, bias=bias)
    assert half.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert ((half.float() - full).abs().max() / full.abs().max()).item() < tol


def test_float16_sums_over_large_windows_do_not_overflow():
    # Scores near tau make B's rows sum to ~ N * e^4 > 65504 (float16's max) at N = 4096.
    grid = (64, 64)
    gen = torch.Generator().manual_seed(10)
    q = torch.full((1, 4096, 8), 0.7) + 0.01 * torch.randn(1, 4096, 8, generator=gen)
    k = torch.full((1, 4096, 8), 0.7) + 0.01 * torch.randn(1, 4096, 8, generator=gen)
    v = 3.0 + torch.randn(1, 4096, 8, generator=gen)
    with torch.inference_mode():
        full = nystrom_attention(q, k, v, grid, 16, 2)
        half = nystrom_attention(q.half(), k.half(), v.half(), grid, 16, 2)
    assert torch.isfinite(half).all()
    assert ((half.float() - full).abs().max() / full.abs().max()).item() < 2e-2


def test_kappa_in_place_matches_formula_bitwise():
    x = torch.linspace(-30.0, 30.0, 10001).reshape(1, 73, 137)  # both sides of tau
    expected = kappa_reference(x.double()).float()
    got = _kappa_(x.clone())
    assert torch.equal(got, kappa(x))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    below = torch.linspace(-30.0, 4.9, 1000)  # the all-below-tau shortcut
    assert torch.equal(_kappa_(below.clone()), kappa(below))


def test_kappa_floors_scores_instead_of_making_denormals():
    # -100 shift-mask scores would give exp(-100) ~ 4e-44: a float32 denormal (slow on CPUs).
    x = torch.tensor([[-1000.0, -100.0, -80.0, -79.0, 0.0, 7.0]])
    expected = torch.tensor([[math.exp(-80.0)] * 3 + [math.exp(-79.0), 1.0, math.exp(5.0) + 2.0]])
    for got in (kappa(x), _kappa_(x.clone()), _kappa_(x[:, :5].clone())):
        torch.testing.assert_close(got, expected[:, :got.shape[1]], rtol=1e-6, atol=0)
        assert (got.abs() >= torch.finfo(torch.float32).tiny).all()  # no denormals


def test_landmark_grids():
    assert landmark_grid((8, 8), 16) == (4, 4)
    assert landmark_grid((32, 32), 32) == (4, 8)
    assert landmark_grid((7, 7), 16) == (4, 4)
    assert landmark_grid((64, 32), 32) == (8, 4)  # longer landmark side along the longer window side
    assert landmark_grid((4, 4), 16) == (4, 4)
    assert landmark_grid((2, 64, 64), 32) == (2, 4, 4)  # 3-D: m in total, m/t per frame
    assert landmark_grid((1, 8, 8), 16) == (1, 4, 4)


@pytest.mark.parametrize("grid,lgrid", [((7, 7), (4, 4)), ((9, 5), (4, 3)), ((8, 8), (4, 4)), ((2, 7, 6), (2, 3, 4))])
def test_landmarks_follow_adaptive_avg_pool_semantics(grid, lgrid):
    gen = torch.Generator().manual_seed(11)
    n = math.prod(grid)
    tokens = torch.randn(5, n, 6, generator=gen)
    pooled = pool_tokens(tokens, grid, lgrid)
    # torch's own adaptive pooling on the channels-first image of each frame
    frames = grid[0] if len(grid) == 3 else 1
    image = tokens.view(5 * frames, *grid[-2:], 6).permute(0, 3, 1, 2).contiguous()
    expected = F.adaptive_avg_pool2d(image, lgrid[-2:]).permute(0, 2, 3, 1).reshape(5, -1, 6)
    torch.testing.assert_close(pooled, expected, rtol=1e-6, atol=1e-6)
    matrix = pooling_matrix(grid, lgrid, dtype=torch.float64)
    torch.testing.assert_close(matrix, pooling_rows(grid, lgrid))
    torch.testing.assert_close((matrix.float() @ tokens), expected, rtol=1e-5, atol=1e-6)
    # a strided view (q inside a fused qkv output) takes another code path: same landmarks
    fused = torch.randn(5, n, 3 * 6, generator=gen)
    fused[..., 6:12] = tokens
    view = fused[..., 6:12]
    assert not view.is_contiguous()
    torch.testing.assert_close(pool_tokens(view, grid, lgrid), expected, rtol=1e-5, atol=1e-6)


def test_3d_landmarks_never_mix_frames():
    grid = (2, 8, 8)
    q, k, v = _inputs((1, 2), grid, seed=12)
    with torch.inference_mode():
        base = nystrom_attention(q, k, v, grid, 32, 2)
        q_changed = q.clone()
        q_changed[..., 64:, :] += 1.0  # frame 1's queries only
        pooled_before = pool_tokens(q.reshape(-1, 128, 16), grid, (2, 4, 4))
        pooled_after = pool_tokens(q_changed.reshape(-1, 128, 16), grid, (2, 4, 4))
    assert torch.equal(pooled_before[:, :16], pooled_after[:, :16])  # frame-0 landmarks unchanged
    assert not torch.equal(pooled_before[:, 16:], pooled_after[:, 16:])
    assert base.shape == v.shape


def test_rejects_grid_that_does_not_match_n():
    q, k, v = _inputs((1,), (8, 8))
    with pytest.raises(ValueError):
        nystrom_attention(q, k, v, (8, 7), 16, 2)
