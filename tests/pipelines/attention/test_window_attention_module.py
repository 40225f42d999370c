"""``WindowAttentionBase.attend`` (bias caches, modes) and ``patch_attention`` / ``unpatch``."""
from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from torch import nn

from attention_reference import gather_bias, shift_mask, softmax_reference, swin_relative_position_index
from pipelines.attention import (
    WindowAttentionBase, attention_plan, exact_attention, nystrom_attention, patch_attention, unpatch,
)
from pipelines.attention import auto


class TinySwinAttention(WindowAttentionBase):
    """Swin-like window attention over a (B, H, W, C) map: qkv, relative position bias, optional shift mask."""

    def __init__(self, dim: int = 12, heads: int = 3, window: int = 8, shift: int = 0) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        self.register_buffer("relative_position_index", swin_relative_position_index(window))
        self.bias_builds = 0

    def bias(self, height: int, width: int) -> torch.Tensor:
        self.bias_builds += 1
        bias = gather_bias(self.relative_position_bias_table, self.relative_position_index)
        if self.shift:
            return bias.unsqueeze(0) + shift_mask(height, width, self.window, self.shift).unsqueeze(1)
        return bias

    def windows(self, x: torch.Tensor):
        b, h, w, c = x.shape
        ws, heads = self.window, self.heads
        qkv = self.qkv(x).view(b, h // ws, ws, w // ws, ws, 3, heads, c // heads)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, b, (h // ws) * (w // ws), heads, ws * ws, c // heads)
        q, k, v = qkv.unbind(0)
        return q * (c // heads) ** -0.5, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.windows(x)
        out = self.attend(q, k, v, (self.window, self.window), make_bias=lambda: self.bias(h, w),
                          bias_key=("tiny", self.window, self.shift, h, w))
        return self.proj(out.transpose(2, 3).reshape(b, -1, c))


def _model(shift=0, seed=0, window=8):
    torch.manual_seed(seed)
    return nn.Sequential(TinySwinAttention(shift=shift, window=window), nn.Identity()).eval()


def _x(seed=1, side=16):
    return torch.randn(2, side, side, 12, generator=torch.Generator().manual_seed(seed))


def _reference(layer: TinySwinAttention, x: torch.Tensor, mode: str, landmarks=16, iters=2, bias_aware=True):
    """What the layer must compute, from the kernels called directly with a freshly built bias."""
    with torch.no_grad():
        b, h, w, c = x.shape
        q, k, v = layer.windows(x)
        bias = layer.bias(h, w)
        if mode == "exact":
            out = exact_attention(q, k, v, bias)
        else:
            out = nystrom_attention(q, k, v, (layer.window,) * 2, landmarks, iters, bias=bias if bias_aware else None)
        return layer.proj(out.transpose(2, 3).reshape(b, -1, c))


@pytest.mark.parametrize("shift", [0, 4])
def test_patch_unpatch_round_trip(shift):
    model, x = _model(shift), _x()
    layer = model[0]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        exact_before = model(x)
    torch.testing.assert_close(exact_before.double(), _reference(layer, x, "exact").double(), rtol=1e-5, atol=1e-6)

    assert patch_attention(model, "nystrom", landmarks=16, iters=3) is model
    with torch.no_grad():
        approx = model(x)
    torch.testing.assert_close(approx, _reference(layer, x, "nystrom", 16, 3), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(approx, exact_before, atol=1e-4)

    assert unpatch(model) is model
    with torch.no_grad():
        exact_after = model(x)
    assert torch.equal(exact_after, exact_before)
    state_after = model.state_dict()
    assert list(state_after) == list(state_before)
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value)


def test_bias_dropped_option_runs_the_papers_formula():
    model, x = _model(shift=4), _x()
    patch_attention(model, "nystrom", landmarks=16, iters=2, bias_aware=False)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, _reference(model[0], x, "nystrom", bias_aware=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "nystrom"])
def test_bias_is_built_once_per_key_in_inference(mode):
    model, x = _model(shift=4), _x()
    layer = model[0]
    patch_attention(model, mode)
    with torch.inference_mode():
        first = model(x)
        second = model(x)
    with torch.no_grad():
        third = model(x)
    assert layer.bias_builds == 1
    assert torch.equal(first, second) and torch.equal(first, third)
    with torch.no_grad():
        model(_x(side=24))  # another feature size: another key
    assert layer.bias_builds == 2
    patch_attention(model, mode, landmarks=4)  # pooled biases also depend on the landmarks
    with torch.no_grad():
        model(x)
    assert layer.bias_builds == (3 if mode == "nystrom" else 2)


def test_cache_is_not_in_state_dict_and_is_not_copied():
    model, x = _model(shift=4), _x()
    keys = list(model.state_dict())
    patch_attention(model, "nystrom")
    with torch.no_grad():
        expected = model(x)
    assert list(model.state_dict()) == keys
    assert len(model[0].attention_cache) == 1
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert len(clone[0].attention_cache) == 0
        with torch.no_grad():
            assert torch.equal(clone(x), expected)


@pytest.mark.parametrize("mode", ["exact", "nystrom"])
def test_cache_invalidated_by_load_state_dict(mode):
    model, other, x = _model(shift=4, seed=0), _model(shift=4, seed=5), _x()
    patch_attention(model, mode)
    patch_attention(other, mode)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(other.state_dict())
        after = model(x)
        expected = other(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_cache_invalidated_by_in_place_edit_and_dtype_change():
    model, x = _model(shift=0), _x()
    layer = model[0]
    patch_attention(model, "nystrom")
    with torch.no_grad():
        model(x)
        layer.relative_position_bias_table.mul_(2.0)  # bumps the parameter's version counter
        edited = model(x)
    torch.testing.assert_close(edited, _reference(layer, x, "nystrom"), rtol=1e-5, atol=1e-6)
    model.double()
    with torch.no_grad():
        as_double = model(x.double())
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double, _reference(layer, x.double(), "nystrom"), rtol=1e-10, atol=1e-10)


def test_training_in_exact_mode_reaches_the_bias_table():
    model, x = _model(shift=4), _x()
    model.train()
    layer = model[0]
    out = model(x)
    out.square().mean().backward()
    grad = layer.relative_position_bias_table.grad
    assert grad is not None and grad.abs().sum() > 0
    assert len(layer.attention_cache) == 0  # nothing cached while autograd records
    # same gradient as the plain formula
    table = layer.relative_position_bias_table.detach().double().requires_grad_()
    with torch.no_grad():
        q, k, v = layer.windows(x)
    bias = gather_bias(table, layer.relative_position_index).unsqueeze(0) + shift_mask(16, 16, 8, 4).double().unsqueeze(1)
    ref = softmax_reference(q, k, v, bias)
    b, c = x.shape[0], x.shape[-1]
    proj = layer.proj.double()
    proj(ref.transpose(2, 3).reshape(b, -1, c)).square().mean().backward()
    layer.proj.float()
    torch.testing.assert_close(grad.double(), table.grad, rtol=1e-3, atol=1e-6)


def test_auto_runs_what_the_plan_says_and_caches_the_decision():
    model, x = _model(shift=4, window=16), _x(side=32)
    patch_attention(model, "auto", landmarks=16, iters=2)
    assert attention_plan(model)[0]["ran"] is None
    with torch.inference_mode():
        out = model(x)
    plan = attention_plan(model)
    assert len(plan) == 1 and plan[0]["mode"] == "auto" and plan[0]["reason"] == "measured"
    assert plan[0]["exact_ms"] > 0 and plan[0]["nystrom_ms"] > 0
    chosen = plan[0]["ran"]
    torch.testing.assert_close(out, _reference(model[0], x, chosen), rtol=1e-5, atol=1e-6)
    decision = model[0].last_decision
    with torch.inference_mode():
        model(x)
    assert model[0].last_decision is decision  # measured once, then reused
    # only the chosen kernel's bias stays cached
    assert len(model[0].attention_cache) == 1


def test_auto_uses_exact_when_landmarks_are_half_the_window_or_more():
    model, x = _model(shift=0, window=4), _x(side=16)  # N = 16
    patch_attention(model, "auto", landmarks=8)
    with torch.no_grad():
        out = model(x)
    assert attention_plan(model)[0]["ran"] == "exact"
    assert attention_plan(model)[0]["reason"] == "landmarks >= N/2"
    torch.testing.assert_close(out, _reference(model[0], x, "exact"), rtol=0, atol=0)


def test_auto_choice_needs_a_clear_win_for_nystrom():
    assert auto.choose([10.0, 10.2, 9.9], [5.0, 5.1, 30.0]).choice == "nystrom"  # medians 10.0 vs 5.1
    assert auto.choose([10.0, 10.0, 10.0], [9.5, 9.5, 9.5]).choice == "exact"  # within the margin
    assert auto.choose([10.0, 10.0, 10.0], [10.0, 10.0, 10.0]).choice == "exact"  # tie
    assert auto.choose([5.0, 5.0, 5.0], [10.0, 10.0, 10.0]).choice == "exact"
    assert auto.choose([10.0, 10.0, 4.0], [5.0, 5.0, 5.0]).choice == "exact"  # exact's best run as good


def test_auto_measurement_times_the_given_kernels():
    import time

    slow, fast = (lambda: time.sleep(0.03)), (lambda: time.sleep(0.001))
    cpu = torch.device("cpu")
    decision = auto.measure(slow, fast, cpu)  # a 30x gap: noise cannot flip it
    assert decision.choice == "nystrom" and decision.exact_ms >= 30.0 and decision.nystrom_ms < decision.exact_ms
    assert auto.measure(fast, slow, cpu).choice == "exact"


def test_threads_running_one_layer_concurrently():
    model = _model(shift=4)
    patch_attention(model, "nystrom")
    inputs = [_x(seed=s) for s in range(4)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(3):
                    results[i] = model(inputs[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=0)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError):
        patch_attention(_model(), "fast")
