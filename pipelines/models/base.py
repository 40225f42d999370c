"""What the rest of the code needs to know about a restoration model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from torch import Tensor, nn

from ..errors import CheckpointError


@dataclass(frozen=True)
class ModelInfo:
    """Describes how to feed a model; every model class exposes one as ``model.info``.

    Models take float tensors in [0, 1]: ``(B, C, H, W)`` for image models,
    ``(B, T, C, H, W)`` for video models (``clip_len`` set), and pad internally to
    whatever multiple they need, cropping back (``size_multiple`` says which, for
    tiling decisions only).
    """

    arch: str                 # "swinir" | "uformer" | "rvrt"
    task: str                 # "sr" | "denoise" | "car" | "deblur" | "vsr" | "video-deblur" | "video-denoise"
    scale: int = 1            # output size = input size * scale
    in_channels: int = 3      # image channels (1 grey, 3 RGB), not counting a noise-level channel
    size_multiple: int = 1    # spatial multiple the model pads to internally
    clip_len: Optional[int] = None  # frames per clip for video models; None for per-frame models
    needs_sigma: bool = False       # video denoising takes the noise level as an extra channel
    # A whole-frame step the model was trained behind (pipelines.deconvolution.make_prefilter):
    # the bundled deblurrer's "motion-wiener". Set by the preset, not the checkpoint.
    prefilter: Optional[str] = None


def check_keys(model: nn.Module, state_dict: Mapping[str, Tensor], arch: str) -> None:
    """Raise a one-line :class:`CheckpointError` where ``state_dict`` does not fit ``model``
    (missing, unexpected or misshapen keys), instead of torch's multi-line strict-load message."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in expected]
    problems += [f"{k} has shape {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{arch} checkpoint does not match its inferred architecture: "
                              + "; ".join(problems[:3]) + more)
