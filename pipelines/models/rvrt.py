"""RVRT (Liang et al., 2022): recurrent video restoration transformer with guided deformable
attention — video SR x4 (REDS, Vimeo BI/BD), deblurring (DVD, GoPro), non-blind denoising (DAVIS).

Checkpoint key names are the official ones (``params`` wrapper; SpyNet inside as ``spynet.*``),
every hyper-parameter the weights determine is inferred from the state dict, and the forward
follows ``models/network_rvrt.py`` of JingyunLiang/RVRT. Window attention goes through
:mod:`pipelines.attention`; the CUDA deformable-attention op is :mod:`.deform_attn` (any device).

Input ``(B, T, C, H, W)`` in [0, 1]; output ``(B, T, 3, s·H, s·W)``. Choices beyond the model code:

* **Padding** (what the official test script does before calling the model): time to a multiple
  of the clip size (2) and space to a multiple of 8 by mirroring the last frames / rows / columns
  (``flip``-and-append, edge included); the output is cropped back.
* **Noise level** (denoising): the official model takes a 4th input channel filled with σ in the
  input's units (σ/255 for 8-bit noise levels; the official test appends it). Pass 4-channel frames,
  or 3-channel frames plus ``sigma=`` in ``forward`` or the ``model.sigma`` attribute (a float, or
  a per-batch tensor); ``model.info.needs_sigma`` says which models need it.
* **Mirror-extended clips**: the official model checks whether the clip reads the same backwards
  (Vimeo tests feed 7 frames + their mirror) and then takes forward flows as flipped backward
  flows, halving SpyNet's work. It stores that as ``is_mirror_extended`` and never resets it, so
  every later clip would reuse wrong flows. Here the check is per call (no state): the flows are
  the same as computing them, wherever the shortcut applies.
* **Devices**: the official ``cpu_cache`` (features parked on the CPU, ``.cuda()`` calls for clips
  over 100 frames) is not reproduced: everything stays on the input's device. Reconstruction and
  upsampling run clip by clip (they are per-frame operations) to bound the memory peak.
* **Small frames**: SpyNet works at a multiple of 32 px and at least 64 (see :mod:`.spynet`), so
  frames below 33 px (132 px for deblurring/denoising, whose flows are computed at 1/4 size)
  work here although the official code fails on them.
* **Inputs smaller than the window** along an axis are one window there, unshifted (official
  rule); the bias then reads that window's true offsets from the table. The official code slices
  the full window's index (``index[:N, :N]``); at the released windows that differs only for
  frames under 8 px (32 px for deblurring/denoising), which it cannot run anyway (SpyNet's limit).
* ``window=`` (:meth:`RVRT.resize_window`) runs a checkpoint at larger windows, as the PnP-Nystra
  paper runs RVRT at (2, 64, 64): ``W`` / ``(h, w)`` / ``(t, h, w)`` set the propagation windows
  (time extent kept unless given) and ``(1, h, w)`` for the per-frame feature extraction and
  reconstruction; bias tables are interpolated (bicubic per time offset), indices and shift masks
  rebuilt, shifts are half the window. Layers with the same window share one index tensor.
* Not in the weights, the official constructor's defaults assumed: ``attention_heads`` of the
  deformable attention 12 (every release; where 12 does not divide the embed dim, its
  ``deformable_groups``), its 3x3 kernel, ``max_residue_magnitude`` 10. ``from_state_dict`` (and
  ``load_model``) take ``attention_heads=`` / ``max_residue_magnitude=`` for checkpoints trained
  otherwise. ``clip_len`` (16) is only a suggestion to the streaming pipeline: any even length works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ModelInfo
from .deform_attn import GuidedDeformAttnPack
from .rvrt_blocks import (FrameConv, Permute, RSTBWithInputConv, Upsample, WindowAttention3D,
                          relative_position_index)
from .spynet import SpyNet, flow_warp

NAME = "rvrt"

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
_SPATIAL_MULTIPLE = 8  # the official test pads to the window (8); also makes /4 exact for deblurring


@dataclass
class RVRTConfig:
    """The official constructor's hyper-parameters (same names) plus ``clip_len``."""

    upscale: int = 4
    clip_size: int = 2
    window_size: Tuple[int, int, int] = (2, 8, 8)
    num_blocks: Tuple[int, int, int] = (1, 2, 1)
    depths: Tuple[int, int, int] = (2, 2, 2)
    embed_dims: Tuple[int, int, int] = (144, 144, 144)
    num_heads: Tuple[int, int, int] = (6, 6, 6)
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    inputconv_groups: Tuple[int, ...] = (1, 1, 1, 1, 1, 1)
    deformable_groups: int = 12
    attention_heads: int = 12
    attention_window: Tuple[int, int] = (3, 3)
    max_residue_magnitude: float = 10.0
    nonblind_denoising: bool = False
    clip_len: int = 16

    def __post_init__(self) -> None:
        for name in ("window_size", "num_blocks", "depths", "embed_dims", "num_heads", "inputconv_groups",
                     "attention_window"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.clip_size != 2:
            raise ValueError("RVRT's flow composition is defined for clips of 2 frames only")
        if self.upscale not in (1, 4):
            raise ValueError(f"RVRT upscale is 4 (video SR) or 1 (deblurring/denoising), not {self.upscale}")
        if self.embed_dims[1] != self.embed_dims[0]:
            raise ValueError("propagation adds its output to shallow features: embed_dims[1] must equal embed_dims[0]")

    @property
    def task(self) -> str:
        if self.upscale == 4:
            return "vsr"
        return "video-denoise" if self.nonblind_denoising else "video-deblur"


def _mirror_pad(x: Tensor, dim: int, multiple: int) -> Tensor:
    """Append the last ``pad`` entries along ``dim`` in reverse (the official test's padding:
    edge included); continued symmetrically (``abc|cba|abc``) where one mirror is too short."""
    size = x.shape[dim]
    pad = -size % multiple
    if pad == 0:
        return x
    if pad <= size:
        return torch.cat([x, x.narrow(dim, size - pad, pad).flip(dim)], dim)
    pos = torch.arange(size, size + pad, device=x.device) % (2 * size)
    index = torch.where(pos < size, pos, 2 * size - 1 - pos)
    return torch.cat([x, x.index_select(dim, index)], dim)


def _as_window(window: Union[int, Sequence[int]], temporal: int) -> Tuple[int, int, int]:
    if isinstance(window, int):
        window = (temporal, window, window)
    window = tuple(int(w) for w in window)
    if len(window) == 2:
        window = (temporal,) + window
    if len(window) != 3 or min(window) < 1:
        raise ValueError(f"window must be W, (h, w) or (t, h, w) with positive sizes, got {window}")
    return window  # type: ignore[return-value]


class RVRT(nn.Module):
    def __init__(self, config: RVRTConfig = RVRTConfig()) -> None:
        super().__init__()
        c = self.config = config
        e0, e1, e2 = c.embed_dims
        frame_window = (1,) + c.window_size[1:]
        self.spynet = SpyNet()

        def rstb(in_channels: int, stage: int, groups: int, window: Tuple[int, int, int]) -> RSTBWithInputConv:
            return RSTBWithInputConv(in_channels, c.embed_dims[stage], groups, c.num_blocks[stage], c.depths[stage],
                                     c.num_heads[stage], window, c.mlp_ratio, c.qkv_bias)

        if c.upscale == 4:
            self.feat_extract = rstb(3, 0, c.inputconv_groups[0], frame_window)
        else:  # deblurring/denoising work on features at 1/4 size
            self.feat_extract = nn.Sequential(
                Permute(0, 2, 1, 3, 4),
                FrameConv(4 if c.nonblind_denoising else 3, e0, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
                nn.LeakyReLU(0.1, inplace=True),
                FrameConv(e0, e0, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
                nn.LeakyReLU(0.1, inplace=True),
                Permute(0, 2, 1, 3, 4),
                rstb(e0, 0, c.inputconv_groups[0], frame_window),
            )
        self.backbone = nn.ModuleDict()
        self.deform_align = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = GuidedDeformAttnPack(e1, c.attention_heads, c.deformable_groups, c.clip_size,
                                                           c.attention_window, c.max_residue_magnitude)
            # Each branch sees the shallow features, every earlier branch and its own state.
            self.backbone[name] = rstb((2 + i) * e0, 1, c.inputconv_groups[i + 1], c.window_size)
        self.reconstruction = rstb(5 * e0, 2, c.inputconv_groups[5], frame_window)
        self.conv_before_upsampler = nn.Sequential(FrameConv(e2, 64), nn.LeakyReLU(0.1, inplace=True))
        self.upsampler = Upsample(64)
        self.conv_last = FrameConv(64, 3, (1, 3, 3), padding=(0, 1, 1))
        self.sigma: Optional[Union[float, Tensor]] = None
        self.window_size = c.window_size
        self.info = ModelInfo(arch=NAME, task=c.task, scale=c.upscale, in_channels=3,
                              size_multiple=_SPATIAL_MULTIPLE, clip_len=c.clip_len,
                              needs_sigma=c.nonblind_denoising)

    # -- windows --------------------------------------------------------------------------

    def resize_window(self, window: Union[int, Sequence[int]]) -> "RVRT":
        """Run propagation at ``window`` and per-frame stages at ``(1, h, w)`` (module docstring)."""
        clip_window = _as_window(window, self.config.window_size[0])
        frame_window = (1,) + clip_window[1:]
        shared: Dict[Tuple[int, int, int], Tensor] = {}
        for layer in self.modules():
            if isinstance(layer, WindowAttention3D):
                target = frame_window if layer.window[0] == 1 else clip_window
                if target not in shared:
                    shared[target] = relative_position_index(target)
                layer.resize_window(target, shared[target])
        self.window_size = clip_window
        return self

    # -- forward --------------------------------------------------------------------------

    def _with_noise_level(self, lqs: Tensor, sigma: Optional[Union[float, Tensor]]) -> Tensor:
        channels = lqs.size(2)
        if not self.config.nonblind_denoising:
            if channels != 3:
                raise ValueError(f"expected RGB frames (B, T, 3, H, W), got {tuple(lqs.shape)}")
            return lqs
        if channels == 4:
            return lqs
        if channels != 3:
            raise ValueError(f"expected (B, T, 3 or 4, H, W) frames, got {tuple(lqs.shape)}")
        sigma = self.sigma if sigma is None else sigma
        if sigma is None:
            raise ValueError("this denoising model needs the noise level: pass sigma= (e.g. 25/255) or set model.sigma")
        n, t, _, h, w = lqs.shape
        level = torch.as_tensor(sigma, dtype=lqs.dtype, device=lqs.device).reshape(-1, 1, 1, 1, 1)
        return torch.cat([lqs, level.expand(n, t, 1, h, w)], dim=2)

    def forward(self, lqs: Tensor, sigma: Optional[Union[float, Tensor]] = None) -> Tensor:
        """(B, T, 3, H, W) in [0, 1] (4 channels or ``sigma`` for denoising) -> (B, T, 3, sH, sW)."""
        if lqs.dim() != 5:
            raise ValueError(f"expected a clip (B, T, C, H, W), got {tuple(lqs.shape)}")
        n, t, _, h, w = lqs.shape
        x = self._with_noise_level(lqs, sigma)
        x = _mirror_pad(x, 1, self.config.clip_size)
        x = _mirror_pad(_mirror_pad(x, 3, _SPATIAL_MULTIPLE), 4, _SPATIAL_MULTIPLE)
        s = self.config.upscale
        return self._restore(x)[:, :t, :, : h * s, : w * s]

    def _restore(self, lqs: Tensor) -> Tensor:
        """The official ``RVRT.forward`` on a padded clip."""
        n, t, _, h, w = lqs.shape
        rgb = lqs[:, :, :3]
        if self.config.upscale == 4:
            flow_frames = rgb
        else:  # flows at the features' 1/4 size
            flow_frames = F.interpolate(rgb.reshape(-1, 3, h, w), scale_factor=0.25, mode="bicubic")
            flow_frames = flow_frames.view(n, t, 3, h // 4, w // 4)
        flows_backward, flows_forward = self._flows(flow_frames, self._is_mirror_extended(lqs))

        feats: Dict[str, List[Tensor]] = {
            "shallow": list(self.feat_extract(lqs).chunk(t // self.config.clip_size, dim=1))
        }
        refined_flows: Dict[str, List[List[Tensor]]] = {}
        for name in BRANCHES:
            flows = flows_backward if name.startswith("backward") else flows_forward
            feats[name] = self._propagate(feats, flows, name, refined_flows)
        return self._reconstruct(rgb, feats)

    @staticmethod
    def _is_mirror_extended(lqs: Tensor) -> bool:
        """Whether frame i equals frame t-1-i for every i (an even-length clip and its mirror)."""
        if lqs.size(1) % 2:
            return False
        first, second = lqs.chunk(2, dim=1)
        return bool(torch.equal(first, second.flip(1)))

    def _flows(self, frames: Tensor, mirrored: bool) -> Tuple[Tensor, Tensor]:
        """Flows between neighbours, (n, t-1, 2, h, w): backward ``i -> i+1``, forward ``i+1 -> i``."""
        n, t, c, h, w = frames.shape
        earlier = frames[:, :-1].reshape(-1, c, h, w)
        later = frames[:, 1:].reshape(-1, c, h, w)
        backward = self.spynet(earlier, later).view(n, t - 1, 2, h, w)
        # For a mirrored clip, the forward flows are the backward ones read in reverse.
        forward = backward.flip(1) if mirrored else self.spynet(later, earlier).view(n, t - 1, 2, h, w)
        return backward, forward

    def _propagate(self, feats: Dict[str, List[Tensor]], flows: Tensor, name: str,
                   refined_flows: Dict[str, List[List[Tensor]]]) -> List[Tensor]:
        """One recurrent refinement branch over all clips; returns one feature clip per clip.

        Backward branches walk the clips last to first with each clip reversed in time, so both
        directions see "previous clip, current clip" in the same layout.
        """
        clip = self.config.clip_size
        n_flows = flows.size(1)
        backward = name.startswith("backward")
        first_pass = name.endswith("_1")
        n_clips = (n_flows + 1) // clip
        order = list(range(n_clips))[::-1] if backward else list(range(n_clips))
        # flow_at[j]: the flow between the (j-1)-th and j-th frames visited, from j to j-1.
        flow_at = list(range(n_flows, -1, -1)) if backward else list(range(-1, n_flows))
        orient = (lambda f: f.flip(1)) if backward else (lambda f: f)
        guide = list(feats.values())[-1]  # the previous branch (or shallow features) guides alignment
        if first_pass:
            refined_flows[name] = []

        state = torch.zeros_like(feats["shallow"][0])
        outputs: List[Tensor] = []
        for i, idx in enumerate(order):
            if i > 0:
                if first_pass:
                    # Frames 0,1 = previous clip, 2,3 = current: compose flows to reach 2 and 3 frames back.
                    f01, f12, f23 = (flows[:, flow_at[clip * i + j]] for j in (-1, 0, 1))
                    f02 = f12 + flow_warp(f01, f12)
                    f13 = f23 + flow_warp(f12, f23)
                    f03 = f23 + flow_warp(f02, f23)
                    to_same = torch.stack([f02, f13], 1)   # current frame j -> previous frame j
                    to_cross = torch.stack([f12, f03], 1)  # current frame j -> previous frame 1-j
                else:
                    to_same, to_cross = refined_flows[name.replace("_2", "_1")][i - 1]
                warped_same = flow_warp(state.flatten(0, 1), to_same.flatten(0, 1)).view_as(state)
                warped_cross = flow_warp(state.flip(1).flatten(0, 1), to_cross.flatten(0, 1)).view_as(state)
                state, new_flows = self.deform_align[name](
                    orient(guide[idx]), orient(guide[order[i - 1]]), state,
                    [warped_same, warped_cross], [to_same, to_cross])
                if first_pass:
                    refined_flows[name].append(new_flows)
            inputs = [orient(f[idx]) for f in feats.values()] + [state]
            state = state + self.backbone[name](torch.cat(inputs, dim=2))
            outputs.append(state)
        if backward:
            outputs = [o.flip(1) for o in outputs[::-1]]
        return outputs

    def _reconstruct(self, rgb: Tensor, feats: Dict[str, List[Tensor]]) -> Tensor:
        """Per-frame reconstruction, x4 upsampling and the interpolated input as a skip."""
        per_clip = zip(*feats.values())  # each: the clip's features from every branch
        outputs = []
        for i, clip_feats in enumerate(per_clip):
            hr = self.reconstruction(torch.cat(clip_feats, dim=2))
            hr = self.conv_last(self.upsampler(self.conv_before_upsampler(hr.transpose(1, 2)))).transpose(1, 2)
            frames = rgb[:, i * hr.size(1) : (i + 1) * hr.size(1)]
            outputs.append(hr + F.interpolate(frames, size=hr.shape[-3:], mode="trilinear", align_corners=False))
        return torch.cat(outputs, dim=1)
