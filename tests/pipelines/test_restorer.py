"""Restorer: arbitrary frame sizes, padding, tiling, clips, precision (pipelines/restorer.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.models.base import ModelInfo
from pipelines.restorer import Restorer, describe_model


class Identity(nn.Module):
    """Returns its input (nearest-upsampled by ``scale``); insists on padded input."""

    def __init__(self, scale: int = 1, size_multiple: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo("identity", "custom", scale=scale, size_multiple=size_multiple,
                              in_channels=in_channels)
        self.shapes: list = []

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        m = self.info.size_multiple
        assert x.shape[-1] % m == 0 and x.shape[-2] % m == 0, f"unpadded input {tuple(x.shape)}"
        assert x.shape[-3] == self.info.in_channels
        if self.info.scale > 1:
            x = F.interpolate(x, scale_factor=self.info.scale, mode="nearest")
        return x + self.zero


class Smooth(nn.Module):
    """A local filter (3x3 box blur, radius 1): tiles with overlap must match the whole frame."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False, padding_mode="replicate")
        nn.init.constant_(self.conv.weight, 1 / 9)
        self.info = ModelInfo("smooth", "custom")

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ClipMean(nn.Module):
    """A video model: (B, T, C, H, W) -> each frame replaced by the clip mean."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo("clipmean", "video-denoise", clip_len=3)

    def forward(self, x: Tensor) -> Tensor:
        assert x.dim() == 5
        return x.mean(dim=1, keepdim=True).expand_as(x) + self.zero


def frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("tile,overlap", [(0, 0), (64, 16), (50, 13), (37, 29), (400, 32)])
def test_identity_is_exact_for_any_size_and_tiling(tile, overlap):
    images = frames(2, 197, 333)
    restorer = Restorer(Identity(size_multiple=8), tile=tile, tile_overlap=overlap)
    assert np.array_equal(restorer.restore(images), images)


def test_single_image_and_batch_shapes():
    restorer = Restorer(Identity(scale=2))
    image = frames(1, 21, 30)[0]
    out = restorer.restore(image)
    assert out.shape == (42, 60, 3)
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))
    assert restorer.restore(frames(3, 21, 30)).shape == (3, 42, 60, 3)


def test_tiles_are_padded_to_the_model_multiple_and_cropped_back():
    model = Identity(size_multiple=16)
    restorer = Restorer(model, tile=40, tile_overlap=10)
    images = frames(1, 45, 71)
    assert np.array_equal(restorer.restore(images), images)
    assert all(h % 16 == 0 and w % 16 == 0 for *_, h, w in model.shapes)
    assert all(h <= 48 and w <= 48 for *_, h, w in model.shapes)  # tiles, not the whole frame


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_upscaling_is_exact_for_nearest(scale):
    images = frames(1, 33, 47)
    restorer = Restorer(Identity(scale=scale), tile=16, tile_overlap=5)
    expected = images.repeat(scale, axis=1).repeat(scale, axis=2)
    assert np.array_equal(restorer.restore(images), expected)


def test_tiled_local_filter_matches_whole_frame():
    """With overlap wider than the filter, blended tiles equal the untiled result except for
    rounding near tile edges (wrong border pixels get only small ramp weights)."""
    images = frames(1, 96, 128, seed=3)
    whole = Restorer(Smooth()).restore(images).astype(np.int16)
    tiled = Restorer(Smooth(), tile=40, tile_overlap=12).restore(images).astype(np.int16)
    diff = np.abs(whole - tiled)
    # On this noise image, hard cuts (no overlap) give mean 0.9 / max 85 grey levels and
    # uniform weights over the overlap mean 0.8 / max 40; ramps give about 0.06 / 3.
    assert diff.mean() < 0.15
    assert diff.max() <= 4


def test_video_model_gets_one_clip():
    images = frames(3, 20, 24)
    out = Restorer(ClipMean()).restore(images)
    mean = images.astype(np.float64).mean(axis=0)
    expected = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    for frame in out:
        assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1


class ClipPosition(nn.Module):
    """A video model: every output frame is 10 * (its position in the clip) grey levels."""

    def __init__(self, clip_len: int) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo("position", "custom", clip_len=clip_len)
        self.lengths: list = []

    def forward(self, x: Tensor) -> Tensor:
        self.lengths.append(x.shape[1])
        position = torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1, 1, 1)
        return (position * (10 / 255)).expand_as(x) + self.zero


class NoiseEcho(nn.Module):
    """A non-blind denoiser stand-in: returns its noise-level channel (RGB + level in, level out)."""

    def __init__(self, clip_len=None) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo("echo", "video-denoise", clip_len=clip_len, needs_sigma=True)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-3] == 4, f"no noise-level channel: {tuple(x.shape)}"
        return x[..., 3:, :, :].expand(*x.shape[:-3], 3, *x.shape[-2:]) + self.zero


@pytest.mark.parametrize("clip_len", [None, 3])
def test_sigma_arrives_as_a_channel_of_sigma_over_255(clip_len):
    """As the official RVRT test feeds its denoiser: RGB plus a map of sigma/255, on every tile."""
    restorer = Restorer(NoiseEcho(clip_len), sigma=25, tile=16, tile_overlap=4)
    out = restorer.restore(frames(3, 20, 30))
    assert (out == 25).all()


def test_sigma_is_required_by_denoisers_and_refused_by_others():
    with pytest.raises(ValueError, match="non-blind denoiser: give the noise level with sigma=S"):
        Restorer(NoiseEcho(3))
    with pytest.raises(ValueError, match="sigma is for models that take a noise level"):
        Restorer(Identity(), sigma=25)
    with pytest.raises(ValueError, match="0-255"):
        Restorer(NoiseEcho(3), sigma=-1)


@pytest.mark.parametrize("length,clip_len,overlap", [(4, 6, 2), (6, 6, 2), (11, 6, 2), (12, 4, 0), (10, 5, 4)])
def test_restore_video_cuts_clips_and_blends_them_with_ramps(length, clip_len, overlap):
    model = ClipPosition(clip_len)
    out = Restorer(model).restore_video(frames(length, 8, 8), clip_len=clip_len, clip_overlap=overlap)
    assert out.shape == (length, 8, 8, 3)
    assert set(model.lengths) == {min(length, clip_len)}, "whole clips, the last aligned to the end"
    values = out[:, 0, 0, 0].astype(int)
    assert values[0] == 0, "the first frame lies in the first clip only"
    assert values[-1] == 10 * (min(length, clip_len) - 1), "the last frame is the last clip's last"
    if overlap == 0:
        assert list(values) == [10 * (i % clip_len) for i in range(length)]


def test_restore_video_of_an_identity_is_exact():
    images = frames(13, 20, 24)
    assert np.array_equal(Restorer(Identity()).restore_video(images), images)   # per-frame model


def test_the_models_prefilter_runs_on_whole_frames_before_it():
    """A model trained behind a prefilter (info.prefilter) gets prefiltered whole frames from
    restore(); prefilter=False (the streamer's workers, which get tiles) leaves that out."""
    from dataclasses import replace

    from pipelines import degradations
    from pipelines.deconvolution import MotionDeconvolution
    from pipelines.weights.data import load_photo

    photo = load_photo("astronaut")[:, 100:228, 60:316]
    blurred = degradations.motion_blur(photo, 9.0, 30.0).clamp(0, 1).mul(255).round().byte()
    images = np.stack([blurred.permute(1, 2, 0).numpy()] * 2)
    model = Identity()
    model.info = replace(model.info, prefilter="motion-wiener")
    expected = np.stack([MotionDeconvolution()(image) for image in images])
    assert not np.array_equal(expected, images)
    assert np.array_equal(Restorer(model).restore(images), expected)
    assert np.array_equal(Restorer(model).restore(images[0]), expected[0])
    assert np.array_equal(Restorer(model, prefilter=False).restore(images), images)
    assert Restorer(model, tile=64, tile_overlap=16).restore(images).shape == images.shape


def test_grey_model_restores_each_colour_channel():
    model = Identity(in_channels=1)
    images = frames(2, 17, 19)
    assert np.array_equal(Restorer(model).restore(images), images)
    assert model.shapes[0][1] == 1 and model.shapes[0][0] == 6  # 2 frames x 3 channels


def test_fp16_path_round_trips_every_byte_value():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([np.tile(values, (4, 1))] * 3, axis=-1)  # (4, 256, 3)
    restorer = Restorer(Identity(), fp16=True)
    assert restorer.model.zero.dtype == torch.float16
    assert np.array_equal(restorer.restore(image), image)


def test_model_without_info_is_probed_for_its_scale():
    class Upx2(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="nearest")

    info = describe_model(Upx2())
    assert info.scale == 2 and info.clip_len is None
    assert Restorer(Upx2()).restore(frames(1, 5, 7)).shape == (1, 10, 14, 3)


def test_wrong_output_size_is_reported():
    class Shrinks(nn.Module):
        info = ModelInfo("shrinks", "custom", scale=2)

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="smaller than expected"):
        Restorer(Shrinks()).restore(frames(1, 8, 8))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Restorer(Identity(), tile=16, tile_overlap=16)
    with pytest.raises(ValueError):
        Restorer(Identity()).restore(np.zeros((4, 4, 3), np.float32))
