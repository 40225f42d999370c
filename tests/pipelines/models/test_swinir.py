"""SwinIR: official semantics (reference fixture), config inference for every variant and every
released checkpoint layout, window resizing, and the attention-call contract."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines import load_model
from pipelines.models import swinir, swinir_loading
from pipelines.models.swinir import SwinIR, SwinIRConfig

FIXTURES = Path(os.environ.get("NYSTRA_FIXTURES", "/work/shared/fixtures"))
CLASSICAL_X2 = FIXTURES / "swinir_classical_x2.pt"
RELEASED_KEYS = FIXTURES / "swinir_released_keys.json"
needs_fixtures = pytest.mark.skipif(not CLASSICAL_X2.exists(), reason="reference fixtures not available")


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every float parameter/buffer (zero-initialised ones too) except the exact masks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # persistent state only (not the mean)
            if tensor.is_floating_point() and not name.endswith("attn_mask"):
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def reference():
    return torch.load(CLASSICAL_X2, weights_only=True)


@pytest.fixture(scope="module")
def x2_checkpoint(reference, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("swinir") / "classical_x2.pth"
    torch.save(reference["state_dict"], path)  # {'params': sd}, as released
    return path


# --------------------------------------------------------------------------------------------
# Official outputs


@needs_fixtures
def test_reproduces_official_outputs(reference, x2_checkpoint):
    model = load_model(x2_checkpoint)
    assert isinstance(model, SwinIR) and not model.training
    out = run(model, reference["input"])
    assert out.shape == reference["output"].shape
    assert torch.allclose(out, reference["output"], atol=1e-4, rtol=0)
    odd = run(model, reference["extra"]["input_odd"])  # not a window multiple: padded inside
    assert odd.shape == reference["extra"]["output_odd"].shape
    assert torch.allclose(odd, reference["extra"]["output_odd"], atol=1e-4, rtol=0)


@needs_fixtures
def test_stored_mask_used_exactly_at_img_size(reference):
    """Official semantics: the stored attn_mask serves the img_size grid, other sizes compute it."""
    sd = dict(reference["state_dict"]["params"])
    assert sd["layers.0.residual_group.blocks.1.attn_mask"].shape == (36, 64, 64)  # img_size 48
    tampered = dict(sd)
    tampered["layers.0.residual_group.blocks.1.attn_mask"] = torch.zeros(36, 64, 64)
    plain, changed = swinir_loading.from_state_dict(sd).eval(), swinir_loading.from_state_dict(tampered).eval()
    at_img_size, elsewhere = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 40, 56)
    assert not torch.allclose(run(plain, at_img_size), run(changed, at_img_size), atol=1e-4)
    assert torch.equal(run(plain, elsewhere), run(changed, elsewhere))
    # loading wrote into that block's own buffer only: other blocks and the shared masks are exact
    exact_mask = sd["layers.1.residual_group.blocks.1.attn_mask"]
    assert torch.equal(changed.layers[1].residual_group.blocks[1].attn_mask, exact_mask)
    assert torch.equal(swinir.shift_mask(8, 4, 48, 48), exact_mask)


def test_shift_mask_matches_region_rule():
    """Token pairs from different regions of the rolled map get -100, the official value."""
    ws, shift, size = 4, 2, 8
    mask = swinir.shift_mask(ws, shift, size, size)
    assert mask.shape == (4, 16, 16)
    band = [0] * (size - ws) + [1] * (ws - shift) + [2] * shift
    region = np.array([[3 * band[r] + band[c] for c in range(size)] for r in range(size)])
    for w in range(4):
        r0, c0 = (w // 2) * ws, (w % 2) * ws
        ids = region[r0:r0 + ws, c0:c0 + ws].reshape(-1)
        expected = np.where(ids[:, None] != ids[None, :], -100.0, 0.0)
        assert np.array_equal(mask[w].numpy(), expected)


# --------------------------------------------------------------------------------------------
# Config inference for every variant (small sizes), through load_model and each wrapper

VARIANTS = {
    "classical_x2": SwinIRConfig(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 3), window_size=8,
                                 mlp_ratio=2, upscale=2, upsampler="pixelshuffle"),
    "classical_x3": SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                 mlp_ratio=2, upscale=3, upsampler="pixelshuffle"),
    "classical_x4": SwinIRConfig(img_size=16, embed_dim=12, depths=(3,), num_heads=(2,), window_size=8,
                                 mlp_ratio=2, upscale=4, upsampler="pixelshuffle"),
    "classical_x8": SwinIRConfig(img_size=8, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
                                 mlp_ratio=2, upscale=8, upsampler="pixelshuffle"),
    "lightweight_x3": SwinIRConfig(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=8,
                                   mlp_ratio=2, upscale=3, upsampler="pixelshuffledirect"),
    "lightweight_x4": SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                   mlp_ratio=2, upscale=4, upsampler="pixelshuffledirect"),
    "real_x4_1conv": SwinIRConfig(img_size=16, embed_dim=16, depths=(2,), num_heads=(2,), window_size=8,
                                  mlp_ratio=2, upscale=4, upsampler="nearest+conv"),
    "real_x2_3conv": SwinIRConfig(img_size=16, embed_dim=16, depths=(2, 2), num_heads=(4, 4), window_size=8,
                                  mlp_ratio=2, upscale=2, upsampler="nearest+conv", resi_connection="3conv"),
    "gray_dn": SwinIRConfig(img_size=16, in_chans=1, embed_dim=12, depths=(2, 2), num_heads=(2, 2),
                            window_size=8, mlp_ratio=2, upscale=1, upsampler=""),
    "color_dn": SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(3,), window_size=8,
                             mlp_ratio=4, upscale=1, upsampler="", qkv_bias=False),
    "gray_car": SwinIRConfig(img_size=14, in_chans=1, embed_dim=12, depths=(2, 2), num_heads=(2, 2),
                             window_size=7, mlp_ratio=2, upscale=1, img_range=255.0, upsampler=""),
    "color_car": SwinIRConfig(img_size=21, embed_dim=12, depths=(2,), num_heads=(2,), window_size=7,
                              mlp_ratio=2, upscale=1, img_range=255.0, upsampler=""),
    # img_size <= window: the official rule gives one unshifted window per training crop, no masks
    "rule_no_shift": SwinIRConfig(img_size=8, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                  mlp_ratio=2, upscale=2, upsampler="pixelshuffle"),
    "no_patch_norm": SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                  mlp_ratio=2, upscale=1, upsampler="", patch_norm=False),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_round_trip(name, tmp_path):
    config = VARIANTS[name]
    model = randomised(SwinIR(config), seed=len(name))
    sd = model.state_dict()
    assert swinir_loading.matches(sd)
    assert swinir_loading.infer_config(sd) == config
    size = config.img_size
    inputs = [torch.rand(1, config.in_chans, size, size),                     # stored-mask grid
              torch.rand(2, config.in_chans, size + 3, max(size - 5, 3))]     # padded inside
    expected = [run(model, x) for x in inputs]
    for x, y in zip(inputs, expected):
        assert y.shape[-2:] == tuple(s * config.upscale for s in x.shape[-2:])
    for wrapper in (None, "params", "params_ema"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save(sd if wrapper is None else {wrapper: sd}, path)
        loaded = load_model(path)
        assert loaded.config == config
        assert loaded.info.scale == config.upscale and loaded.info.in_channels == config.in_chans
        for x, y in zip(inputs, expected):
            assert torch.allclose(run(loaded, x), y, atol=1e-6, rtol=0)


def _official_order(model: SwinIR, x: torch.Tensor) -> torch.Tensor:
    """The official forward's order of operations around the body: normalise, body, head,
    then ``/ img_range + mean`` on the full-size output (our forward folds that last step into
    the output convolution)."""
    height, width = x.shape[-2:]
    x = swinir.pad_to_multiple(x, model.window_size)
    mean, r = model.mean, model.img_range
    x = (x - mean) * r
    feat = model.conv_first(x)
    body = model.conv_after_body(model.forward_features(feat)) + feat
    if model.upsampler == "":
        out = x + model.conv_last(body)
    elif model.upsampler == "pixelshuffle":
        out = model.conv_last(model.upsample(model.conv_before_upsample(body)))
    elif model.upsampler == "pixelshuffledirect":
        out = model.upsample(body)
    else:
        feat = model.conv_before_upsample(body)
        feat = model.lrelu(model.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        if model.upscale == 4:
            feat = model.lrelu(model.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = model.conv_last(model.lrelu(model.conv_hr(feat)))
    out = out / r + mean
    return out[..., :height * model.upscale, :width * model.upscale]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_output_scaling_folded_into_the_last_conv_equals_the_official_order(name):
    config = VARIANTS[name]
    model = randomised(SwinIR(config), seed=3 + len(name))
    x = torch.rand(1, config.in_chans, config.img_size + 2, config.img_size + 5)
    with torch.inference_mode():
        expected = _official_order(model, x)
        got = model(x)
    # float32 rounding of the same sums in another order; a missing mean or 1/img_range is >= 0.4
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    trained = model(x)  # autograd recording: the out-of-place branch folds the same way
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), expected, rtol=0, atol=2e-5)


def test_model_info_task():
    assert SwinIR(VARIANTS["classical_x2"]).info.task == "sr"
    assert SwinIR(VARIANTS["gray_dn"]).info.task == "denoise"
    assert SwinIR(VARIANTS["color_car"]).info.task == "car"
    assert SwinIR(VARIANTS["color_car"]).info.size_multiple == 7


def test_img_range_inferred_from_window_and_overridable():
    sd = SwinIR(VARIANTS["gray_car"]).state_dict()
    assert swinir_loading.infer_config(sd).img_range == 255.0
    assert swinir_loading.infer_config(SwinIR(VARIANTS["gray_dn"]).state_dict()).img_range == 1.0
    assert swinir_loading.from_state_dict(sd, img_range=1.0).img_range == 1.0


# --------------------------------------------------------------------------------------------
# The 27 released checkpoints: inferred config and key/shape layout


def _released():
    return json.loads(RELEASED_KEYS.read_text()) if RELEASED_KEYS.exists() else {}


def _meta_state_dict(shapes):
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


@needs_fixtures
def test_released_configs_and_layouts():
    released = _released()
    assert len(released) == 27
    for name, entry in released.items():
        config = swinir_loading.infer_config(_meta_state_dict(entry["keys"]))
        inferred = asdict(config)
        for key, value in entry["config"].items():
            got = list(inferred[key]) if isinstance(inferred[key], tuple) else inferred[key]
            assert got == value, f"{name}: {key} inferred {got}, released {value}"
        with torch.device("meta"):
            model = SwinIR(config)
        layout = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert layout == entry["keys"], name


@needs_fixtures
@pytest.mark.slow
@pytest.mark.parametrize("name", ["002_lightweightSR_DIV2K_s64w8_SwinIR-S_x3.pth",
                                  "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
                                  "006_colorCAR_DFWB_s126w7_SwinIR-M_jpeg10.pth"])
def test_released_layout_loads_strictly(name, tmp_path):
    entry = _released()[name]
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(shape, generator=gen) * 0.02 if not k.endswith("index") else
              torch.zeros(shape, dtype=torch.int64)) for k, shape in entry["keys"].items()}
    for key in sd:  # the real index and masks, as released files hold them
        if key.endswith("relative_position_index"):
            sd[key] = swinir.relative_position_index(entry["config"]["window_size"])
        elif key.endswith("attn_mask"):
            ws, size = entry["config"]["window_size"], entry["config"]["img_size"]
            sd[key] = swinir.shift_mask(ws, ws // 2, size, size)
    path = tmp_path / name
    torch.save({entry["param_key"]: sd}, path)
    model = load_model(path)
    assert model.config.upscale == entry["config"]["upscale"]
    x = torch.rand(1, entry["config"]["in_chans"], 9, 12)
    assert run(model, x).shape[-2:] == (9 * model.upscale, 12 * model.upscale)


# --------------------------------------------------------------------------------------------
# Window resizing


def test_relative_position_index_definition():
    w = 3
    index = swinir.relative_position_index(w)
    tokens = [(r, c) for r in range(w) for c in range(w)]
    for i, (ri, ci) in enumerate(tokens):
        for j, (rj, cj) in enumerate(tokens):
            assert index[i, j] == (ri - rj + w - 1) * (2 * w - 1) + (ci - cj + w - 1)


def test_bias_table_resized_bicubically():
    attn = swinir.WindowAttention(dim=8, window_size=4, num_heads=2)
    with torch.no_grad():
        attn.relative_position_bias_table[:, 0] = 0.7   # constant head stays constant
        attn.relative_position_bias_table[:, 1] = torch.randn(49)
    head1 = attn.relative_position_bias_table[:, 1].view(1, 1, 7, 7).clone()
    attn.resize_window(9)
    table = attn.relative_position_bias_table
    assert table.shape == (17 * 17, 2) and attn.relative_position_index.shape == (81, 81)
    assert torch.allclose(table[:, 0], torch.full((289,), 0.7))
    expected = F.interpolate(head1, size=(17, 17), mode="bicubic", align_corners=False).view(-1)
    assert torch.allclose(table[:, 1], expected, atol=1e-6)
    # centre of the table = zero offset, same value before and after
    assert torch.isclose(table[8 * 17 + 8, 1], head1.view(-1)[3 * 7 + 3], atol=1e-6)


class AttendRecorder:
    """Wraps every attention layer's ``attend`` to record what the model hands over."""

    def __init__(self, model, inner=None):
        self.calls = []
        for module in model.modules():
            if isinstance(module, swinir.WindowAttention):
                module.attend = self._wrap(module, inner or module.attend)

    def _wrap(self, module, inner):
        def attend(q, k, v, grid, make_bias=None, bias_key=None):
            self.calls.append(dict(q=tuple(q.shape), grid=tuple(grid), key=bias_key,
                                   bias=lambda: tuple(make_bias().shape)))
            return inner(q, k, v, grid, make_bias=make_bias, bias_key=bias_key)
        return attend


@needs_fixtures
def test_window_32_runs_on_32x32_windows(x2_checkpoint):
    model = load_model(x2_checkpoint, window=32)
    assert model.window_size == 32 and model.info.size_multiple == 32
    recorder = AttendRecorder(model)
    out = run(model, torch.rand(1, 3, 40, 56))   # padded to 64x64: 4 windows of 32x32
    assert out.shape == (1, 3, 80, 112) and torch.isfinite(out).all()
    assert len(recorder.calls) == 4
    for i, call in enumerate(recorder.calls):
        shift = 16 if i % 2 else 0              # odd blocks shift by W//2 even though W > img_size 48
        assert call["grid"] == (32, 32) and call["q"] == (1, 4, 6, 1024, 10)
        assert call["key"] == ("swin", 32, shift, 64, 64)
        assert call["bias"]() == ((4, 6, 1024, 1024) if shift else (6, 1024, 1024))
    assert "layers.0.residual_group.blocks.1.attn_mask" not in model.state_dict()


def test_forward_does_no_bias_work_outside_make_bias(monkeypatch):
    model = randomised(SwinIR(VARIANTS["classical_x2"]))
    gathers = []
    monkeypatch.setattr(swinir.WindowAttention, "relative_position_bias",
                        lambda self: gathers.append(1))
    monkeypatch.setattr(swinir, "shift_mask", lambda *a, **k: gathers.append(1))
    AttendRecorder(model, inner=lambda q, k, v, grid, make_bias=None, bias_key=None: v)
    run(model, torch.rand(1, 3, 24, 16))
    assert gathers == []


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a - b) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@needs_fixtures
def test_window_32_exact_vs_nystrom(x2_checkpoint):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exact = run(load_model(x2_checkpoint, window=32, attention="exact"), x)
    nystrom = run(load_model(x2_checkpoint, window=32, attention="nystrom", landmarks=16, iters=2), x)
    uniform_model = load_model(x2_checkpoint, window=32)  # every query attends to the window mean
    AttendRecorder(uniform_model, inner=lambda q, k, v, grid, make_bias=None, bias_key=None:
                   v.mean(-2, keepdim=True).expand_as(v))
    uniform = run(uniform_model, x)
    psnr, psnr_uniform = _psnr(exact, nystrom), _psnr(exact, uniform)
    print(f"SwinIR x2 (fixture weights) at window 32, 64x64 input: exact vs nystrom PSNR {psnr:.2f} dB "
          f"(exact vs uniform attention {psnr_uniform:.2f} dB)")
    assert torch.isfinite(nystrom).all()
    assert 40.0 < psnr < math.inf          # close, yet really another kernel
    assert psnr > psnr_uniform + 3.0       # and closer than attention that ignores q and k


@needs_fixtures
def test_resize_to_trained_window_is_identity(reference, x2_checkpoint):
    plain = load_model(x2_checkpoint)
    resized = load_model(x2_checkpoint, window=8)
    kept = {k: v for k, v in plain.state_dict().items() if not k.endswith("attn_mask")}
    assert resized.state_dict().keys() == kept.keys()  # masks are rebuilt from geometry after a resize
    assert all(torch.equal(resized.state_dict()[k], v) for k, v in kept.items())
    for x in (reference["input"], reference["extra"]["input_odd"], torch.rand(1, 3, 48, 48)):
        assert torch.equal(run(plain, x), run(resized, x))


@needs_fixtures
def test_large_window_pads_small_inputs(x2_checkpoint):
    model = load_model(x2_checkpoint, window=24)
    for h, w in ((40, 56), (5, 13), (1, 30)):     # the last two cannot be reflect-padded to 24
        out = run(model, torch.rand(1, 3, h, w))
        assert out.shape == (1, 3, 2 * h, 2 * w) and torch.isfinite(out).all()


@needs_fixtures
@pytest.mark.slow
def test_window_64_on_small_input(x2_checkpoint):
    out = run(load_model(x2_checkpoint, window=64), torch.rand(1, 3, 40, 56))
    assert out.shape == (1, 3, 80, 112) and torch.isfinite(out).all()


@pytest.mark.parametrize("h,w,multiple", [(5, 7, 4), (8, 8, 8), (20, 13, 64), (1, 3, 4), (2, 9, 7)])
def test_pad_to_multiple(h, w, multiple):
    x = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    padded = swinir.pad_to_multiple(x, multiple)
    ph, pw = -h % multiple, -w % multiple
    assert padded.shape[-2:] == (h + ph, w + pw)
    # numpy's reflect continues the mirror pattern past the edge, like ours (edge for size 1)
    expected = x[0, 0].numpy()
    for axis, pad in ((0, ph), (1, pw)):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (0, pad)
        expected = np.pad(expected, widths, mode="reflect" if expected.shape[axis] > 1 else "edge")
    assert np.array_equal(padded[0, 0].numpy(), expected)
    if ph < h and pw < w:  # where the official reflect padding works, it is what we do
        assert torch.equal(padded, F.pad(x, (0, pw, 0, ph), mode="reflect"))


TINY = SwinIRConfig(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=8,
                    mlp_ratio=2, upscale=1, upsampler="")


def test_trains_after_inference_mode_built_the_geometry():
    # Cached window geometry first built under inference_mode used to be an inference tensor,
    # which a later forward recording autograd cannot save for backward.
    torch.manual_seed(0)
    model = SwinIR(TINY)
    x = torch.rand(1, 3, 24, 24)
    with torch.inference_mode():
        model(x)
    loss = model(x).square().mean()
    loss.backward()
    assert model.conv_first.weight.grad is not None


@pytest.mark.parametrize("attention", ["exact", "nystrom"])
def test_runs_under_cpu_bfloat16_autocast(attention):
    # The reused inference buffers are float32; under autocast the linears' inputs are bfloat16,
    # and writing those products into the float32 buffers raised a dtype error.
    from pipelines.attention import patch_attention

    torch.manual_seed(0)
    model = patch_attention(SwinIR(TINY).eval(), attention)
    x = torch.rand(1, 3, 24, 24)
    with torch.inference_mode():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16  # the products did run in bfloat16
    assert (out.float() - reference).abs().max() < 0.05


WIDE = SwinIRConfig(img_size=16, embed_dim=60, depths=(2,), num_heads=(6,), window_size=8, mlp_ratio=2,
                    upscale=1, upsampler="")


def _attend_inputs(model, x, monkeypatch):
    """The q of every attention call of one inference forward."""
    seen = []
    original = swinir.WindowAttention.attend

    def spy(self, q, k, v, grid, make_bias=None, bias_key=None):
        seen.append(q)
        return original(self, q, k, v, grid, make_bias, bias_key)

    monkeypatch.setattr(swinir.WindowAttention, "attend", spy)
    with torch.inference_mode():
        out = model(x)
    monkeypatch.undo()
    return out, seen


@pytest.mark.parametrize("attention", ["nystrom", "exact"])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_head_major_qkv_layout_gives_the_same_output(attention, qkv_bias, monkeypatch):
    from pipelines.attention import patch_attention

    torch.manual_seed(0)
    model = patch_attention(SwinIR(replace(WIDE, qkv_bias=qkv_bias)).eval(), attention)
    x = torch.rand(2, 3, 24, 40)  # shifted windows, 2 x 3 x 5 windows
    outs = {}
    for layout in ("tokens", "heads"):
        for layer in model.modules():
            if isinstance(layer, swinir.WindowAttention):
                layer.qkv_layout = layout
        outs[layout], seen = _attend_inputs(model, x, monkeypatch)
        assert len(seen) == 2 and all(q.shape == (2, 15, 6, 64, 10) for q in seen)
        if layout == "heads":
            for q in seen:
                q.view(-1, 64, 10)  # windows and heads fold without a copy
    torch.testing.assert_close(outs["heads"], outs["tokens"], atol=2e-6, rtol=1e-5)


def test_qkv_layout_auto_is_head_major_for_wide_nystrom_layers_only(monkeypatch):
    from pipelines.attention import patch_attention

    torch.manual_seed(0)
    x = torch.rand(1, 3, 24, 24)
    wide_32 = replace(WIDE, window_size=32)  # 32x32 windows: exact runs SDPA, token-major
    for config, mode, head_major in [(WIDE, "nystrom", True), (WIDE, "exact", True), (wide_32, "exact", False),
                                     (wide_32, "nystrom", True), (TINY, "nystrom", False)]:
        model = patch_attention(SwinIR(config).eval(), mode)
        _, seen = _attend_inputs(model, x, monkeypatch)
        for q in seen:
            assert (q.stride(-1) != 1) == head_major, (config.embed_dim, mode)  # head-major: d runs along N
            if head_major:
                q.view(-1, *q.shape[-2:])  # windows and heads fold without a copy
    model = SwinIR(WIDE).eval()
    x.requires_grad_(True)
    patch_attention(model, "nystrom")
    model(x).sum().backward()  # training keeps the plain token-major product (autograd records)
    assert x.grad is not None


def _position_indices(model):
    return [m.relative_position_index for m in model.modules() if isinstance(m, swinir.WindowAttention)]


def test_position_index_is_shared_by_all_blocks():
    model = SwinIR(TINY)
    ptrs = {t.data_ptr() for t in _position_indices(model)}
    assert len(ptrs) == 1
    model.resize_window(16)
    indices = _position_indices(model)
    assert len({t.data_ptr() for t in indices}) == 1 and indices[0].shape == (256, 256)
    model.to("meta")  # a device move converts every buffer separately
    assert len({id(t) for t in _position_indices(model)}) == 1
    keys = [k for k in model.state_dict() if k.endswith("relative_position_index")]
    assert len(keys) == sum(TINY.depths)  # still listed under every block's key


def test_state_dict_with_shared_index_saves_with_safetensors(tmp_path):
    # Sharing the index between blocks made every block's state-dict entry the same storage,
    # which safetensors refuses ("Some tensors share memory").
    from safetensors.torch import load_file, save_file

    model = SwinIR(TINY)
    state = model.state_dict()
    save_file(state, str(tmp_path / "m.safetensors"))
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # the copies are the state dict's own: the model's shared index stays shared
    assert len({t.data_ptr() for t in _position_indices(model)}) == 1
