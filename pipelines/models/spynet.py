"""SpyNet optical flow (Ranjan & Black, 2017) as RVRT uses it, and flow warping.

Submodule and buffer names follow the official RVRT checkpoints (``spynet.basic_module.N...``,
``spynet.mean``, ``spynet.std``) so the weights load strictly from each RVRT checkpoint.
Only the finest pyramid level's flow is returned (the official ``return_levels=[5]``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The coarsest of SpyNet's six levels is the input shrunk 32x; the flow there starts at half of
# that, which must be at least 1 px, so the (multiple-of-32) processing size must be >= 64.
_PYRAMID_LEVELS = 6
_MIN_PROCESSING_SIZE = 64


def flow_warp(x: Tensor, flow: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Sample ``x`` (n, c, h, w) at ``pixel + flow``; flow (n, 2, h, w) holds (dx, dy) in pixels.

    Bilinear, corner-aligned (a flow of 0 returns ``x`` exactly), ``padding_mode`` for samples
    outside the frame, as BasicVSR-family code (and RVRT) warps.
    """
    n, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype, device=x.device)
    xs = torch.arange(w, dtype=x.dtype, device=x.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # Same arithmetic order as the official code (grid + flow, then scale) so results agree
    # to the last bits, not only to rounding.
    pos_x = grid_x + flow[:, 0]
    pos_y = grid_y + flow[:, 1]
    norm_x = 2.0 * pos_x / max(w - 1, 1) - 1.0
    norm_y = 2.0 * pos_y / max(h - 1, 1) - 1.0
    grid = torch.stack((norm_x, norm_y), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


class BasicModule(nn.Module):
    """One pyramid level: five 7x7 convolutions from (ref, warped supp, flow) to a flow residual."""

    def __init__(self) -> None:
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=7, stride=1, padding=3))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=False))
        # The checkpoint nests the convolutions one level deeper: basic_module.N.basic_module.K
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Coarse-to-fine flow from ``ref`` to ``supp``: ``flow(ref, supp)[p]`` is where pixel ``p``
    of ``ref`` lies in ``supp``, so ``flow_warp(supp, flow)`` aligns ``supp`` to ``ref``.

    Frames of any size: like the official code, they are resized (bilinear) to a multiple of 32
    and the flow is resized back and rescaled. The official code fails for frames of 32 px or
    fewer (its coarsest flow would be empty); here the processing size is at least 64, so small
    frames go through the same resize path instead (identical results wherever the official code
    runs, i.e. for frames of at least 33 px).
    """

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList(BasicModule() for _ in range(_PYRAMID_LEVELS))
        # ImageNet normalisation; buffers because the checkpoints store them.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _pyramid(self, img: Tensor) -> list[Tensor]:
        """Normalised image and its 2x average-pooled versions, coarsest first."""
        levels = [(img - self.mean) / self.std]
        for _ in range(_PYRAMID_LEVELS - 1):
            levels.insert(0, F.avg_pool2d(levels[0], kernel_size=2, stride=2, count_include_pad=False))
        return levels

    def _flow_at_processing_size(self, ref: Tensor, supp: Tensor) -> Tensor:
        refs, supps = self._pyramid(ref), self._pyramid(supp)
        coarse = refs[0]
        flow = coarse.new_zeros(coarse.size(0), 2, coarse.size(2) // 2, coarse.size(3) // 2)
        for level, (ref_l, supp_l) in enumerate(zip(refs, supps)):
            # Flow from the previous (half-size) level, doubled in size and magnitude; odd sizes
            # were floored by the pooling, so a missing last row/column repeats its neighbour.
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            if up.size(2) != ref_l.size(2):
                up = F.pad(up, [0, 0, 0, 1], mode="replicate")
            if up.size(3) != ref_l.size(3):
                up = F.pad(up, [0, 1, 0, 0], mode="replicate")
            warped = flow_warp(supp_l, up, padding_mode="border")
            flow = self.basic_module[level](torch.cat([ref_l, warped, up], 1)) + up
        return flow

    def forward(self, ref: Tensor, supp: Tensor) -> Tensor:
        """ref, supp: (n, 3, h, w) RGB in [0, 1] -> flow (n, 2, h, w), channels (dx, dy)."""
        if ref.shape != supp.shape:
            raise ValueError(f"ref and supp differ in shape: {tuple(ref.shape)} vs {tuple(supp.shape)}")
        h, w = ref.shape[-2:]
        h_proc = max(math.ceil(h / 32.0) * 32, _MIN_PROCESSING_SIZE)
        w_proc = max(math.ceil(w / 32.0) * 32, _MIN_PROCESSING_SIZE)
        ref = F.interpolate(ref, size=(h_proc, w_proc), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_proc, w_proc), mode="bilinear", align_corners=False)
        flow = self._flow_at_processing_size(ref, supp)
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        # Back to pixels of the original size (the official code scales in place, channel-wise).
        scale = flow.new_tensor([float(w) / float(w_proc), float(h) / float(h_proc)]).view(1, 2, 1, 1)
        return flow * scale
