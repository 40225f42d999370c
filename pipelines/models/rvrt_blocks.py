"""RVRT's video Swin transformer blocks: 3-D window attention with relative position bias and
shifted windows, grouped into residual blocks behind an input convolution.

Module names follow the official RVRT checkpoints (``main.5.0.residual_group.blocks.1.attn...``).
Features stay channels-last, (B, D, H, W, C), inside a block stack; attention itself is delegated
to :class:`pipelines.attention.WindowAttentionBase` (exact or Nystrom, pooled over the 3-D grid).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import RegionMask, RelativePositionBias, WindowAttentionBase, WindowBias
from .layers import Mlp
from .qkv_layout import head_major_qkv, heads_layout

Window = Tuple[int, int, int]

# Shifted windows mask token pairs from different image regions with this additive bias (official).
_MASKED = -100.0


class Permute(nn.Module):
    """Reorders dimensions; a parameter-free step that keeps checkpoint indices in place."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class FrameConv(nn.Conv3d):
    """A Conv3d whose kernel spans one frame ((1, kh, kw), no temporal stride or padding), run
    as a 2-D convolution over all frames: same weights and keys, but the fast 2-D kernels
    (PyTorch's CPU Conv3d has no oneDNN path and is several times slower)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 1, 1), stride=(1, 1, 1),
                 padding=(0, 0, 0), groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups)
        if self.kernel_size[0] != 1 or self.stride[0] != 1 or self.padding[0] != 0:
            raise ValueError("FrameConv kernels must not reach across frames")

    def forward(self, x: Tensor) -> Tensor:
        """(n, c, d, h, w) -> (n, c_out, d, h', w')."""
        n, c, d, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * d, c, h, w)
        out = F.conv2d(frames, self.weight.squeeze(2), self.bias, self.stride[1:], self.padding[1:], 1, self.groups)
        return out.view(n, d, *out.shape[1:]).transpose(1, 2)


def table_size(window: Sequence[int]) -> int:
    """Rows of the relative position bias table: one per 3-D offset inside a window."""
    return math.prod(2 * w - 1 for w in window)


def relative_position_index(grid: Sequence[int], table_window: Optional[Sequence[int]] = None) -> Tensor:
    """(N, N) row of the bias table for each token pair of a ``grid`` window, ``N = prod(grid)``.

    ``table_window`` is the window the table was built for (default: ``grid``); a smaller grid
    (an input smaller than the window) reads the offsets it actually has from the same table.
    """
    table_window = tuple(table_window or grid)
    axes = [torch.arange(g) for g in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (3, N, N), query minus key
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, size in enumerate(table_window):
        index = index * (2 * size - 1) + rel[axis] + (size - 1)
    return index


def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tuple[Window, Window]:
    """An input no larger than the window along an axis is one window there, unshifted (official)."""
    use_window, use_shift = list(window), list(shift)
    for axis, extent in enumerate(size):
        if extent <= window[axis]:
            use_window[axis], use_shift[axis] = extent, 0
    return tuple(use_window), tuple(use_shift)  # type: ignore[return-value]


def partition(x: Tensor, window: Window) -> Tensor:
    """(B, D, H, W, C) -> (B, windows, tokens, C), windows and tokens in raster order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def merge(windows: Tensor, window: Window, size: Window) -> Tensor:
    """Inverse of :func:`partition` for a padded ``size`` (D, H, W)."""
    b, _, _, c = windows.shape
    (d, h, w), (wd, wh, ww) = size, window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


def shift_regions(padded: Window, window: Window, shift: Window, device: torch.device) -> Tensor:
    """(windows, N) region of the padded volume every token of every shifted window came from."""
    labels = []
    for extent, win, sh in zip(padded, window, shift):
        label = torch.zeros(extent, dtype=torch.long, device=device)
        if sh > 0:  # regions [.., -win), [-win, -sh), [-sh, ..)
            label[extent - win : extent - sh] = 1
            label[extent - sh :] = 2
        labels.append(label)
    region = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    return partition(region[None, ..., None], window).squeeze(-1)[0]  # (windows, N)


def shift_mask(padded: Window, window: Window, shift: Window, device: torch.device) -> Tensor:
    """(windows, N, N) additive mask: after the cyclic shift, tokens from different regions of the
    padded volume must not attend to each other."""
    region = shift_regions(padded, window, shift, device)
    differ = region[:, :, None] != region[:, None, :]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, _MASKED)


def resize_bias_table(table: Tensor, old: Window, new: Window) -> Tensor:
    """Interpolate a relative position bias table to another window: bicubic over the spatial
    offsets per temporal offset (trilinear when the temporal extent changes too)."""
    heads = table.shape[1]
    old_sizes = [2 * w - 1 for w in old]
    new_sizes = [2 * w - 1 for w in new]
    grid = table.detach().float().t().reshape(1, heads, *old_sizes)
    if old_sizes[0] == new_sizes[0]:
        planes = grid[0].transpose(0, 1)  # (temporal offsets, heads, h, w)
        planes = F.interpolate(planes, size=new_sizes[1:], mode="bicubic", align_corners=False)
        grid = planes.transpose(0, 1)[None]
    else:
        grid = F.interpolate(grid, size=new_sizes, mode="trilinear", align_corners=False)
    return grid.reshape(heads, -1).t().contiguous().to(table.dtype)


class WindowAttention3D(WindowAttentionBase):
    """Multi-head self-attention inside 3-D windows, with a learnt relative position bias.

    ``qkv_layout``: ``"tokens"`` (default), ``"heads"`` or ``"auto"`` (see :mod:`.qkv_layout`).
    Token-major by default: at the paper's window (2, 64, 64), with one or two windows per
    clip, the head-major product made the whole Nyström model 4 % slower (measured).
    """

    qkv_layout: str = "tokens"

    def __init__(self, dim: int, window: Window, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window = tuple(window)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size(window), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv_self = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: Tensor, grid: Window, regions: Optional[Callable[[], Tensor]], mask_key: tuple) -> Tensor:
        """windows: (B, nW, N, C) tokens of ``grid``-shaped windows; regions: returns the (nW, N)
        shift regions (see ``shift_regions``) or None for unshifted windows."""
        b, n_win, n_tok, c = windows.shape
        if heads_layout(self, windows, c, n_tok, self.qkv_self):  # see .qkv_layout; q is then a buffer of its own
            q, k, v = head_major_qkv(self.qkv_self, windows.reshape(b, n_win * n_tok, c), n_tok, self.num_heads)
            q = q.mul_(self.scale)
        else:
            qkv = self.qkv_self(windows).view(b, n_win, n_tok, 3, self.num_heads, c // self.num_heads)
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, d)
            q = q * self.scale

        def make_bias() -> WindowBias:
            # Factored, nothing materialised (one layer's dense bias is 1.6 GB at (2, 64, 64)):
            # the attention core builds what its kernel needs within its memory budget.
            index = self.relative_position_index if grid == self.window else None
            position = RelativePositionBias(self.relative_position_bias_table, self.window, grid, index=index)
            return WindowBias(position, None if regions is None else RegionMask(regions(), _MASKED))

        out = self.attend(q, k, v, grid, make_bias=make_bias, bias_key=("rvrt", grid) + mask_key)
        return self.proj(out.transpose(2, 3).reshape(b, n_win, n_tok, c))

    def resize_window(self, window: Window, index: Optional[Tensor] = None) -> None:
        """Run at another window: interpolate the bias table, rebuild the index (``index`` lets
        layers with the same window share one tensor; big windows make it large)."""
        window = tuple(window)
        if window == self.window:
            return
        table = resize_bias_table(self.relative_position_bias_table.data, self.window, window)
        trainable = self.relative_position_bias_table.requires_grad
        self.relative_position_bias_table = nn.Parameter(table, requires_grad=trainable)
        device = self.relative_position_index.device
        self.relative_position_index = (index if index is not None else relative_position_index(window)).to(device)
        self.window = window


class SwinLayer3D(nn.Module):
    """(Shifted-)window attention and an MLP, each pre-normed with a residual (official ``STL``)."""

    def __init__(self, dim: int, num_heads: int, window: Window, shifted: bool, mlp_ratio: float,
                 qkv_bias: bool) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @property
    def shift(self) -> Window:
        return tuple(w // 2 for w in self.attn.window) if self.shifted else (0, 0, 0)

    def _attention(self, x: Tensor) -> Tensor:
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.attn.window, self.shift)
        x = self.norm1(x)
        # Zero-pad (after the norm, as the official code does) to whole windows.
        pads = [(-extent) % win for extent, win in zip((d, h, w), window)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = tuple(x.shape[1:4])
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            device = x.device
            regions, mask_key = (lambda: shift_regions(padded, window, shift, device)), (shift, padded)
        else:
            regions, mask_key = None, ()
        x = merge(self.attn(partition(x, window), window, regions, mask_key), window, padded)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._attention(x)
        return x + self.mlp(self.norm2(x))


class STG(nn.Module):
    """A stack of Swin layers alternating plain and shifted windows (official ``STG``)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Window, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinLayer3D(dim, num_heads, window, i % 2 == 1, mlp_ratio, qkv_bias) for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class RSTB(nn.Module):
    """Residual Swin transformer block: ``x + linear(STG(x))``, channels-last."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: Window, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.residual_group = STG(dim, depth, num_heads, window, mlp_ratio, qkv_bias)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(self.residual_group(x))


class RSTBWithInputConv(nn.Module):
    """A grouped (1, 3, 3) convolution, then RSTBs, LayerNorm on both sides.

    (n, d, c_in, h, w) -> (n, d, dim, h, w). ``main`` keeps the official indices (1 conv, 3 and 7
    norms, 5 blocks); the official permutes at 4 and 6 are no-ops here since blocks run channels-last.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        groups: int,
        num_blocks: int,
        depth: int,
        num_heads: int,
        window: Window,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        blocks = nn.Sequential(*(RSTB(dim, depth, num_heads, window, mlp_ratio, qkv_bias) for _ in range(num_blocks)))
        self.main = nn.Sequential(
            Permute(0, 2, 1, 3, 4),
            FrameConv(in_channels, dim, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=groups),
            Permute(0, 2, 3, 4, 1),
            nn.LayerNorm(dim),
            nn.Identity(),
            blocks,
            nn.Identity(),
            nn.LayerNorm(dim),
            Permute(0, 1, 4, 2, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


class Upsample(nn.Sequential):
    """x4 by two (conv, pixel shuffle, LeakyReLU) stages on (n, c, d, h, w), then a conv."""

    def __init__(self, num_feat: int) -> None:
        layers: List[nn.Module] = []
        for _ in range(2):
            layers += [FrameConv(num_feat, 4 * num_feat, (1, 3, 3), padding=(0, 1, 1)), Permute(0, 2, 1, 3, 4),
                       nn.PixelShuffle(2), Permute(0, 2, 1, 3, 4), nn.LeakyReLU(0.1, inplace=True)]
        layers.append(FrameConv(num_feat, num_feat, (1, 3, 3), padding=(0, 1, 1)))
        super().__init__(*layers)
