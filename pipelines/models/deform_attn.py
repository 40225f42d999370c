"""RVRT's guided deformable attention, written with ``grid_sample`` (no compiled extension).

The official op (RVRT ``models/op/deform_attn_cuda_*``) is CUDA-only. This module reproduces its
forward exactly, on any device:

* Query sample ``b`` (of ``N·clip`` queries) attends to the ``clip`` frames of key/value clip
  ``b // clip``, frame ``n`` of its key set being ``kv[b // clip][(n + b) % clip]``.
* Offsets are (dy, dx) pairs laid out ``[frame n][group g][tap k][2]`` per pixel; tap ``k = i·kw + j``
  of a ``kh×kw`` kernel samples at ``(y - kh//2 + i + dy, x - kh//2 + j + dx)`` (the official op pads
  by ``kernel_h // 2`` on both axes).
* Sampling is DCNv2 bilinear: each of the four neighbours outside the frame counts as 0 (so a
  point at or beyond one pixel outside the frame reads 0) — exactly ``grid_sample`` with zero padding.
* The deformable groups split all ``2·P`` key+value channels, so keys use groups ``0 … g/2-1`` and
  values ``g/2 … g-1``; the attention heads split each of K and V into ``heads`` parts of
  ``P / heads`` channels, independently of the groups.
* Per pixel and head, softmax over the ``clip·kh·kw`` sampled keys with scale ``(P/heads)**-0.5``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Mlp
from .rvrt_blocks import FrameConv, Permute

# Sampled keys+values are the memory peak (clip·2P·taps floats per pixel); output pixels are
# processed in chunks that keep this tensor under the budget.
_SAMPLED_BYTES_BUDGET = 256 * 2**20


def _tap_grid(kernel: Tuple[int, int], height: int, width: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Undeformed sampling rows/columns, (taps, h·w) each: pixel minus padding plus tap offset."""
    kh, kw = kernel
    pad = kh // 2  # the official op pads both axes by kernel_h // 2
    tap_y = torch.arange(kh, dtype=torch.float32, device=device).repeat_interleave(kw)
    tap_x = torch.arange(kw, dtype=torch.float32, device=device).repeat(kh)
    ys = torch.arange(height, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device)
    pix_y, pix_x = torch.meshgrid(ys, xs, indexing="ij")
    base_y = pix_y.reshape(1, -1) - pad + tap_y[:, None]
    base_x = pix_x.reshape(1, -1) - pad + tap_x[:, None]
    return base_y, base_x


def guided_deform_attn(
    q: Tensor,
    kv: Tensor,
    offset: Tensor,
    heads: int,
    groups: int,
    kernel: Tuple[int, int] = (3, 3),
) -> Tensor:
    """Deformable attention of each query pixel over ``clip·kh·kw`` sampled key/value pixels.

    q: (N·clip, P, h, w) queries (projected, not scaled).
    kv: (N, clip, 2P, h, w) keys (first P channels) and values (last P).
    offset: (N·clip, clip·groups·kh·kw·2, h, w), layout [frame][group][tap][(dy, dx)].
    Returns (N·clip, P, h, w).
    """
    n_kv, clip, kv_channels, height, width = kv.shape
    n_q, channels = q.shape[:2]
    taps = kernel[0] * kernel[1]
    if n_q != n_kv * clip or kv_channels != 2 * channels:
        raise ValueError(f"q {tuple(q.shape)} does not match kv {tuple(kv.shape)}")
    if kv_channels % groups or groups % 2 or channels % heads:
        raise ValueError(f"{kv_channels} key/value channels, {groups} groups, {heads} heads do not split")
    if offset.shape != (n_q, clip * groups * taps * 2, height, width):
        raise ValueError(f"offset {tuple(offset.shape)} does not match q {tuple(q.shape)}")
    group_channels = kv_channels // groups
    head_dim = channels // heads
    area = height * width

    # The key/value frames each query sample reads, in the order of its offsets (official indexing).
    sample = torch.arange(n_q, device=kv.device)
    frame = torch.arange(clip, device=kv.device)
    source = (sample[:, None] // clip) * clip + (frame[None, :] + sample[:, None]) % clip
    frames = kv.reshape(n_kv * clip, kv_channels, height, width)[source.reshape(-1)]
    frames = frames.view(n_q * clip * groups, group_channels, height, width)

    # Positions in float32 whatever the features' precision: in float16 a coordinate near 200 px
    # would keep only 1/8 px (the grid is cast back once normalised to [-1, 1]).
    base_y, base_x = _tap_grid(kernel, height, width, offset.device)
    offset = offset.view(n_q * clip * groups, taps, 2, area).float()
    queries = q.reshape(n_q, heads, head_dim, area) * head_dim**-0.5
    out = q.new_empty(n_q, heads, head_dim, area)

    per_pixel_bytes = n_q * clip * kv_channels * taps * q.element_size()
    chunk = max(1, min(area, _SAMPLED_BYTES_BUDGET // max(per_pixel_bytes, 1)))
    for start in range(0, area, chunk):
        stop = min(start + chunk, area)
        pos_y = base_y[:, start:stop] + offset[:, :, 0, start:stop]
        pos_x = base_x[:, start:stop] + offset[:, :, 1, start:stop]
        # Pixel coordinates to grid_sample's align_corners=False convention (valid for any size,
        # including 1 px); zero padding gives DCNv2's "outside neighbours count as 0" rule.
        grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1).to(frames.dtype)
        sampled = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (N·clip·frame·group, group_channels, taps, pix) -> (N·clip, frame, K|V, heads, head_dim, taps, pix)
        sampled = sampled.view(n_q, clip, 2, heads, head_dim, taps, stop - start)
        keys, values = sampled[:, :, 0], sampled[:, :, 1]
        logits = torch.einsum("bhdp,bnhdkp->bhnkp", queries[..., start:stop], keys)
        weights = logits.flatten(2, 3).softmax(dim=2).view_as(logits)
        out[..., start:stop] = torch.einsum("bhnkp,bnhdkp->bhdp", weights, values)
    return out.view(n_q, channels, height, width)


def _per_pixel(layer: nn.Module) -> nn.Sequential:
    """``layer`` on the channels of (n, d, c, h, w) features; index 1 as in the checkpoints."""
    return nn.Sequential(Permute(0, 1, 3, 4, 2), layer, Permute(0, 1, 4, 2, 3))


class GuidedDeformAttnPack(nn.Module):
    """RVRT's flow-guided deformable attention (``deform_align.*`` in the checkpoints).

    Offsets are predicted from the query clip, the two flow-warped copies of the propagated clip
    and the two flows, as residuals (at most ``max_residue_magnitude`` px) around the flows.
    """

    def __init__(
        self,
        dim: int,
        attention_heads: int = 12,
        deformable_groups: int = 12,
        clip_size: int = 2,
        attention_window: Sequence[int] = (3, 3),
        max_residue_magnitude: float = 10.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = attention_heads
        self.groups = deformable_groups
        self.clip_size = clip_size
        self.kernel = (int(attention_window[0]), int(attention_window[1]))
        self.max_residue_magnitude = max_residue_magnitude
        taps = self.kernel[0] * self.kernel[1]
        hidden = 64
        offset_in = dim * (1 + clip_size) + 2 * clip_size
        convs: List[nn.Module] = [FrameConv(offset_in, hidden)]
        for _ in range(4):
            convs += [nn.LeakyReLU(0.1, inplace=True), FrameConv(hidden, hidden, (1, 3, 3), padding=(0, 1, 1))]
        convs += [nn.LeakyReLU(0.1, inplace=True), FrameConv(hidden, clip_size * deformable_groups * taps * 2)]
        self.conv_offset = nn.Sequential(*convs)

        # Projection to twice the width "slightly improves the performance" (RVRT paper).
        self.proj_channels = 2 * dim
        self.proj_q = _per_pixel(nn.Linear(dim, self.proj_channels))
        self.proj_k = _per_pixel(nn.Linear(dim, self.proj_channels))
        self.proj_v = _per_pixel(nn.Linear(dim, self.proj_channels))
        self.proj = _per_pixel(nn.Linear(self.proj_channels, dim))
        self.mlp = _per_pixel(Mlp(dim, dim * 2, dim))

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        v_warped: Sequence[Tensor],
        flows: Sequence[Tensor],
    ) -> Tuple[Tensor, List[Tensor]]:
        """q, k, v: (n, clip, dim, h, w) — the current clip's features, the previous clip's
        features and the propagated clip; ``v_warped[i]``, ``flows[i]`` (n, clip, ., h, w): ``v``
        (``i = 0``) or ``v`` reversed in time (``i = 1``) warped by / the flow to frame-aligned.
        Returns the aligned features and the refined flows (mean offset of each of the ``clip``
        offset sets, (n, clip, 2, h, w) as (dx, dy)), which the second refinement pass reuses."""
        n, clip, _, height, width = q.shape
        if clip != self.clip_size or len(flows) != clip:
            raise ValueError(f"expected clips of {self.clip_size} frames, got {clip}")
        stacked = torch.cat([q, *v_warped, *flows], dim=2).transpose(1, 2)
        residue = self.max_residue_magnitude * torch.tanh(self.conv_offset(stacked).transpose(1, 2))
        per_frame = residue.chunk(clip, dim=2)  # each (n, clip, groups·taps·2, h, w)
        pairs = per_frame[0].size(2) // 2
        # Offsets are (dy, dx) per group and tap; flows are (dx, dy).
        offsets = [res + flow.flip(2).repeat(1, 1, pairs, 1, 1) for res, flow in zip(per_frame, flows)]
        offset = torch.cat(offsets, dim=2).flatten(0, 1)

        query = self.proj_q(q).flatten(0, 1)
        kv = torch.cat([self.proj_k(k), self.proj_v(v)], dim=2)
        out = guided_deform_attn(query, kv, offset, self.heads, self.groups, self.kernel)
        out = self.proj(out.view(n, clip, self.proj_channels, height, width))
        out = out + self.mlp(out)
        refined = [o.view(n, clip, pairs, 2, height, width).mean(2).flip(2) for o in offsets]
        return out, refined
