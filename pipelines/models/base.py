"""What the rest of the code needs to know about a restoration model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from torch import Tensor, nn

from ..errors import CheckpointError


class NoiseLevelError(ValueError):
    """A noise level (sigma) given to a model that takes none, missing where one is needed, or
    off the 0-255 scale; the message is one line."""


def check_noise_level(sigma: Optional[float], needs: bool, name: str, option: str = "sigma") -> None:
    """The noise-level rule, stated once: a noise level on the 0-255 scale of 8-bit frames is
    given exactly when the model takes one. ``name`` names the model in the message and
    ``option`` how the caller spells the setting (``sigma`` for Python, ``--sigma`` for the CLI)."""
    if needs and sigma is None:
        spelled = f"{option} S" if option.startswith("-") else f"{option}=S"
        raise NoiseLevelError(f"{name} is a non-blind denoiser: give the noise level with {spelled} "
                              "(0-255 scale, e.g. 25)")
    if sigma is not None and not needs:
        raise NoiseLevelError(f"{option} is for models that take a noise level (video-denoise); {name} does not")
    if sigma is not None and not 0 <= sigma <= 255:
        raise NoiseLevelError(f"{option} is a noise level on the 0-255 scale, got {sigma:g}")


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

    def check_sigma(self, sigma: Optional[float], name: Optional[str] = None, option: str = "sigma") -> None:
        """Raise :class:`NoiseLevelError` unless ``sigma`` suits this model (see
        :func:`check_noise_level`)."""
        check_noise_level(sigma, self.needs_sigma, name or f"this {self.arch} model ({self.task})", option)


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


def load_strictly(model: nn.Module, state_dict: Mapping[str, Tensor], arch: str, window=None) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly (one-line :class:`CheckpointError` where it does not
    fit), then run it at ``window`` if given (the architecture's ``resize_window``); return it."""
    check_keys(model, state_dict, arch)
    model.load_state_dict(state_dict, strict=True)
    if window is not None:
        model.resize_window(window)
    return model
