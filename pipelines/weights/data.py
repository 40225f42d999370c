"""Training and evaluation data for the bundled models: scikit-image's photos, task degradations.

Everything random draws from one explicit ``torch.Generator`` so that a seed fixes the whole
stream of training batches. Images are float32 ``(3, H, W)`` tensors in [0, 1]; degraded
inputs are clamped and rounded to 8 bits, because that is what the streamer feeds a model
(decoded uint8 frames) and what ``streamer.samples.degrade`` writes into the test clips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import degradations
from ..deconvolution import DEFAULT_NSR, estimate_motion_blur, wiener_deconvolve

# Photos of ``skimage.data`` that load offline (they ship inside the wheel). Two are held
# out for evaluation: ``astronaut`` (also the photo of the sample clips, so the demo shows
# an unseen image) and ``coffee``. ``cat`` is left out: it is the same photo as ``chelsea``.
TRAIN_IMAGES: Tuple[str, ...] = (
    "chelsea", "rocket", "retina", "hubble_deep_field", "immunohistochemistry", "colorwheel",
    "stereo_motorcycle", "logo",                                        # colour
    "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text",  # grey
)
EVAL_IMAGES: Tuple[str, ...] = ("astronaut", "coffee")

TASKS = ("denoise", "deblur", "sr2", "sr4")
SCALES: Dict[str, int] = {"denoise": 1, "deblur": 1, "sr2": 2, "sr4": 4}

# Blind training ranges (the recipe) and the fixed evaluation settings.
NOISE_SIGMA_MAX = 50.0        # denoise: sigma ~ U[0, 50] (0-255 scale) per sample
GAUSS_BLUR_SIGMA = (0.5, 3.0)  # deblur: Gaussian sigma (px) ...
MOTION_LENGTH = (3.0, 15.0)    # ... or linear motion length (px) at a random angle
DEBLUR_NOISE_MAX = 2.0         # tiny noise (0-255 scale) so deblurring is not ill-posed
EVAL_NOISE_SIGMA = 25.0
EVAL_GAUSS_SIGMA = 2.5         # what the sample clips use ("blur", sigma=25 -> 2.5 px)
EVAL_MOTION = (9.0, 30.0)      # length px, angle degrees
# Deblurring behind the motion-Wiener prefilter (pipelines.deconvolution): the estimator
# looks at a region around each crop (a whole frame at inference), the Wiener filter at the
# crop and a margin around it.
PREFILTER_REGION = 320         # px, at most (smaller photos: their shorter side)
PREFILTER_MARGIN = 16          # px around a crop, deconvolved with it and then cut away
VIDEO_SHARE = 0.75             # share of training inputs stored as yuv420p before the model sees them


def load_photo(name: str) -> Tensor:
    """One ``skimage.data`` photo as ``(3, H, W)`` float32 in [0, 1] (grey replicated, alpha on white)."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - only without the extra
        raise RuntimeError("training data needs scikit-image: pip install 'nystra-stream[data]'") from err
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity) -> left view
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    x = torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0
    if x.dim() == 2:
        x = x[..., None].expand(*x.shape, 3)
    if x.shape[-1] == 4:  # RGBA logo: composite on white so transparent areas are not black
        alpha = x[..., 3:]
        x = x[..., :3] * alpha + (1 - alpha)
    return x.permute(2, 0, 1).contiguous()


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to 8 bits (what a decoded video frame holds)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


# ------------------------------------------------------------------------------------------
# Degradations: random (training) and fixed (evaluation)


def degrade_random(task: str, clean: Tensor, gen: torch.Generator) -> Tensor:
    """A randomly degraded, quantised input for one clean ``(3, H, W)`` crop."""
    if task == "denoise":
        sigma = _uniform(gen, 0.0, NOISE_SIGMA_MAX)
        return quantize(degradations.add_gaussian_noise(clean, sigma, generator=gen))
    if task == "deblur":
        if float(torch.rand((), generator=gen)) < 0.5:
            blurred = degradations.gaussian_blur(clean, _uniform(gen, *GAUSS_BLUR_SIGMA))
        else:
            blurred = degradations.motion_blur(clean, _uniform(gen, *MOTION_LENGTH), _uniform(gen, 0.0, 180.0))
        noise = _uniform(gen, 0.0, DEBLUR_NOISE_MAX)
        return quantize(degradations.add_gaussian_noise(blurred, noise, generator=gen))
    if task in ("sr2", "sr4"):
        return quantize(degradations.bicubic_resize(clean, 1 / SCALES[task]))
    raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")


def degrade_prefiltered(region: Tensor, crop: int, gen: torch.Generator, video_share: float,
                        nsr: float = DEFAULT_NSR) -> Tuple[Tensor, Tensor]:
    """A deblur training pair as the model sees it behind the motion-Wiener prefilter.

    ``region`` (a clean area of a photo, up to 320 px a side) is blurred as in the plain recipe
    (Gaussian or linear motion, noise, 8 bits, yuv420p for ``video_share`` of them); the
    prefilter's own estimator then looks at the whole region, as it looks at a whole frame,
    and where it finds a line blur the centre ``crop`` (plus a margin of ``PREFILTER_MARGIN`` px,
    cut away afterwards so crop borders teach nothing) is Wiener-deconvolved with *its*
    estimate. So the model learns from the estimator's real misses and errors. Returns
    ``(input, target)`` centre crops.
    """
    if float(torch.rand((), generator=gen)) < 0.5:
        blurred = degradations.gaussian_blur(region, _uniform(gen, *GAUSS_BLUR_SIGMA))
    else:
        blurred = degradations.motion_blur(region, _uniform(gen, *MOTION_LENGTH), _uniform(gen, 0.0, 180.0))
    noise = _uniform(gen, 0.0, DEBLUR_NOISE_MAX)
    out = quantize(degradations.add_gaussian_noise(blurred, noise, generator=gen))
    if float(torch.rand((), generator=gen)) < video_share:
        out = as_decoded_video(out)
    height, width = region.shape[-2:]
    top, left = (height - crop) // 2, (width - crop) // 2
    m = PREFILTER_MARGIN
    estimate = estimate_motion_blur(out)
    if estimate is not None and estimate.detected:
        area = out[:, top - m:top + crop + m, left - m:left + crop + m]
        out = quantize(wiener_deconvolve(area, estimate.kernel(), nsr))[:, m:-m, m:-m]
    else:
        out = out[:, top:top + crop, left:left + crop]
    return out, region[:, top:top + crop, left:left + crop]


def as_decoded_video(degraded: Tensor) -> Tensor:
    """The degraded 8-bit RGB input as a decoder hands it back from yuv420p storage."""
    return quantize(degradations.yuv420_roundtrip(degraded))


def eval_cases(task: str) -> List[Tuple[str, dict]]:
    """The fixed evaluation degradations of a task: ``(label, settings)`` pairs.

    The first case of each task is the issue's (degradation applied to RGB photos); a
    ``+yuv420`` twin stores the degraded input as yuv420p first, as video frames are.
    """
    if task == "denoise":
        cases = [(f"noise{EVAL_NOISE_SIGMA:g}", {"sigma": EVAL_NOISE_SIGMA})]
    elif task == "deblur":
        cases = [(f"gauss{EVAL_GAUSS_SIGMA:g}", {"gauss": EVAL_GAUSS_SIGMA}),
                 (f"motion{EVAL_MOTION[0]:g}", {"length": EVAL_MOTION[0], "angle": EVAL_MOTION[1]})]
    elif task in ("sr2", "sr4"):
        cases = [(f"bicubic_x{SCALES[task]}", {})]
    else:
        raise ValueError(f"unknown task {task!r}")
    return cases + [(label + "+yuv420", dict(settings, yuv420=True)) for label, settings in cases]


def degrade_fixed(task: str, clean: Tensor, settings: dict, seed: int = 0) -> Tensor:
    """The evaluation input for ``clean`` under one of :func:`eval_cases`' settings."""
    gen = torch.Generator().manual_seed(seed)
    if task == "denoise":
        out = quantize(degradations.add_gaussian_noise(clean, settings["sigma"], generator=gen))
    elif task == "deblur":
        if "gauss" in settings:
            blurred = degradations.gaussian_blur(clean, settings["gauss"])
        else:
            blurred = degradations.motion_blur(clean, settings["length"], settings["angle"])
        out = quantize(blurred)
    else:
        out = quantize(degradations.bicubic_resize(clean, 1 / SCALES[task]))
    return as_decoded_video(out) if settings.get("yuv420") else out


# ------------------------------------------------------------------------------------------
# Random training crops


@dataclass
class CropSampler:
    """Random (clean, degraded) training pairs from a set of photos.

    ``crop``: side of the *input* crop (a multiple of the model window); the clean target is
    ``crop * scale``. Crops are flipped / rotated by multiples of 90 degrees, get a small gain
    (video-like exposure variation), and nearly flat crops (black sky, retina border) are
    re-drawn a few times so the batch holds texture. A share ``video_share`` of the inputs
    goes through yuv420p storage, as decoded video frames do (the targets stay full RGB).
    """

    task: str
    images: Sequence[Tensor]
    crop: int
    gain: float = 0.1          # brightness factor ~ U[1 - gain, 1 + gain]
    min_std: float = 0.03      # re-draw crops flatter than this (up to ``tries`` times)
    tries: int = 5
    video_share: float = VIDEO_SHARE  # inputs passed through yuv420p (``as_decoded_video``)
    prefilter: Optional[str] = None   # "motion-wiener": deblur inputs as behind that prefilter

    def __post_init__(self) -> None:
        self.scale = SCALES[self.task]
        if self.prefilter not in (None, "motion-wiener") or (self.prefilter and self.task != "deblur"):
            raise ValueError(f"prefilter {self.prefilter!r} does not apply to task {self.task}")
        self.margin = PREFILTER_MARGIN if self.prefilter else 0
        side = self.crop * self.scale + 2 * self.margin
        self.images = [im for im in self.images if min(im.shape[-2:]) >= side]
        if not self.images:
            raise ValueError(f"no training image is at least {side} px on each side")
        # Big photos are sampled more often, but sub-linearly so none dominates.
        self.weights = torch.tensor([math.sqrt(im.shape[-2] * im.shape[-1]) for im in self.images])

    def _clean_crop(self, gen: torch.Generator, region: int = 0) -> Tensor:
        """A random clean crop; ``region`` > 0: a square of up to that side (the photo's shorter
        side if smaller), for the prefilter's estimator to look at."""
        side = self.crop * self.scale
        for _ in range(self.tries):
            img = self.images[int(torch.multinomial(self.weights, 1, generator=gen))]
            if region:
                side = min(region, *img.shape[-2:])
            top = int(torch.randint(0, img.shape[-2] - side + 1, (), generator=gen))
            left = int(torch.randint(0, img.shape[-1] - side + 1, (), generator=gen))
            patch = img[:, top:top + side, left:left + side]
            if float(patch.std()) >= self.min_std:
                break
        k = int(torch.randint(0, 4, (), generator=gen))
        patch = torch.rot90(patch, k, dims=(-2, -1))
        if bool(torch.rand((), generator=gen) < 0.5):
            patch = patch.flip(-1)
        gain = _uniform(gen, 1 - self.gain, 1 + self.gain)
        return (patch * gain).clamp(0, 1).contiguous()

    def batch(self, size: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        """``(degraded, clean)``: ``(size, 3, crop, crop)`` and ``(size, 3, crop*s, crop*s)``."""
        if self.prefilter:
            pairs = [degrade_prefiltered(self._clean_crop(gen, PREFILTER_REGION), self.crop, gen, self.video_share)
                     for _ in range(size)]
            return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        clean = [self._clean_crop(gen) for _ in range(size)]
        degraded = [degrade_random(self.task, c, gen) for c in clean]
        if self.video_share > 0:  # (no draw at 0: the data stream of runs before the option stays)
            degraded = [as_decoded_video(d) if float(torch.rand((), generator=gen)) < self.video_share else d
                        for d in degraded]
        return torch.stack(degraded), torch.stack(clean)
