"""Synthetic degradations: the yuv420p emulation matches what FFmpeg does to frames."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from pipelines import degradations


def _swscale_roundtrip(image: np.ndarray) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    return frame.to_ndarray(format="rgb24")


@pytest.mark.parametrize("shape", [(64, 96), (33, 47)])
def test_yuv420_roundtrip_matches_ffmpeg(shape):
    skimage_data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float()[None] / 255
    clean = torch.nn.functional.interpolate(photo, size=shape, mode="bicubic", antialias=True,
                                            align_corners=False)[0].clamp(0, 1)
    noisy = degradations.add_gaussian_noise(clean, 25, generator=torch.Generator().manual_seed(0))
    for image in (clean, noisy):
        rgb = (image.clamp(0, 1) * 255).round().byte()
        ours = (degradations.yuv420_roundtrip(rgb.float() / 255) * 255).round()
        theirs = torch.from_numpy(_swscale_roundtrip(rgb.permute(1, 2, 0).numpy().copy())).permute(2, 0, 1).float()
        # Much closer to FFmpeg's result than the source is (4:2:0 loses chroma detail).
        assert degradations.psnr(ours, theirs, peak=255) > degradations.psnr(rgb.float(), theirs, peak=255) + 3


def test_yuv420_roundtrip_keeps_grey_and_averages_chroma():
    grey = torch.full((3, 8, 8), 0.5)
    assert torch.allclose(degradations.yuv420_roundtrip(grey), grey, atol=1 / 255)
    checker = torch.zeros(3, 8, 8)
    checker[0, ::2, ::2] = 1.0  # red dots on one pixel of each 2x2 block: chroma averages them out
    out = degradations.yuv420_roundtrip(checker)
    assert out.shape == checker.shape and float(out[0].std()) < float(checker[0].std())
    with pytest.raises(ValueError, match="RGB"):
        degradations.yuv420_roundtrip(torch.zeros(1, 8, 8))
