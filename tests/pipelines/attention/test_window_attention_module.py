"""``WindowAttentionBase.attend`` (bias caches, modes) and ``patch_attention`` / ``unpatch``."""
from __future__ import annotations

import copy
import gc
import math
import pickle
import threading

import pytest
import torch
from torch import nn

from attention_reference import gather_bias, shift_mask, shift_regions, softmax_reference, swin_relative_position_index
from pipelines.attention import (
    STORE, RegionMask, RelativePositionBias, WindowAttentionBase, WindowBias, attention_plan, exact_attention,
    nystrom_attention, patch_attention, unpatch,
)
from pipelines.attention import resolve


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


class TinyFactoredAttention(TinySwinAttention):
    """The same layer describing its bias in factored form (table + region labels), as the models do."""

    def bias(self, height: int, width: int):
        self.bias_builds += 1
        grid = (self.window, self.window)
        position = RelativePositionBias(self.relative_position_bias_table, grid, grid)
        if not self.shift:
            return WindowBias(position)
        return WindowBias(position, RegionMask(shift_regions(height, width, self.window, self.shift)))

    def dense_bias(self, height: int, width: int) -> torch.Tensor:
        return TinySwinAttention.bias(self, height, width)


def _model(shift=0, seed=0, window=8, factored=False):
    torch.manual_seed(seed)
    layer = (TinyFactoredAttention if factored else TinySwinAttention)(shift=shift, window=window)
    return nn.Sequential(layer, nn.Identity()).eval()


def _x(seed=1, side=16):
    return torch.randn(2, side, side, 12, generator=torch.Generator().manual_seed(seed))


def _reference(layer: TinySwinAttention, x: torch.Tensor, mode: str, landmarks=16, iters=2, bias_aware=True):
    """What the layer must compute, from the kernels called directly with a freshly built bias."""
    with torch.no_grad():
        b, h, w, c = x.shape
        q, k, v = layer.windows(x)
        bias = layer.dense_bias(h, w) if isinstance(layer, TinyFactoredAttention) else layer.bias(h, w)
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
    model, x = _model(shift=12, window=24), _x(side=48)  # N = 576: above auto's floor ladder
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
    kinds = {key[5] for key in STORE.keys_with_prefix(("layer", model[0]._bias_owner))}
    assert kinds == ({"dense"} if chosen == "exact" else {"pooled"})


def test_auto_uses_exact_when_landmarks_are_half_the_window_or_more():
    model, x = _model(shift=0, window=4), _x(side=16)  # N = 16
    patch_attention(model, "auto", landmarks=8)
    with torch.no_grad():
        out = model(x)
    assert attention_plan(model)[0]["ran"] == "exact"
    assert attention_plan(model)[0]["reason"] == "landmarks >= N/2"
    torch.testing.assert_close(out, _reference(model[0], x, "exact"), rtol=0, atol=0)


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


# --------------------------------------------------------------------------------------------
# Factored biases, the byte-bounded store


@pytest.fixture
def store():
    """The process-wide store, emptied, with its budget restored afterwards."""
    budget = STORE.budget
    STORE.clear()
    yield STORE
    STORE.clear()
    STORE.budget = budget


def _owned_kinds(layer) -> set:
    return {key[5] for key in STORE.keys_with_prefix(("layer", layer._bias_owner))}


@pytest.mark.parametrize("shift", [0, 4])
@pytest.mark.parametrize("mode", ["exact", "nystrom"])
def test_factored_bias_gives_the_dense_bias_results(store, shift, mode):
    dense_model, factored_model, x = _model(shift), _model(shift, factored=True), _x(side=24)
    factored_model.load_state_dict(dense_model.state_dict())
    for model in (dense_model, factored_model):
        patch_attention(model, mode)
    with torch.inference_mode():
        dense_out, factored_out = dense_model(x), factored_model(x)
        again = factored_model(x)
    assert factored_model[0].bias_builds == 1  # the description is cached per bias key
    torch.testing.assert_close(factored_out, dense_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(factored_out, _reference(factored_model[0], x, mode), rtol=1e-5, atol=1e-6)
    assert torch.equal(again, factored_out)


@pytest.mark.parametrize("shift", [0, 4])
def test_exact_without_any_cache_builds_the_bias_in_pieces(store, monkeypatch, shift):
    """Budget 0 and 16 KB pieces (one head of one 8x8 window): same result, nothing kept."""
    store.budget = 0
    monkeypatch.setattr(resolve, "CHUNK_BYTES", 64 * 64 * 4)
    model, x = _model(shift, factored=True), _x(side=24)
    pieces = []
    real = resolve.exact_attention
    monkeypatch.setattr(resolve, "exact_attention", lambda q, k, v, bias=None: pieces.append(bias.shape) or real(q, k, v, bias))
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out, _reference(model[0], x, "exact"), rtol=1e-5, atol=1e-6)
    assert store.nbytes == 0 and len(store) == 0
    assert max(math.prod(shape) for shape in pieces) * 4 <= resolve.CHUNK_BYTES
    assert len(pieces) == (3 * (1 + 5) if shift else 3)  # per head: the plain windows at once + 5 mixed ones


def test_shifted_exact_adds_the_mask_only_on_mixed_windows(store, monkeypatch):
    monkeypatch.setattr(resolve, "SMALL_FULL_BYTES", 0)  # no whole (nW, heads, N, N) bias
    model, x = _model(4, factored=True), _x(side=24)  # 3 x 3 windows, 5 of them mixed
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out, _reference(model[0], x, "exact"), rtol=1e-5, atol=1e-6)
    assert _owned_kinds(model[0]) == {"position", "mixed"}
    mixed = [e.value for k, e in store._entries.items() if k[0] == "layer" and k[5] == "mixed"]
    assert [m.shape for m in mixed] == [(5, 3, 64, 64)]
    shared_mask = [e.value for k, e in store._entries.items() if k[0] == "shared"]
    assert [m.shape for m in shared_mask] == [(5, 64, 64)]  # the mask rows of mixed windows, for every layer


def test_cached_biases_never_exceed_the_budget(store):
    store.budget = 200_000  # room for a few pieces, not for every layer's
    layers = [_model(4, seed=s, factored=True) for s in range(6)]
    x = _x(side=24)
    with torch.inference_mode():
        for _ in range(3):
            for model in layers:
                torch.testing.assert_close(model(x), _reference(model[0], x, "exact"), rtol=1e-5, atol=1e-6)
                assert 0 < store.nbytes <= store.budget


def test_nystrom_keeps_pooled_biases_only_and_shares_the_mask(store):
    first, second, x = _model(4, seed=0, factored=True), _model(4, seed=1, factored=True), _x(side=24)
    for model in (first, second):
        patch_attention(model, "nystrom")
    with torch.inference_mode():
        first(x)
        second(x)
    assert _owned_kinds(first[0]) == _owned_kinds(second[0]) == {"pooled-position"}
    shared = [k for k in store._entries if k[0] == "shared"]
    assert len(shared) == 1 and shared[0][3] == "pooled-mask"  # one mask for both layers
    largest = max(e.nbytes for e in store._entries.values())
    assert largest < 3 * 64 * 64 * 4  # nothing as large as one dense (heads, N, N) bias


def test_changed_weights_and_deleted_layers_release_their_entries(store):
    model, other, x = _model(4, seed=0, factored=True), _model(4, seed=1, factored=True), _x(side=24)
    with torch.inference_mode():
        model(x)
        before = model[0].bias_store_entries()
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)
    assert model[0].bias_store_entries() == before > 0  # replaced, not added to
    clone = copy.deepcopy(model)
    assert clone[0]._bias_owner != model[0]._bias_owner
    owner = model[0]._bias_owner
    del model
    gc.collect()
    assert not store.keys_with_prefix(("layer", owner))
