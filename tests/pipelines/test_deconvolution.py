"""Motion-blur estimation and Wiener deconvolution (the bundled deblurrer's prefilter)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import degradations
from pipelines.deconvolution import (DETECT_SCORE, MotionDeconvolution, estimate_motion_blur, make_prefilter,
                                     wiener_deconvolve)
from pipelines.weights.data import load_photo, quantize


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return load_photo("astronaut")[:, 100:420, 60:380].contiguous()   # 320 x 320, held out


def kernel_error(estimate, length: float, angle: float) -> float:
    """How far apart the estimated and the true kernel are (L1, 0..2): lengths that round to
    the same pixels give the same kernel, so compare kernels rather than numbers."""
    true = degradations.motion_kernel(length, angle, size=21)
    guess = degradations.motion_kernel(estimate.length, estimate.angle, size=21)
    return float((true - guess).abs().sum())


@pytest.mark.parametrize("length,angle", [(9.0, 30.0), (5.0, 100.0), (13.0, 160.0), (7.0, 0.0)])
def test_a_line_blur_is_found_with_its_direction_and_length(photo, length, angle):
    blurred = quantize(degradations.motion_blur(photo, length, angle))
    est = estimate_motion_blur(blurred)
    assert est.detected and est.score > 2 * DETECT_SCORE
    assert abs((est.angle - angle + 90) % 180 - 90) <= 3
    assert abs(est.length - length) <= 1.0
    assert kernel_error(est, length, angle) < 0.6   # a wholly different kernel scores ~2


def test_the_yuv420_round_trip_of_video_frames_does_not_hide_it(photo):
    blurred = quantize(degradations.yuv420_roundtrip(quantize(degradations.motion_blur(photo, 9.0, 30.0))))
    est = estimate_motion_blur(blurred)
    assert est.detected and abs(est.angle - 30) <= 3 and abs(est.length - 9) <= 1


@pytest.mark.parametrize("case", ["sharp", "gauss1", "gauss2.5", "noise"])
def test_frames_without_a_line_blur_are_left_alone(photo, case):
    if case == "sharp":
        image = quantize(photo)
    elif case == "noise":
        image = quantize(degradations.add_gaussian_noise(photo, 15, generator=torch.Generator().manual_seed(0)))
    else:
        image = quantize(degradations.gaussian_blur(photo, float(case[5:])))
    est = estimate_motion_blur(image)
    assert not est.detected, est


def test_an_upscaled_frame_is_not_mistaken_for_a_vertical_or_horizontal_blur():
    """Resamplers are separable: an upscaled frame dips at the same distance along both axes,
    as deep as a real blur would along one (this gravel photo scores ~40). Left alone."""
    photo = load_photo("gravel")
    upscaled = quantize(degradations.bicubic_resize(degradations.bicubic_resize(photo[None], 0.5), 2.0)[0])
    est = estimate_motion_blur(upscaled)
    assert est.score > 3 * DETECT_SCORE and est.across > est.score / 2 and not est.detected
    blurred = quantize(degradations.motion_blur(photo, 9.0, 90.0))   # while a real vertical blur is found
    est = estimate_motion_blur(blurred)
    assert est.detected and abs(est.angle - 90) <= 2


def test_too_small_frames_give_no_estimate():
    assert estimate_motion_blur(torch.rand(3, 63, 200)) is None
    assert estimate_motion_blur(torch.rand(3, 64, 64)) is not None


def test_wiener_with_the_true_kernel_recovers_most_of_the_loss(photo):
    blurred = quantize(degradations.motion_blur(photo, 9.0, 30.0))
    restored = quantize(wiener_deconvolve(blurred, degradations.motion_kernel(9.0, 30.0), 0.004))
    before, after = degradations.psnr(blurred, photo), degradations.psnr(restored, photo)
    assert after > before + 4, (before, after)
    # and a delta kernel with no regularisation is the identity
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1
    assert torch.allclose(wiener_deconvolve(blurred, delta, 0.0), blurred, atol=1e-5)


def test_prefilter_deconvolves_blurred_frames_and_passes_others_through(photo):
    prefilter = make_prefilter("motion-wiener")
    assert isinstance(prefilter, MotionDeconvolution)
    to_uint8 = lambda x: (x * 255).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    blurred = to_uint8(quantize(degradations.motion_blur(photo, 9.0, 30.0)))
    sharp = to_uint8(quantize(photo))
    out = prefilter(blurred)
    assert out.dtype == np.uint8 and out.shape == blurred.shape
    clean = to_uint8(photo).astype(float)
    mse = lambda a: float(((a.astype(float) - clean) ** 2).mean())  # noqa: E731
    assert mse(out) < mse(blurred) / 2.5
    assert prefilter(sharp) is sharp
    assert (prefilter.frames, prefilter.deconvolved) == (2, 1)
    assert prefilter.last is not None and not prefilter.last.detected


def test_unknown_prefilter_is_refused():
    assert make_prefilter(None) is None
    with pytest.raises(ValueError, match="unknown prefilter"):
        make_prefilter("sharpen")


def test_large_frames_look_at_a_bounded_number_of_blocks(photo):
    """A 1080p-sized frame (photo mirrored, not resampled) is judged from at most 10 x 10 Welch
    blocks spread over it, and the blur is still found."""
    from pipelines import deconvolution

    tile = torch.cat([photo, photo.flip(-1)] * 3, -1)                 # 320 x 1920
    frame = torch.cat([tile, tile.flip(-2)] * 2, -2)[:, :1080]          # 1080 x 1920 (1280 -> cut)
    blurred = quantize(degradations.motion_blur(frame, 9.0, 30.0))
    seen = []
    original = torch.fft.fft2
    try:
        deconvolution.torch.fft.fft2 = lambda x, *a, **k: (seen.append(tuple(x.shape)), original(x, *a, **k))[1]
        est = estimate_motion_blur(blurred)
    finally:
        deconvolution.torch.fft.fft2 = original
    assert seen[0] == (100, 128, 128)   # of 15 x 29
    assert est.detected and abs(est.angle - 30) <= 3 and abs(est.length - 9) <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefilter_on_cuda_matches_the_cpu(photo):
    image = (quantize(degradations.motion_blur(photo, 9.0, 30.0)) * 255).round().byte().permute(1, 2, 0).numpy()
    on_cpu, on_gpu = MotionDeconvolution(device="cpu")(image), MotionDeconvolution(device="cuda")(image)
    assert np.abs(on_cpu.astype(int) - on_gpu.astype(int)).max() <= 1


def test_a_shallow_peak_counts_only_when_the_frame_before_agrees(monkeypatch):
    """Compression flattens the cepstral peak; a blur that persists from frame to frame is
    still taken, a one-off shallow peak (or one that disagrees) is not."""
    from pipelines import deconvolution
    from pipelines.deconvolution import AGREE_SCORE, MotionEstimate

    shallow = (DETECT_SCORE + AGREE_SCORE) / 2
    sequence = iter([
        MotionEstimate(9.0, 30.0, shallow),            # alone: no
        MotionEstimate(9.25, 31.0, shallow),           # the same blur again: yes
        MotionEstimate(9.0, 60.0, shallow),            # another direction: no
        MotionEstimate(6.0, 60.0, shallow),            # another length: no
        MotionEstimate(6.0, 60.0, AGREE_SCORE - 1),    # too shallow even though it agrees: no
        MotionEstimate(6.0, 60.0, DETECT_SCORE + 1),   # deep enough alone: yes
        MotionEstimate(6.0, 150.0, shallow, across=shallow),  # dips across too (resampled): no
    ])
    monkeypatch.setattr(deconvolution, "estimate_motion_blur", lambda image: next(sequence))
    prefilter = MotionDeconvolution()
    frame = np.zeros((64, 64, 3), np.uint8)
    taken = [prefilter(frame) is not frame for _ in range(7)]
    assert taken == [False, True, False, False, False, True, False]
    prefilter.reset()
    sequence = iter([MotionEstimate(9.0, 30.0, shallow)] * 2)
    assert [prefilter(frame) is not frame for _ in range(2)] == [False, True]
