"""Uformer: official semantics (reference fixture), config inference (released Uformer-B layout and
random small configs through the official checkpoint wrapper), any frame size, window resizing, and
the attention-call contract."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines import load_model
from pipelines.attention import patch_attention
from pipelines.errors import CheckpointError
from pipelines.models import uformer, uformer_loading
from pipelines.models.uformer import Uformer, UformerConfig

FIXTURES = Path(os.environ.get("NYSTRA_FIXTURES", "/work/shared/fixtures"))
SMALL = FIXTURES / "uformer_small.pt"
B_KEYS = FIXTURES / "uformer_B_keys.json"
needs_fixtures = pytest.mark.skipif(not SMALL.exists(), reason="reference fixtures not available")

TINY = UformerConfig(embed_dim=4, depths=(1, 2, 2, 2, 2, 2, 2, 2, 1))


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every float parameter (zero-initialised ones too), as the fixtures were made."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def save_official(model: torch.nn.Module, path: Path) -> Path:
    """Save as the released ``model_best.pth``: DataParallel keys, epoch and optimizer state around."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.Adam(params)
    params[0].grad = torch.ones(3)
    optimizer.step()
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 250, "state_dict": state, "optimizer": optimizer.state_dict()}, path)
    return path


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def reference():
    return torch.load(SMALL, weights_only=True)


@pytest.fixture(scope="module")
def small_checkpoint(reference, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("uformer") / "model_best.pth"
    torch.save(reference["state_dict"], path)  # {'epoch', 'state_dict': {'module.' + k: v}}
    return path


# --------------------------------------------------------------------------------------------------
# Official outputs


@needs_fixtures
def test_reproduces_official_output(reference, small_checkpoint):
    model = load_model(small_checkpoint)
    assert isinstance(model, Uformer) and not model.training
    assert model.info.arch == "uformer" and model.info.size_multiple == 128
    out = run(model, reference["input"])
    assert out.shape == reference["output"].shape
    assert torch.allclose(out, reference["output"], atol=1e-4, rtol=0)


@needs_fixtures
def test_square_padding_reproduces_official_test_pipeline(reference, small_checkpoint):
    model = load_model(small_checkpoint)
    model.pad_mode = "square"  # expand2square(factor=128), forward, crop back
    out = run(model, reference["extra"]["input_rect"])
    assert out.shape == reference["extra"]["output_rect"].shape == (1, 3, 100, 120)
    assert torch.allclose(out, reference["extra"]["output_rect"], atol=1e-4, rtol=0)
    model.pad_mode = "multiple"  # the default pads far less (bottom/right, mirrored): another result
    default = run(model, reference["extra"]["input_rect"])
    assert default.shape == out.shape and not torch.allclose(default, out, atol=1e-4)


@needs_fixtures
def test_fixture_config_inferred(reference):
    sd = {k[len("module."):]: v for k, v in reference["state_dict"]["state_dict"].items()}
    config = uformer_loading.infer_config(sd)
    for name, value in reference["config"].items():
        got = getattr(config, name)
        assert (tuple(got) if isinstance(got, tuple) else got) == (
            tuple(value) if isinstance(value, list) else value), name


# --------------------------------------------------------------------------------------------------
# Config inference and official checkpoint layout


def _released_state_dict():
    keys = json.loads(B_KEYS.read_text())["keys"]
    return keys, {k: torch.zeros(shape, dtype=torch.int64 if k.endswith("relative_position_index") else None)
                  for k, shape in keys.items()}


@pytest.mark.skipif(not B_KEYS.exists(), reason="reference fixtures not available")
def test_released_uformer_b_built_from_its_keys():
    keys, sd = _released_state_dict()
    config = uformer_loading.infer_config(sd)
    assert config == UformerConfig(embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1),
                                   num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2), win_size=8, img_size=128,
                                   mlp_ratio=4.0, token_projection="linear", token_mlp="leff",
                                   modulator=True, in_chans=3, dd_in=3)
    model = uformer_loading.from_state_dict(sd)  # strict load
    built = model.state_dict()
    assert list(built) == list(keys)
    assert all(list(built[k].shape) == shape for k, shape in keys.items())
    # the bottleneck (8x8 at img_size 128) never shifts; the level above does on odd blocks
    assert [b.shift for b in model.conv.blocks] == [0, 0]
    assert [b.shift for b in model.encoderlayer_3.blocks] == [0, 4] * 4
    assert model.info.size_multiple == 128


CONFIGS = {
    "tiny": TINY,
    "ffn_no_modulator_no_qkv_bias": replace(TINY, token_mlp="ffn", modulator=False, qkv_bias=False),
    "conv_projection": replace(TINY, depths=(1,) * 9, token_projection="conv"),
    "window4_mlp2": replace(TINY, embed_dim=6, num_heads=(1, 2, 3, 3, 6, 6, 3, 2, 1), win_size=4, mlp_ratio=2.0),
    "img64_clamped": replace(TINY, img_size=64, depths=(2,) * 9),  # level 4 clamps to a 4x4 window
    "dd_in4_grey_out": replace(TINY, dd_in=4, in_chans=1, depths=(1,) * 9),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_config_round_trip(name, tmp_path):
    config = CONFIGS[name]
    model = randomised(Uformer(config), seed=len(name))
    loaded = load_model(save_official(model, tmp_path / "model_best.pth"))
    assert loaded.config == config
    x = torch.rand(1, config.dd_in, 64, 96, generator=torch.Generator().manual_seed(1))
    expected = run(model, x)
    assert expected.shape == (1, config.in_chans, 64, 96)
    assert torch.equal(run(loaded, x), expected)


def test_bottleneck_shift_decided_by_img_size_not_input():
    model = randomised(Uformer(TINY))
    recorder = AttendRecorder(model)
    run(model, torch.rand(1, 3, 256, 256))  # bottleneck is 16x16 here but was 8x8 at img_size 128
    first = sum(TINY.depths[:4])  # calls come stage by stage; the bottleneck follows 4 encoders
    bottleneck = recorder.calls[first:first + TINY.depths[4]]
    assert [c["q"][1] for c in bottleneck] == [4, 4]  # 2x2 windows of 8x8
    assert [c["key"] for c in bottleneck] == [("uformer", 8, 0)] * 2
    assert recorder.calls[first - 1]["key"] == ("uformer", 8, 4, 32, 32)  # encoderlayer_3 does shift
    shifted = replace(TINY, img_size=256)  # built for 256: the bottleneck's odd block shifts
    assert [b.shift for b in Uformer(shifted).conv.blocks] == [0, 4]


def test_img_size_inferred_from_clamped_windows():
    for img_size, win_size in ((64, 8), (32, 8), (128, 16)):
        config = replace(TINY, img_size=img_size, win_size=win_size, modulator=False)
        assert uformer_loading.infer_config(Uformer(config).state_dict()).img_size == img_size
    # unclamped at 128 and 256 alike: the released 128 is assumed
    assert uformer_loading.infer_config(Uformer(replace(TINY, img_size=256)).state_dict()).img_size == 128


def test_matches_and_errors(tmp_path):
    sd = Uformer(TINY).state_dict()
    assert uformer_loading.matches(sd)
    assert not uformer_loading.matches({"conv_first.weight": torch.zeros(1), "layers.0.x": torch.zeros(1)})
    broken = dict(sd)
    del broken["decoderlayer_1.blocks.1.norm2.bias"]
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing decoderlayer_1.blocks.1.norm2.bias"):
        load_model(tmp_path / "broken.pth")
    wrong = dict(sd)
    wrong["conv.blocks.0.attn.qkv.to_q.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="shape"):
        uformer_loading.from_state_dict(wrong)


# --------------------------------------------------------------------------------------------------
# Any frame size


def transposed(model: Uformer) -> Uformer:
    """The same network mirrored about the main diagonal: f_T(x^T) must equal f(x)^T."""
    mirror = Uformer(model.config)
    sd = {}
    for key, value in model.state_dict().items():
        if value.dim() == 4:  # conv / transposed-conv kernels
            value = value.transpose(-1, -2)
        elif key.endswith("relative_position_bias_table"):  # rows are (dy, dx) offsets -> (dx, dy)
            side = math.isqrt(value.shape[0])
            value = value.view(side, side, -1).transpose(0, 1).reshape(value.shape)
        elif key.endswith("modulator.weight"):  # rows are (row, col) positions in the window
            side = math.isqrt(value.shape[0])
            value = value.view(side, side, -1).transpose(0, 1).reshape(value.shape)
        sd[key] = value.contiguous()
    mirror.load_state_dict(sd)
    return mirror.eval()


def test_non_square_input_keeps_rows_and_columns_apart():
    model = randomised(Uformer(TINY))
    x = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(2))
    out = run(model, x)
    mirrored = run(transposed(model), x.transpose(-1, -2).contiguous())
    assert torch.allclose(mirrored.transpose(-1, -2), out, atol=1e-5)
    assert not torch.allclose(run(model, x.transpose(-1, -2).contiguous()).transpose(-1, -2), out, atol=1e-3)


def test_pad_modes_against_explicit_padding():
    model = randomised(Uformer(TINY))
    x = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():  # already a multiple: no padding in the default mode
        assert torch.equal(model(x), model.forward_padded(x))
        model.pad_mode = "square"  # official expand2square: zero, centred, 256x256
        square = torch.zeros(1, 3, 256, 256)
        square[:, :, 64:192, :] = x
        assert torch.equal(model(x), model.forward_padded(square)[:, :, 64:192, :])
        odd = torch.rand(1, 3, 70, 45)
        square = torch.zeros(1, 3, 128, 128)
        square[:, :, 29:99, 41:86] = odd  # (128-70)//2, (128-45)//2
        assert torch.equal(model(odd), model.forward_padded(square)[:, :, 29:99, 41:86])
        model.pad_mode = "multiple"
        assert torch.equal(model(odd), model.forward_padded(uformer.reflect_pad_to(odd, 128, 128))[..., :70, :45])
        with pytest.raises(ValueError):
            model.forward_padded(odd)
    with pytest.raises(ValueError):
        model.pad_mode = "reflect"


@pytest.mark.parametrize("h,w", [(5, 7), (1, 3), (3, 1), (40, 17)])
def test_reflect_pad_to_mirrors_periodically(h, w):
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    padded = uformer.reflect_pad_to(x, 128, 64)
    assert padded.shape == (1, 1, 128, 64)

    def mirror(n: int, total: int) -> torch.Tensor:
        if n == 1:
            return torch.zeros(total, dtype=torch.long)
        pos = torch.arange(total) % (2 * (n - 1))
        return torch.where(pos < n, pos, 2 * (n - 1) - pos)

    assert torch.equal(padded, x[:, :, mirror(h, 128)][:, :, :, mirror(w, 64)])


# --------------------------------------------------------------------------------------------------
# Window resizing


def test_resize_to_trained_window_is_identity():
    model = randomised(Uformer(TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 128, 128)
    expected = run(model, x)
    model.resize_window(8)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(run(model, x), expected)


def test_resize_window_16_follows_construction_rule(tmp_path):
    model = randomised(Uformer(TINY))
    tables = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("bias_table")}
    path = save_official(model, tmp_path / "model_best.pth")
    resized = load_model(path, window=16)
    assert resized.config.win_size == 16 and resized.info.size_multiple == 128
    windows = {name: [(b.window, b.shift) for b in getattr(resized, name).blocks] for name in uformer.STAGES}
    assert windows["encoderlayer_1"] == [(16, 0), (16, 8)]
    assert windows["encoderlayer_3"] == windows["decoderlayer_0"] == [(16, 0), (16, 0)]  # 16 at img 128
    assert windows["conv"] == [(8, 0), (8, 0)]  # clamped to 8 as before: untouched
    sd = resized.state_dict()
    assert torch.equal(sd["conv.blocks.1.attn.relative_position_bias_table"],
                       tables["conv.blocks.1.attn.relative_position_bias_table"])
    assert torch.equal(sd["encoderlayer_0.blocks.0.attn.relative_position_index"],
                       uformer.relative_position_index(16))
    assert sd["decoderlayer_0.blocks.0.modulator.weight"].shape == (256, 64)
    old = tables["encoderlayer_2.blocks.1.attn.relative_position_bias_table"]
    new = sd["encoderlayer_2.blocks.1.attn.relative_position_bias_table"]
    assert new.shape == (31 * 31, 4)
    assert torch.allclose(new[15 * 31 + 15], old[7 * 15 + 7], atol=1e-6)  # zero offset stays put
    expected = F.interpolate(old.T.reshape(1, 4, 15, 15), size=(31, 31), mode="bicubic", align_corners=False)
    assert torch.allclose(new, expected.reshape(4, -1).T, atol=1e-6)
    x = torch.rand(1, 3, 128, 128)
    out = run(resized, x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a resized model is a plain Uformer again: saved and reloaded, it is inferred back as is
    again = load_model(save_official(resized, tmp_path / "resized.pth"))
    assert again.config == resized.config and torch.equal(run(again, x), out)


def test_modulator_resized_as_a_grid():
    block = uformer.LeWinTransformerBlock(8, 2, 4, 0, TINY, modulator=True)
    with torch.no_grad():
        grid = torch.arange(16.0).view(4, 4)  # value = 4*row + col, constant across channels
        block.modulator.weight.copy_(grid.reshape(16, 1).expand(16, 8))
    block.set_window(8, 4)
    weight = block.modulator.weight
    assert weight.shape == (64, 8) and block.attn.relative_position_bias_table.shape == (225, 2)
    expected = F.interpolate(grid.view(1, 1, 4, 4), size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(weight[:, 3], expected.view(64), atol=1e-5)
    rows = weight[:, 0].view(8, 8)
    assert (rows[1:] > rows[:-1]).all() and (rows[:, 1:] > rows[:, :-1]).all()


# --------------------------------------------------------------------------------------------------
# Attention contract


class AttendRecorder:
    """Wraps every attention layer's ``attend`` to record what the model hands over."""

    def __init__(self, model, inner=None):
        self.calls = []
        for module in model.modules():
            if isinstance(module, uformer.WindowAttention):
                module.attend = self._wrap(inner or module.attend)

    def _wrap(self, inner):
        def attend(q, k, v, grid, make_bias=None, bias_key=None):
            self.calls.append(dict(q=tuple(q.shape), grid=tuple(grid), key=bias_key,
                                   bias=lambda: tuple(make_bias().shape)))
            return inner(q, k, v, grid, make_bias=make_bias, bias_key=bias_key)
        return attend


def test_every_block_attends_through_the_base_class():
    model = randomised(Uformer(TINY))
    recorder = AttendRecorder(model)
    run(model, torch.rand(1, 3, 128, 256))
    assert len(recorder.calls) == sum(TINY.depths)
    first, second = recorder.calls[1], recorder.calls[2]  # encoderlayer_1: 64x128 tokens, 2 heads, d 4
    assert first["q"] == (1, 8 * 16, 2, 64, 4) and first["grid"] == (8, 8)
    assert first["key"] == ("uformer", 8, 0) and first["bias"]() == (2, 64, 64)
    assert second["key"] == ("uformer", 8, 4, 64, 128) and second["bias"]() == (128, 2, 64, 64)


def test_forward_does_no_bias_work_outside_make_bias(monkeypatch):
    model = randomised(Uformer(TINY))
    work = []
    monkeypatch.setattr(uformer.WindowAttention, "position_bias", lambda self: work.append(1))
    monkeypatch.setattr(uformer, "shift_attention_mask", lambda *a, **k: work.append(1))
    AttendRecorder(model, inner=lambda q, k, v, grid, make_bias=None, bias_key=None: v)
    run(model, torch.rand(1, 3, 128, 128))
    assert work == []


def test_conv_projection_layout():
    """Official 'conv' projection: each window is its own zero-padded image; channels split (head, d)."""
    torch.manual_seed(0)
    projection = uformer.ConvProjection(dim=8, heads=2).eval()
    x = torch.randn(1, 16, 24, 8)
    with torch.no_grad():
        q, k, v = projection(x, 8)
        assert q.shape == k.shape == v.shape == (1, 6, 2, 64, 4)
        for index in (0, 4):
            r, c = divmod(index, 3)
            image = x[:, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].permute(0, 3, 1, 2)
            for got, conv in ((q, projection.to_q), (k, projection.to_k), (v, projection.to_v)):
                expected = conv(image).view(2, 4, 64).transpose(-1, -2)  # 'b (h d) l w -> b h (l w) d'
                assert torch.allclose(got[0, index], expected, atol=1e-6)


def test_shift_mask_matches_region_rule():
    h, w, window, shift = 16, 24, 8, 4
    mask = uformer.shift_attention_mask(h, w, window, shift)
    assert mask.shape == ((h // window) * (w // window), 64, 64)
    band = lambda i, n: 0 if i < n - window else (1 if i < n - shift else 2)  # noqa: E731
    for win_index in range(mask.shape[0]):
        r0, c0 = (win_index // (w // window)) * window, (win_index % (w // window)) * window
        regions = [(band(r0 + i // window, h), band(c0 + i % window, w)) for i in range(64)]
        for i in range(0, 64, 7):
            for j in range(0, 64, 5):
                assert mask[win_index, i, j] == (0.0 if regions[i] == regions[j] else -100.0)


@needs_fixtures
@pytest.mark.parametrize("window", [8, 16])
def test_exact_vs_nystrom(reference, small_checkpoint, window):
    x = reference["input"]
    exact = run(load_model(small_checkpoint, window=window), x)
    model = load_model(small_checkpoint, window=window, attention="nystrom", landmarks=16, iters=2)
    assert {m.attention_mode for m in model.modules() if isinstance(m, uformer.WindowAttention)} == {"nystrom"}
    nystrom = run(model, x)
    # what the approximation must beat: attention replaced by a plain average over each window
    uniform_model = load_model(small_checkpoint, window=window)
    AttendRecorder(uniform_model, inner=lambda q, k, v, grid, make_bias=None, bias_key=None:
                   v.mean(-2, keepdim=True).expand_as(v))
    uniform = run(uniform_model, x)
    psnr, floor = _psnr(exact, nystrom), _psnr(exact, uniform)
    print(f"Uformer fixture weights, window {window}, 128x128: exact vs nystrom (m=16, T=2) PSNR {psnr:.2f} dB"
          f" (uniform-attention baseline {floor:.2f} dB)")
    assert nystrom.shape == exact.shape and torch.isfinite(nystrom).all()
    assert not torch.equal(nystrom, exact)
    assert psnr > floor
