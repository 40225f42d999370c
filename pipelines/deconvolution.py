"""Blind linear-motion deblurring's first half: find a frame's motion blur, invert it (Wiener).

A small SwinIR cannot tell, patch by patch, which of all the blurs it was trained on it is
looking at (benchmarks/RESULTS.md, "Is it capacity or blindness?"); the whole frame can. A
straight-line motion blur of length ``L`` at angle ``a`` multiplies the spectrum by a sinc
whose zeros repeat every ``1/L`` cycles per pixel along ``a``, so the *cepstrum* (inverse FFT of
the log power spectrum) has a sharp negative peak at distance ``L`` in direction ``a`` (Cannon,
1976). :func:`estimate_motion_blur` averages the power spectrum of overlapping windowed blocks
of the grey frame (Welch), takes its cepstrum and looks for that peak on a polar grid; the
peak's depth against the rest of its ring says whether there is a line blur at all (Gaussian
blur, defocus and sharp frames give none), and a dip as deep across that direction says the
frame was resampled instead (separable resamplers dip along both axes). A matched filter
against the cepstra of the candidate kernels themselves then corrects the peak's position,
which sits up to a pixel away from ``L`` for these anti-aliased kernels.

On the 19 scikit-image photos (sharp, Gaussian-blurred, noisy, bicubic down-and-up, all via
yuv420p) no frame without a line blur was detected; line blurs of 8 px and more were found in
17-18 of them (the misses: the synthetic colour wheel and low-texture clock / retina / moon),
shorter ones (3.5-5 px) in 12-13 (left to the model, which handles short blurs blind). Video
compression hides the blur (fewer frames found as the bit rate falls). Figures:
benchmarks/RESULTS.md, made by benchmarks/motion_estimation.py.

:class:`MotionDeconvolution` is the prefilter the bundled deblurrer runs on whole frames
before its model (the model was trained on what this leaves, with this very estimator:
`pipelines.weights.data.degrade_prefiltered`). Frames without a detected line blur pass
through unchanged, and the model deblurs them blind as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .degradations import motion_kernel
from .pixels import PIXEL_TYPES, from_unit, to_unit

PREFILTERS = ("motion-wiener",)

LENGTHS = (2.5, 20.0)      # search range of the cepstral peak (pixels)
LENGTH_STEP = 0.25
ANGLE_STEP = 1.0           # degrees, over [0, 180): a line blur has no sign
MIN_LENGTH = 3.0           # shorter blurs are left to the model
MAX_BLOCKS_PER_AXIS = 10   # Welch blocks looked at per axis (evenly spread over larger frames)
DETECT_SCORE = 8.0         # peak depth in robust standard deviations of its ring
AGREE_SCORE = 6.0          # a shallower peak counts when the frame before found the same blur
AGREE_ANGLE = 3.0          # ... within this many degrees
AGREE_LENGTH = 1.0         # ... and pixels
ACROSS_RATIO = 0.5         # a dip across the peak's direction this deep means resampling, not motion
DEFAULT_NSR = 0.004        # Wiener noise-to-signal ratio the bundled deblurrer was trained with


@dataclass(frozen=True)
class MotionEstimate:
    """A frame's straight-line motion blur: ``length`` px at ``angle`` degrees (x right, y down),
    how clearly it shows (``score``: cepstral peak depth, robust sigmas of its ring) and the
    deepest dip across that direction (``across``: resampled frames dip along both axes)."""

    length: float
    angle: float
    score: float
    across: float = 0.0

    @property
    def detected(self) -> bool:
        return self.score >= DETECT_SCORE and self._line_shaped

    @property
    def _line_shaped(self) -> bool:
        return self.length >= MIN_LENGTH and self.across <= ACROSS_RATIO * self.score

    def agrees_with(self, other: Optional["MotionEstimate"]) -> bool:
        """Both peaks at least ``AGREE_SCORE`` deep, line-shaped, and the same blur: in video
        the camera's blur persists from frame to frame, chance peaks do not (none of the
        sharp, noisy or blurred test clips had two in a row; benchmarks/RESULTS.md)."""
        return (other is not None and min(self.score, other.score) >= AGREE_SCORE
                and self._line_shaped and other._line_shaped
                and abs((self.angle - other.angle + 90) % 180 - 90) <= AGREE_ANGLE
                and abs(self.length - other.length) <= AGREE_LENGTH)

    def kernel(self) -> Tensor:
        return motion_kernel(self.length, self.angle)


def grey(image: Tensor) -> Tensor:
    """``(3, H, W)`` (or ``(1, H, W)``) float in [0, 1] -> ``(H, W)`` luma."""
    if image.shape[0] == 1:
        return image[0]
    return 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]


def _block_size(height: int, width: int) -> Optional[int]:
    side = min(height, width)
    return 128 if side >= 128 else (64 if side >= 64 else None)


def log_spectrum(luma: Tensor, block: int) -> Tensor:
    """Welch estimate of ``log |FFT|²`` over ``block``-sized Hann-windowed half-overlapping
    blocks (at most ``MAX_BLOCKS_PER_AXIS`` per axis, evenly spread; a 640x360 frame has 4 x 9,
    more add time, not accuracy). Computed on the luma's device, returned on the CPU in float64."""
    x = luma.float()
    step = block // 2
    grid = x.unfold(0, block, step).unfold(1, block, step)          # (rows, cols, block, block) view
    rows, cols = grid.shape[:2]
    pick = [torch.linspace(0, n - 1, min(n, MAX_BLOCKS_PER_AXIS)).round().long().to(x.device) for n in (rows, cols)]
    patches = grid.index_select(0, pick[0]).index_select(1, pick[1]).reshape(-1, block, block)
    patches = patches - patches.mean(dim=(-2, -1), keepdim=True)
    hann = torch.hann_window(block, dtype=x.dtype, device=x.device)
    power = torch.fft.fft2(patches * (hann[:, None] * hann[None])).abs().square().mean(0).double().cpu()
    return torch.log(power + 1e-12 * float(power.mean()))


def cepstrum(log_power: Tensor) -> Tensor:
    """Real cepstrum, centred (quefrency 0 at ``[block // 2, block // 2]``)."""
    return torch.fft.fftshift(torch.fft.ifft2(log_power).real)


def _polar(values: Tensor, radii: Tensor, angles_deg: Tensor) -> Tensor:
    """Bilinear samples of a centred ``(n, n)`` map at ``(radius, angle)`` pairs (broadcast)."""
    n = values.shape[-1]
    centre = n // 2
    a = angles_deg * (math.pi / 180)
    x = (centre + radii * torch.cos(a)) / (n - 1) * 2 - 1
    y = (centre + radii * torch.sin(a)) / (n - 1) * 2 - 1
    x, y = torch.broadcast_tensors(x, y)
    grid = torch.stack([x.reshape(1, -1), y.reshape(1, -1)], -1).to(values.dtype)
    return F.grid_sample(values[None, None], grid[None], align_corners=True).reshape(x.shape)


def _kernel_cepstra(lengths: np.ndarray, angle: float, block: int) -> Tensor:
    """Cepstra of the candidate kernels, ``(len(lengths), block, block)``."""
    padded = torch.zeros(len(lengths), block, block, dtype=torch.float64)
    for i, length in enumerate(lengths):
        kernel = motion_kernel(float(length), angle)
        kh, kw = kernel.shape
        padded[i, :kh, :kw] = kernel
    power = torch.fft.fft2(padded).abs().square()
    return torch.fft.fftshift(torch.fft.ifft2(torch.log(power + 1e-4)).real, dim=(-2, -1))


def estimate_motion_blur(image: Tensor) -> Optional[MotionEstimate]:
    """The straight-line motion blur of a ``(C, H, W)`` float frame, or None if it is too small
    to tell (under 64 px a side). Check ``.detected`` before acting on it."""
    block = _block_size(*image.shape[-2:])
    if block is None:
        return None
    ceps = cepstrum(log_spectrum(grey(image.float()), block))
    # (from 2.5 px: nearer the origin the cepstrum of the picture itself dominates)
    radii = torch.arange(LENGTHS[0], LENGTHS[1] + 1e-6, LENGTH_STEP, dtype=torch.float64)[:, None]
    angles = torch.arange(0.0, 180.0, ANGLE_STEP, dtype=torch.float64)[None, :]
    rings = _polar(ceps, radii, angles)                     # (lengths, angles)
    flat = int(rings.argmin())
    row, col = divmod(flat, rings.shape[1])
    # How deep the dip is below the rest of its ring, in robust sigmas of that ring.
    rows = slice(max(0, row - 2), row + 3)                  # +-0.5 px
    median = rings[row].median()
    sigma = (rings[row] - median).abs().median() * 1.4826 + 1e-9
    score = float((median - rings[row, col]) / sigma)
    # A resampled (e.g. upscaled) frame dips at the same distance along both axes, because
    # resamplers are separable; a line blur dips along its own direction only.
    cols = [(col + 90 + d) % rings.shape[1] for d in range(-2, 3)]
    across = float((median - rings[rows][:, cols].min()) / sigma)
    angle = float(angles[0, col])
    length = _refine_length(ceps, float(radii[row, 0]), angle, block)
    return MotionEstimate(length=length, angle=angle, score=score, across=across)


def _refine_length(ceps: Tensor, peak: float, angle: float, block: int) -> float:
    """The kernel length whose own cepstrum best matches the frame's along the blur direction
    (the peak of an anti-aliased line kernel's cepstrum is not exactly at its length)."""
    radii = torch.arange(1.0, min(LENGTHS[1] + 4, block // 2 - 1), 0.5, dtype=torch.float64)
    direction = torch.tensor(angle, dtype=torch.float64)
    profile = _polar(ceps, radii, direction)
    lengths = np.arange(max(MIN_LENGTH - 1, peak - 2.0), peak + 1.01, LENGTH_STEP)
    models = torch.stack([_polar(c, radii, direction) for c in _kernel_cepstra(lengths, angle, block)])
    models = models - models.mean(-1, keepdim=True)
    scores = (models @ (profile - profile.mean())) / (models.norm(dim=-1) + 1e-12)
    return float(lengths[int(scores.argmax())])


def wiener_deconvolve(image: Tensor, kernel: Tensor, nsr: float) -> Tensor:
    """Wiener deconvolution of ``(C, H, W)`` by a centred 2-D kernel; the frame is mirrored to
    twice its size first, so its borders are continuous and the FFT's wrap-around is harmless."""
    _, height, width = image.shape
    ext = torch.cat([image, image.flip(-1)], -1)
    ext = torch.cat([ext, ext.flip(-2)], -2)
    kh, kw = kernel.shape
    padded = torch.zeros(2 * height, 2 * width, dtype=image.dtype, device=image.device)
    padded[:kh, :kw] = kernel.to(device=image.device, dtype=image.dtype)
    padded = torch.roll(padded, (-(kh // 2), -(kw // 2)), (0, 1))
    response = torch.fft.rfft2(padded)
    gain = response.conj() / (response.real.square() + response.imag.square() + nsr)
    restored = torch.fft.irfft2(torch.fft.rfft2(ext) * gain, s=ext.shape[-2:])
    return restored[:, :height, :width]


class MotionDeconvolution:
    """Prefilter: uint8 (or uint16) ``(H, W, 3)`` frame in, the same frame Wiener-deconvolved by its
    estimated line blur out (or unchanged where none is detected). ``last`` holds the last
    frame's estimate; ``frames`` / ``deconvolved`` count what it did. ``device``: where the
    FFTs run (the model's device: at 1920x1080 the Wiener step costs ~0.4 s on two CPU cores).

    Frames are taken as a sequence: a blur found with a shallower peak (compressed video
    hides it) counts when the previous frame's estimate agrees (:meth:`MotionEstimate.agrees_with`);
    :meth:`reset` forgets the previous frame (a new, unrelated picture).
    """

    name = "motion-wiener"

    def __init__(self, nsr: float = DEFAULT_NSR, device: Union[str, torch.device, None] = None) -> None:
        self.nsr = nsr
        self.device = torch.device(device or "cpu")
        self._previous: Optional[MotionEstimate] = None
        self.last: Optional[MotionEstimate] = None
        self.frames = 0
        self.deconvolved = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = to_unit(torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1), torch.float32)
        restored, estimate = self.apply(x)
        self.frames += 1
        self.last = estimate
        if restored is None:
            return image
        self.deconvolved += 1
        return from_unit(restored, PIXEL_TYPES[image.dtype]).permute(1, 2, 0).cpu().numpy()

    def apply(self, image: Tensor) -> Tuple[Optional[Tensor], Optional[MotionEstimate]]:
        """Float ``(C, H, W)`` in [0, 1] -> (deconvolved frame or None, estimate)."""
        estimate = estimate_motion_blur(image)
        previous, self._previous = self._previous, estimate
        if estimate is None or not (estimate.detected or estimate.agrees_with(previous)):
            return None, estimate
        return wiener_deconvolve(image, estimate.kernel(), self.nsr), estimate

    def reset(self) -> None:
        self._previous = None


def make_prefilter(name: Optional[str], device: Union[str, torch.device, None] = None):
    """The prefilter a model was trained behind (``ModelInfo.prefilter``), or None."""
    if name is None:
        return None
    if name == "motion-wiener":
        return MotionDeconvolution(device=device)
    raise ValueError(f"unknown prefilter {name!r} (known: {', '.join(PREFILTERS)})")
