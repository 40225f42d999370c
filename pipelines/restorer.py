"""``Restorer``: a restoration model wrapped for frames of any size.

It owns everything between "integer pictures" (uint8, or uint16 for 10/12-bit input: see
:mod:`pipelines.pixels`) and "the model's forward": the device and precision, conversion to float
in [0, 1], padding to the model's size multiple (cropped back
after), optional spatial tiling with overlap (blended with ramp weights, see
:mod:`pipelines.tiling`), grey models applied channel by channel, clips for video models, and
the noise-level channel of non-blind denoisers, and the whole-frame prefilter a model was
trained behind (``info.prefilter``, e.g. the bundled deblurrer's motion deconvolution).

Per-frame models see ``(N, C, H, W)``; video models (``info.clip_len`` set) see one clip
``(1, T, C, H, W)``. A model with ``info.needs_sigma`` gets one more input channel filled with
``sigma / 255`` (``sigma`` on the 0-255 scale of 8-bit frames), which is how the official RVRT
test feeds its denoiser; the model's output has the usual 3 channels.

:meth:`Restorer.restore` treats ``T`` frames as one clip; :meth:`Restorer.restore_video` cuts
a longer sequence into overlapping clips and blends them with linear ramps (for callers that hold
the whole video in memory), by the same code as the streaming pipeline: :mod:`pipelines.clips`.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import precision as precisions
from . import tiling
from .clips import ClipBlender, clip_spans
from .deconvolution import make_prefilter
from .models.base import ModelInfo
from .pixels import check_pixels, from_unit, to_unit


def describe_model(model: nn.Module) -> ModelInfo:
    """``model.info`` if the model has one; otherwise a description found by probing
    (a plain ``nn.Module`` from a library user: per-frame RGB, scale from one tiny forward)."""
    info = getattr(model, "info", None)
    if isinstance(info, ModelInfo):
        return info
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    probe = torch.zeros(1, 3, 16, 16, device=device, dtype=dtype)
    with torch.inference_mode():
        out = model(probe)
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[-1] % 16:
        raise ValueError(
            "cannot tell how to feed this model: give it an `info: ModelInfo` attribute "
            f"(a probe of shape {tuple(probe.shape)} returned {getattr(out, 'shape', type(out))})"
        )
    return ModelInfo(arch=type(model).__name__, task="custom", scale=out.shape[-1] // 16)


class Restorer:
    """Run a model on uint8 or uint16 RGB images of any size.

    ``tile`` > 0 cuts frames into ``tile`` x ``tile`` pieces overlapping by ``tile_overlap``
    pixels (for memory; the streaming pipeline tiles on its own, to spread tiles over
    workers, and uses ``tile=0`` here). ``sigma``: the noise level (0-255 scale) for models
    whose ``info.needs_sigma`` is set; required for them, refused for the others.
    ``prefilter``: run the model's ``info.prefilter`` on each whole frame in :meth:`restore`
    (:meth:`restore_pixels` and :meth:`restore_tensor` take frames or tiles already
    prefiltered: the streaming pipeline prefilters whole frames before it tiles them).
    ``precision``: ``fp32`` (default), ``bf16``, ``fp16`` (CUDA) or ``int8`` (CPU), see
    :mod:`pipelines.precision` (``auto`` is resolved before, by :mod:`pipelines.precision_auto`);
    ``fp16=True`` is ``precision="fp16"``.
    """

    def __init__(
        self,
        model: nn.Module,
        device: Union[str, torch.device] = "cpu",
        fp16: bool = False,
        tile: int = 0,
        tile_overlap: int = 32,
        info: Optional[ModelInfo] = None,
        sigma: Optional[float] = None,
        prefilter: bool = True,
        precision: Optional[str] = None,
    ) -> None:
        if tile > 0 and not 0 <= tile_overlap < tile:
            raise ValueError(f"tile overlap ({tile_overlap}) must be >= 0 and smaller than the tile ({tile})")
        self.info = info or describe_model(model)
        self.info.check_sigma(sigma)
        self.sigma = None if sigma is None else float(sigma)
        if self.info.in_channels not in (1, 3):
            raise ValueError(f"models with {self.info.in_channels} input channels are not supported")
        self.device = torch.device(device)
        self.precision = precision or ("fp16" if fp16 else "fp32")
        if self.precision == "auto":
            raise ValueError("resolve precision 'auto' first (pipelines.precision_auto.choose_precision)")
        if self.precision not in precisions.PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} (choose from {', '.join(precisions.PRECISIONS)})")
        # (fp16 on a CPU is allowed here, slow but correct, so the CUDA path's arithmetic can
        # be tested without a GPU; the run options refuse it: check_precision.)
        self.dtype = precisions.param_dtype(self.precision)
        self.model = precisions.prepare_model(model.eval().to(device=self.device, dtype=self.dtype), self.precision)
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.prefilter = make_prefilter(self.info.prefilter, self.device) if prefilter else None

    @property
    def scale(self) -> int:
        return self.info.scale

    @property
    def is_video_model(self) -> bool:
        return self.info.clip_len is not None

    # -- public entry points -------------------------------------------------------------

    @torch.inference_mode()
    def restore(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or uint16) RGB ``(H, W, 3)`` or ``(T, H, W, 3)`` in, the same type
        ``(..., H*s, W*s, 3)`` out.

        ``T`` frames are a batch for a per-frame model and one clip for a video model.
        """
        check_pixels(images)
        single = images.ndim == 3
        frames = images[None] if single else images
        if self.prefilter is not None:
            frames = np.stack([self.prefilter(frame) for frame in frames])
        batch = torch.from_numpy(np.ascontiguousarray(frames))
        out = self.restore_pixels(batch.to(self.device)).cpu().numpy()
        return out[0] if single else out

    @torch.inference_mode()
    def restore_video(self, images: np.ndarray, clip_len: Optional[int] = None,
                      clip_overlap: Optional[int] = None) -> np.ndarray:
        """uint8 (or uint16) ``(T, H, W, 3)`` of any length in, ``(T, H*s, W*s, 3)`` out.

        A video model sees clips of ``clip_len`` frames (default ``info.clip_len``) overlapping
        by ``clip_overlap`` (default ``clip_len // 4``), the last clip aligned to the end;
        frames shared by two clips are blended with linear ramps. A per-frame model just
        restores every frame. The whole output is held in memory: stream long videos instead.
        """
        if images.ndim != 4:
            raise ValueError(f"expected (T, H, W, 3) frames, got {images.shape}")
        if not self.is_video_model:
            return self.restore(images)
        clip_len = clip_len or self.info.clip_len
        clip_overlap = clip_len // 4 if clip_overlap is None else clip_overlap
        if not 0 <= clip_overlap < clip_len:
            raise ValueError(f"clip overlap ({clip_overlap}) must be >= 0 and smaller than the clip ({clip_len})")
        spans = clip_spans(images.shape[0], clip_len, clip_overlap)
        if len(spans) == 1:
            return self.restore(images)
        blender: ClipBlender[int] = ClipBlender()
        frames = []
        for span in spans:
            restored = self.restore(images[span.start:span.end])
            frames += blender.add(span, restored, range(span.start, span.end))
        frames += blender.finish()
        return np.stack([image for _, image in frames])

    @torch.inference_mode()
    def restore_pixels(self, frames: Tensor) -> Tensor:
        """uint8 (or uint16) ``(T, H, W, 3)`` on any device → the same type ``(T, H*s, W*s, 3)``
        on the same device. The conversions run on the device, so a GPU worker uploads
        integers, not floats."""
        x = to_unit(frames.to(self.device).permute(0, 3, 1, 2), self.dtype)
        y = self.restore_tensor(x)
        return from_unit(y, frames.dtype).permute(0, 2, 3, 1).contiguous().to(frames.device)

    @torch.inference_mode()
    def restore_tensor(self, x: Tensor) -> Tensor:
        """Float ``(T, 3, H, W)`` in [0, 1] → ``(T, 3, H*s, W*s)``, tiled if ``tile`` is set."""
        x = x.to(device=self.device, dtype=self.dtype)
        h, w = x.shape[-2:]
        boxes = tiling.tile_boxes(h, w, self.tile, self.tile_overlap)
        if len(boxes) == 1:
            return self._forward(x)
        s = self.scale
        out_boxes = [tiling.scale_box(b, s) for b in boxes]
        weights = tiling.blend_weights(out_boxes, h * s, w * s)
        # Accumulate in float32 whatever the model's precision: fp16 sums of many tiles drift.
        acc = torch.zeros(x.shape[0], x.shape[1], h * s, w * s, device=self.device, dtype=torch.float32)
        for (t, l, b, r), (ot, ol, ob, orr), wgt in zip(boxes, out_boxes, weights):
            piece = self._forward(x[..., t:b, l:r]).float()
            acc[..., ot:ob, ol:orr] += piece * torch.from_numpy(wgt).to(self.device)
        return acc.to(self.dtype)

    # -- internals -----------------------------------------------------------------------

    def _forward(self, x: Tensor) -> Tensor:
        """One model call on ``(T, 3, h, w)``: pad to the size multiple, run, crop back."""
        padded, (h, w) = tiling.pad_to_multiple(x, self.info.size_multiple)
        frames = padded.shape[0]
        grey = self.info.in_channels == 1
        if grey:  # a grey model restores each colour channel as its own image
            padded = padded.reshape(-1, 1, *padded.shape[-2:])
        if self.sigma is not None:
            # The official RVRT test appends the noise level (sigma / 255) as a last channel.
            level = padded.new_full((padded.shape[0], 1, *padded.shape[-2:]), self.sigma / 255)
            padded = torch.cat([padded, level], dim=1)
        with precisions.forward_context(self.precision, self.device):
            y = self._call_model(padded, frames, grey)
        y = y.to(self.dtype).reshape(frames, 3, *y.shape[-2:])
        s = self.scale
        if y.shape[-2] < h * s or y.shape[-1] < w * s:
            raise ValueError(
                f"model output {tuple(y.shape[-2:])} is smaller than expected {(h * s, w * s)} "
                f"for input {(h, w)} at scale {s}"
            )
        return y[..., : h * s, : w * s]

    def _call_model(self, padded: Tensor, frames: int, grey: bool) -> Tensor:
        if self.is_video_model:
            if grey:  # (T*3, c, h, w) -> 3 clips of T frames
                clips = padded.reshape(frames, 3, *padded.shape[1:]).transpose(0, 1)
                y = self.model(clips).transpose(0, 1)
            else:
                y = self.model(padded[None])[0]
        else:
            y = self.model(padded)
        return y
