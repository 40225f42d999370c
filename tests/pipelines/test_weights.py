"""The bundled default models (pipelines/weights): they load, have the documented architecture,
stay small, restore a held-out photo, and the training script is deterministic and resumable."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipelines import degradations, load_model, zoo
from pipelines.models.swinir import SwinIR
from pipelines.weights import ARCHITECTURES, FILES, MAX_BYTES, TASKS, bundled_path
from pipelines.weights import train
from pipelines.weights.data import EVAL_IMAGES, SCALES, TRAIN_IMAGES, degrade_fixed, eval_cases, load_photo, quantize


@pytest.fixture(scope="module")
def held_out_crop() -> torch.Tensor:
    """A textured 96x96 crop of a held-out photo (astronaut's face and suit edge)."""
    return load_photo(EVAL_IMAGES[0])[:, 96:192, 176:272].contiguous()


def test_held_out_photos_are_not_trained_on():
    assert not set(EVAL_IMAGES) & set(TRAIN_IMAGES)


def test_zoo_presets_point_at_the_bundled_files():
    for task in TASKS:
        preset = zoo.default_preset(task)
        assert preset.bundled and preset.path == bundled_path(task), task


@pytest.mark.parametrize("task", TASKS)
def test_bundled_checkpoint_loads_with_the_documented_architecture(task):
    path = bundled_path(task)
    assert path.is_file(), f"{path.name} is not bundled"
    assert path.stat().st_size <= MAX_BYTES
    model = load_model(path)
    assert isinstance(model, SwinIR)
    expected = ARCHITECTURES[task]
    config = model.config
    assert config.upscale == SCALES[task] == model.info.scale
    for field in ("embed_dim", "window_size", "upsampler", "resi_connection", "img_size"):
        assert getattr(config, field) == expected[field], field
    assert config.depths == tuple(expected["depths"]) and config.num_heads == tuple(expected["num_heads"])
    assert config.mlp_ratio == pytest.approx(expected["mlp_ratio"])
    # Shifted windows survive the round trip (odd blocks shift by half a window).
    shifts = [b.shift_size for layer in model.layers for b in layer.residual_group.blocks]
    assert shifts[1::2] and all(s == config.window_size // 2 for s in shifts[1::2])
    # Plain state dict: what the file holds is exactly what the model holds.
    stored = load_file(str(path))
    assert set(stored) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key]), key


@pytest.mark.parametrize("task", TASKS)
def test_bundled_model_restores_a_held_out_crop(task, held_out_crop):
    scale = SCALES[task]
    clean = held_out_crop
    label, case = eval_cases(task)[0]
    degraded = degrade_fixed(task, clean, case)
    baseline = degradations.bicubic_resize(degraded, scale) if scale > 1 else degraded
    base_psnr = degradations.psnr(quantize(baseline), clean)
    for attention in ("exact", "nystrom"):
        model = load_model(bundled_path(task), attention=attention, landmarks=16, iters=2)
        with torch.inference_mode():
            restored = model(degraded[None])[0]
        assert restored.shape == clean.shape
        assert degradations.psnr(quantize(restored), clean) > base_psnr, (task, label, attention)


def _train(tmp_path, name, iters, extra=()):
    out = tmp_path / f"{name}.safetensors"
    args = ["--task", "sr2", "--iters", str(iters), "--batch", "2", "--crop", "16", "--warmup", "1",
            "--embed-dim", "8", "--depths", "2", "--heads", "1", "--window", "8", "--threads", "1",
            "--images", "chelsea", "coins",
            "--out", str(out), "--work-dir", str(tmp_path / name), "--log-every", "100", *extra]
    assert train.main(args) == 0
    return load_file(str(out))


@pytest.mark.slow
def test_training_is_deterministic_resumable_and_loadable(tmp_path):
    first = _train(tmp_path, "a", 4)
    again = _train(tmp_path, "b", 4)
    assert set(first) == set(again) and all(torch.equal(first[k], again[k]) for k in first)
    # Interrupted after two of four steps, then resumed: the same weights as four straight.
    _train(tmp_path, "c", 4, ["--stop-at", "2"])
    assert torch.load(tmp_path / "c" / "state.pt", weights_only=True)["step"] == 2
    resumed = _train(tmp_path, "c", 4, ["--resume"])
    assert all(torch.equal(first[k], resumed[k]) for k in first)
    trained_model = load_model(tmp_path / "a.safetensors")
    assert trained_model.config.upscale == 2 and trained_model.config.window_size == 8
    # Different seeds give different weights (the seed is really used).
    other = _train(tmp_path, "d", 4, ["--seed", "1"])
    assert not torch.equal(other["conv_first.weight"], first["conv_first.weight"])


def test_init_continues_from_a_checkpoint_with_its_architecture(tmp_path):
    first = _train(tmp_path, "a", 2)
    out = tmp_path / "b.safetensors"
    # No architecture flags: the file's own (embed 8, window 8) is kept, not the task default.
    args = ["--task", "sr2", "--init", str(tmp_path / "a.safetensors"), "--iters", "2", "--batch", "2",
            "--crop", "16", "--warmup", "1", "--threads", "1", "--images", "chelsea", "--out", str(out),
            "--work-dir", str(tmp_path / "b"), "--video-share", "1.0"]
    assert train.main(args) == 0
    second = load_file(str(out))
    assert set(second) == set(first) and all(second[k].shape == first[k].shape for k in first)
    assert not torch.equal(second["conv_first.weight"], first["conv_first.weight"])  # it trained on
    assert load_model(out).config.embed_dim == 8


def test_prefiltered_deblur_crops_are_aligned_with_their_targets():
    """Behind the motion-Wiener prefilter the model learns from deconvolved motion crops (cut
    from a larger deconvolved area) and raw Gaussian ones; inputs stay aligned with targets."""
    from pipelines.weights.data import CropSampler

    photos = [load_photo("chelsea"), load_photo("camera")]
    sampler = CropSampler("deblur", photos, 32, prefilter="motion-wiener")
    degraded, clean = sampler.batch(12, torch.Generator().manual_seed(3))
    assert degraded.shape == clean.shape == (12, 3, 32, 32)
    scores = [degradations.psnr(d, c) for d, c in zip(degraded, clean)]
    shifted = [degradations.psnr(d[:, 2:, 2:], c[:, :-2, :-2]) for d, c in zip(degraded, clean)]
    assert sum(scores) > sum(shifted) + 12 * 2, (scores, shifted)
    with pytest.raises(ValueError, match="does not apply"):
        CropSampler("sr2", photos, 32, prefilter="motion-wiener")


def test_training_behind_the_prefilter_records_it(tmp_path):
    out = tmp_path / "deblur.safetensors"
    args = ["--task", "deblur", "--prefilter", "motion-wiener", "--iters", "2", "--batch", "2", "--crop", "16",
            "--warmup", "1", "--embed-dim", "8", "--depths", "2", "--heads", "1", "--window", "8", "--threads", "1",
            "--images", "chelsea", "--out", str(out), "--work-dir", str(tmp_path / "w")]
    assert train.main(args) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert '"prefilter": "motion-wiener"' in f.metadata()["recipe"]
