"""RVRT: official outputs (reference fixtures), config inference for every released checkpoint
layout, load_model round trips, multi-clip forwards (deformable path) in exact and Nystrom
attention, the official test script's padding, noise-level input, and window resizing."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Dict

import pytest
import torch

from pipelines import CheckpointError, load_model
from pipelines.attention import patch_attention
from pipelines.models import rvrt, rvrt_loading
from pipelines.models.rvrt import RVRT, RVRTConfig
from pipelines.models.rvrt_blocks import RSTBWithInputConv, WindowAttention3D, relative_position_index

FIXTURES = Path(os.environ.get("NYSTRA_FIXTURES", "/work/shared/fixtures"))
FULL = FIXTURES / "rvrt_full_t2_sr.pt"
RSTB = FIXTURES / "rvrt_rstb_feat_extract.pt"
needs_fixtures = pytest.mark.skipif(not FULL.exists(), reason="reference fixtures not available")

# Tiny models: shifted windows (16 px features > window 8), two RSTBs per branch, groups that
# do not line up with heads, grouped input convolutions. The deformable attention's heads are in
# no weight: TINY_SR keeps the official default (12), the others are loaded with an override.
TINY_SR = RVRTConfig(embed_dims=(12, 12, 16), num_heads=(2, 3, 2), depths=(2, 2, 1), num_blocks=(1, 2, 1),
                     deformable_groups=4, attention_heads=12, inputconv_groups=(1, 2, 3, 2, 4, 2))
TINY_DEBLUR = replace(TINY_SR, upscale=1, embed_dims=(12, 12, 12), window_size=(2, 4, 4), attention_heads=4)
TINY_DENOISE = replace(TINY_DEBLUR, nonblind_denoising=True, mlp_ratio=1.5, qkv_bias=False, attention_heads=6)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every float parameter and buffer (zero-initialised ones too), like the fixtures."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def clip(frames: int, size=(16, 16), channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, frames, channels, *size, generator=torch.Generator().manual_seed(seed))


def run(model, x, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(x, **kwargs)


def save(tmp_path: Path, model: RVRT, name: str = "rvrt.pth") -> Path:
    path = tmp_path / name
    torch.save({"params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def tiny_sr() -> RVRT:
    return randomised(RVRT(TINY_SR), seed=1)


# --------------------------------------------------------------------------------------------
# Official outputs


@needs_fixtures
def test_reproduces_official_rstb():
    ref = torch.load(RSTB, weights_only=True)
    cfg = ref["config"]
    block = RSTBWithInputConv(cfg["in_channels"], cfg["dim"], cfg["groups"], cfg["num_blocks"], cfg["depth"],
                              cfg["num_heads"], tuple(cfg["window_size"]), cfg["mlp_ratio"], cfg["qkv_bias"])
    block.load_state_dict(ref["state_dict"]["params"], strict=True)
    block.eval()
    for x, want in zip(ref["extra"]["inputs"], ref["extra"]["outputs"]):  # 24x32 and 20x28: padded windows
        got = run(block, x)
        assert torch.allclose(got, want, atol=1e-4, rtol=0), (x.shape, (got - want).abs().max())


@needs_fixtures
@pytest.mark.slow
def test_reproduces_official_full_forward(tmp_path):
    ref = torch.load(FULL, weights_only=True)
    path = tmp_path / "rvrt_t2.pth"
    torch.save(ref["state_dict"], path)  # {'params': sd} as released (float16 values)
    model = load_model(path)
    assert isinstance(model, RVRT) and not model.training
    assert model.config.embed_dims == (24, 24, 24) and model.info.scale == 4 and model.info.task == "vsr"
    # The official relative_position_index buffers are what we build.
    sd = ref["state_dict"]["params"]
    assert torch.equal(sd["backbone.forward_2.main.5.1.residual_group.blocks.1.attn.relative_position_index"],
                       relative_position_index((2, 8, 8)))
    assert torch.equal(sd["reconstruction.main.5.0.residual_group.blocks.0.attn.relative_position_index"],
                       relative_position_index((1, 8, 8)))

    seen: Dict[str, list] = {}
    hooks = {"spynet": model.spynet, "feat_extract": model.feat_extract, "reconstruction": model.reconstruction}
    hooks.update({f"backbone.{b}": model.backbone[b] for b in rvrt.BRANCHES})
    for name, module in hooks.items():
        module.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(o))
    out = run(model, ref["input"])
    assert out.shape == ref["output"].shape
    assert torch.allclose(out, ref["output"], atol=1e-4, rtol=0), (out - ref["output"]).abs().max()
    for name, want in ref["extra"]["intermediates"].items():
        want = want if isinstance(want, list) else [want]
        assert len(seen[name]) == len(want), name
        for got, expected in zip(seen[name], want):
            assert torch.allclose(got, expected, atol=1e-4, rtol=0), name


# --------------------------------------------------------------------------------------------
# Config inference


OFFICIAL_CONFIGS = {  # main_test_rvrt.py's constructor arguments per task
    "sr": dict(upscale=4, embed_dims=(144,) * 3, inputconv_groups=(1, 1, 1, 1, 1, 1), nonblind_denoising=False),
    "deblur": dict(upscale=1, embed_dims=(192,) * 3, inputconv_groups=(1, 3, 3, 3, 3, 3), nonblind_denoising=False),
    "denoise": dict(upscale=1, embed_dims=(192,) * 3, inputconv_groups=(1, 3, 4, 6, 8, 4), nonblind_denoising=True),
}
RELEASED = {"sr": ("001", "002", "003"), "deblur": ("004", "005"), "denoise": ("006",)}


def _cheap_state_dict(shapes: Dict[str, list]) -> Dict[str, torch.Tensor]:
    """Uninitialised floats of the listed shapes; the (integer) index buffers as released."""
    index = {128: relative_position_index((2, 8, 8)), 64: relative_position_index((1, 8, 8))}
    return {k: index[s[0]] if k.endswith("relative_position_index") else torch.empty(s) for k, s in shapes.items()}


@needs_fixtures
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RELEASED))
def test_infers_every_released_configuration(kind):
    files = [next(FIXTURES.glob(f"rvrt_{n}_*_keys.json")) for n in RELEASED[kind]]
    expected = RVRTConfig(**OFFICIAL_CONFIGS[kind])  # everything else: the official defaults
    model = None
    for file in files:
        shapes = json.loads(file.read_text())
        sd = _cheap_state_dict(shapes)
        assert rvrt_loading.matches(sd)
        assert rvrt_loading.infer_config(sd) == expected, file.name
        model = model or rvrt_loading.from_state_dict(sd)  # built once per distinct configuration
        built = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert built == shapes, file.name
        model.load_state_dict(sd, strict=True)
    assert model.info.needs_sigma == (kind == "denoise")
    assert model.info.scale == (4 if kind == "sr" else 1)


@pytest.mark.parametrize("config", [TINY_SR, TINY_DEBLUR, TINY_DENOISE], ids=["sr", "deblur", "denoise"])
def test_random_small_configs_round_trip_through_load_model(tmp_path, config):
    model = randomised(RVRT(config), seed=3)
    path = save(tmp_path, model)
    heads = {} if config.attention_heads == 12 else {"attention_heads": config.attention_heads}
    loaded = load_model(path, **heads)
    assert isinstance(loaded, RVRT)
    assert loaded.config == config
    size = (16, 16) if config.upscale == 4 else (32, 48)
    x = clip(2, size, channels=4 if config.nonblind_denoising else 3)
    assert torch.equal(run(loaded, x), run(model, x))


def test_deformable_heads_default_to_the_official_constructor(tmp_path):
    """No weight records attention_heads: the official default (12) applies, not the group count
    (an official RVRT(deformable_groups=6) still runs 12 heads); 12 must divide the channels."""
    sd = RVRT(replace(TINY_SR, deformable_groups=6)).state_dict()
    assert rvrt_loading.infer_config(sd).attention_heads == 12
    odd = RVRT(replace(TINY_SR, embed_dims=(16, 16, 16), deformable_groups=8, attention_heads=8,
                       inputconv_groups=(1, 1, 1, 1, 1, 1)))
    assert rvrt_loading.infer_config(odd.state_dict()).attention_heads == 8  # 12 does not divide 16
    path = save(tmp_path, randomised(RVRT(TINY_SR), seed=5))
    assert load_model(path, attention_heads=6).deform_align["forward_1"].heads == 6
    assert load_model(path, max_residue_magnitude=3).config.max_residue_magnitude == 3.0
    with pytest.raises(CheckpointError, match="attention_heads=5 does not divide"):
        load_model(path, attention_heads=5)


def test_window_inference_tells_permuted_windows_apart():
    """(2, 8, 8), (8, 2, 8) and (8, 8, 2) have the same table and token counts."""
    for window in [(2, 8, 8), (8, 2, 8), (1, 4, 6), (2, 6, 4)]:
        table = torch.zeros(rvrt_loading.table_size(window), 2)
        assert rvrt_loading._window_of(table, relative_position_index(window), "x") == window


def test_inconsistent_checkpoints_raise_checkpoint_error(tiny_sr):
    sd = dict(tiny_sr.state_dict())
    sd.pop("deform_align.forward_2.proj.1.bias")
    with pytest.raises(CheckpointError, match="missing deform_align.forward_2.proj.1.bias"):
        rvrt_loading.from_state_dict(sd)
    sd = dict(tiny_sr.state_dict())
    sd.pop("reconstruction.main.1.weight")
    assert not rvrt_loading.matches(sd)
    with pytest.raises(CheckpointError):
        rvrt_loading.infer_config(sd)


# --------------------------------------------------------------------------------------------
# Forward behaviour


@pytest.mark.slow
def test_multi_clip_forward_runs_deformable_attention_exact_and_nystrom(tiny_sr):
    calls = []
    hooks = [tiny_sr.deform_align[b].register_forward_hook(lambda m, i, o: calls.append(1)) for b in rvrt.BRANCHES]
    x = clip(4, (16, 16))
    try:
        exact = run(patch_attention(tiny_sr, "exact"), x)
        assert len(calls) == 4  # one alignment per branch for the second clip
        nystrom = run(patch_attention(tiny_sr, "nystrom", landmarks=8, iters=3), x)
        layers = [m for m in tiny_sr.modules() if isinstance(m, WindowAttention3D)]
        assert all(m.last_decision.choice == "nystrom" for m in layers)
    finally:
        patch_attention(tiny_sr, "exact")
        for h in hooks:
            h.remove()
    assert exact.shape == nystrom.shape == (1, 4, 3, 64, 64)
    assert torch.isfinite(exact).all() and torch.isfinite(nystrom).all()
    assert not torch.equal(exact, nystrom)
    # A mirror-extended clip in between changes nothing for later clips (the official model
    # would keep taking flipped backward flows as forward flows from then on).
    mirrored = torch.cat([x[:, :2], x[:, :2].flip(1)], dim=1)
    assert RVRT._is_mirror_extended(mirrored) and not RVRT._is_mirror_extended(x)
    run(tiny_sr, mirrored)
    assert torch.equal(run(tiny_sr, x), exact)


def test_mirror_extended_flow_shortcut_is_exact(tiny_sr):
    frames = clip(2, seed=4)
    mirrored = torch.cat([frames, frames.flip(1)], dim=1)
    with torch.inference_mode():
        backward, forward = tiny_sr._flows(mirrored, mirrored=True)
        backward_full, forward_full = tiny_sr._flows(mirrored, mirrored=False)
    assert torch.equal(backward, backward_full)
    assert torch.allclose(forward, forward_full, atol=1e-6)


def test_batch_items_are_independent(tiny_sr):
    """The deformable op reads key frames by sample index: batching must not mix clips."""
    a, b = clip(4, seed=1), clip(4, seed=2)
    both = run(tiny_sr, torch.cat([a, b]))
    assert torch.allclose(both[:1], run(tiny_sr, a), atol=1e-5)
    assert torch.allclose(both[1:], run(tiny_sr, b), atol=1e-5)


def test_pads_time_and_space_like_the_official_test(tiny_sr):
    """3 frames of 13x11 px: the last frame and rows/columns are mirrored to 4 frames of 16x16
    (multiple of 8), then the output is cropped back."""
    x = clip(3, (13, 11), seed=6)
    padded = torch.cat([x, x[:, -1:]], dim=1)
    padded = torch.cat([padded, padded[..., -3:, :].flip(-2)], dim=-2)
    padded = torch.cat([padded, padded[..., -5:].flip(-1)], dim=-1)
    assert padded.shape[-2:] == (16, 16)
    out = run(tiny_sr, x)
    assert out.shape == (1, 3, 3, 52, 44)
    assert torch.allclose(out, run(tiny_sr, padded)[:, :3, :, :52, :44], atol=1e-5)


def test_noise_level_as_channel_keyword_or_attribute(tmp_path):
    model = randomised(RVRT(TINY_DENOISE), seed=7)
    assert model.info.needs_sigma and model.info.task == "video-denoise"
    x = clip(2, (32, 32), seed=8)
    sigma = 30 / 255
    with_channel = torch.cat([x, torch.full_like(x[:, :, :1], sigma)], dim=2)
    want = run(model, with_channel)
    assert torch.equal(run(model, x, sigma=sigma), want)
    with pytest.raises(ValueError, match="noise level"):
        run(model, x)
    model.sigma = sigma
    assert torch.equal(run(model, x), want)
    assert not torch.allclose(run(model, x, sigma=10 / 255), want)
    with pytest.raises(ValueError):
        run(randomised(RVRT(TINY_DEBLUR)), with_channel)  # 4 channels for a model without sigma


def test_small_frames_below_spynet_minimum(tiny_sr):
    out = run(tiny_sr, clip(2, (8, 8)))
    assert out.shape == (1, 2, 3, 32, 32) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# Window resizing


def test_resized_window_builds_bias_index_and_masks(tmp_path, tiny_sr):
    path = save(tmp_path, tiny_sr)
    model = load_model(path, window=16)
    layers = [m for m in model.modules() if isinstance(m, WindowAttention3D)]
    clip_layers = [m for m in layers if m.window == (2, 16, 16)]
    frame_layers = [m for m in layers if m.window == (1, 16, 16)]
    assert len(clip_layers) + len(frame_layers) == len(layers) and clip_layers and frame_layers
    for m in clip_layers:
        assert m.relative_position_bias_table.shape == (3 * 31 * 31, m.num_heads)
        assert m.relative_position_index is clip_layers[0].relative_position_index  # one shared tensor
    assert torch.equal(clip_layers[0].relative_position_index, relative_position_index((2, 16, 16)))
    # 24x24 features: shifted, padded 16-windows (masks rebuilt), 2 frames = 1 window in time.
    x = clip(2, (24, 24), seed=9)
    out = run(model, x)
    assert out.shape == (1, 2, 3, 96, 96) and torch.isfinite(out).all()
    # The resized model saves and loads as a (2, 16, 16) model with the same outputs.
    again = load_model(save(tmp_path, model, "resized.pth"))
    assert again.config.window_size == (2, 16, 16)
    assert torch.equal(run(again, x), out)
    # ... and through safetensors, which refuses state dicts whose entries share storage.
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / "resized.safetensors"))
    assert torch.equal(run(load_model(tmp_path / "resized.safetensors"), x), out)


def test_resizing_to_the_same_window_changes_nothing():
    model = randomised(RVRT(TINY_SR), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.resize_window(8)  # W: time extent kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bias_table_interpolation_keeps_time_offsets_and_heads_apart():
    """Spatial interpolation only: a table constant over space but distinct per temporal offset
    and head stays exactly that (a mixed-up reshape would blend them)."""
    from pipelines.models.rvrt_blocks import resize_bias_table

    heads = 3
    per_slice = 10 * torch.arange(3.0).view(3, 1, 1, 1) + torch.arange(float(heads)).view(1, 1, 1, heads)
    table = per_slice.expand(3, 7, 7, heads).reshape(-1, heads)
    resized = resize_bias_table(table, (2, 4, 4), (2, 16, 16))
    assert resized.shape == (3 * 31 * 31, heads)
    assert torch.allclose(resized.view(3, 31, 31, heads), per_slice.expand(3, 31, 31, heads), atol=1e-4)
    # A change of the temporal extent interpolates in time too (trilinear), same invariant.
    resized_t = resize_bias_table(table, (2, 4, 4), (3, 8, 8)).view(5, 15, 15, heads)
    assert torch.allclose(resized_t[2], per_slice[1].expand(15, 15, heads), atol=1e-4)
