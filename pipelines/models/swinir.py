"""SwinIR (Liang et al., 2021): image SR, denoising and JPEG artefact removal.

Every official variant: classical SR (``pixelshuffle``), lightweight SR
(``pixelshuffledirect``), real-world SR (``nearest+conv``, ``1conv``/``3conv``), grey/colour
denoising and JPEG CAR (no upsampler). Submodule, parameter and buffer names are those of the
official checkpoints (``relative_position_index`` and ``attn_mask`` included), so released
files load strictly; the forward follows the official one (reflect padding to a window
multiple, ``img_range`` scaling around the mean, crop back). Attention itself is delegated to
:class:`~pipelines.attention.WindowAttentionBase` (exact / Nystrom / auto).

Inference layout (the non-attention work bounds the speed-up, so it is kept to the matmuls):
tokens stay ``(B, H, W, C)`` between blocks, which the RSTB convolutions read as a channels-last
image without copying; cyclic shift + window partition is one gather of the C-wide tokens
before ``qkv`` (never a copy of the 3C-wide qkv output), q/k/v are strided views, and the
inverse gather after ``proj`` undoes both.

Choices beyond the official code (documented here because checkpoints cannot say them):

* ``img_range`` is not stored in checkpoints. The released JPEG CAR models are the only ones
  with window 7 and the only ones trained with ``img_range=255``, so window 7 means 255,
  anything else 1.0; ``from_state_dict(..., img_range=...)`` overrides it.
* ``window=W`` (:meth:`SwinIR.resize_window`) runs a checkpoint at another window size, as the
  PnP-Nystra paper runs SwinIR at window 32: the bias tables are resized bicubically, the
  index is rebuilt, and every block uses window W with shift W//2 on odd blocks, even when W
  is not smaller than ``img_size`` (the official construction rule would then drop the shift
  and shrink the window, which would make the resize meaningless). Stored ``attn_mask``
  buffers are dropped: masks are then always built for the padded input size (they are a
  function of geometry only, and storing them for ``img_size`` at W=64 would cost GBs).
* Padding: reflect as the official code; where reflect cannot pad that far (pad >= size, e.g.
  a 20-pixel-high input at window 64) the mirror pattern continues periodically
  (``abcdcbabcd...``), which equals reflect wherever reflect is defined.

Layout: this file holds the architecture; window geometry and the inference buffers are in
:mod:`.swinir_geometry`, state-dict recognition and config inference in :mod:`.swinir_loading`
(which imports this module, never the other way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.bias import RegionMask, RelativePositionBias, WindowBias
from ..attention.module import WindowAttentionBase
from .base import ModelInfo
from .layers import Mlp
from .qkv_layout import head_major_qkv, heads_layout
from .swinir_geometry import (_MASKED, _gather, _linear, _window_regions, pad_to_multiple,
                              relative_position_index, shift_mask, window_token_order)

NAME = "swinir"

_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean the official models subtract


@dataclass
class SwinIRConfig:
    """The official constructor's hyper-parameters (same names)."""

    img_size: int = 64
    in_chans: int = 3
    embed_dim: int = 96
    depths: Tuple[int, ...] = (6, 6, 6, 6)
    num_heads: Tuple[int, ...] = (6, 6, 6, 6)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    upscale: int = 2
    img_range: float = 1.0
    upsampler: str = ""  # pixelshuffle | pixelshuffledirect | nearest+conv | "" (denoise / CAR)
    resi_connection: str = "1conv"  # 1conv | 3conv
    patch_norm: bool = True
    ape: bool = False
    num_feat: int = 64

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)


# --------------------------------------------------------------------------------------------
# Transformer parts


class WindowAttention(WindowAttentionBase):
    """Multi-head self-attention inside (shifted) windows, with a relative position bias.

    ``qkv_layout``: ``"auto"`` (default), ``"tokens"`` or ``"heads"``: how q, k, v are laid out
    in memory in inference (see :mod:`.qkv_layout`); outputs are the same either way.
    """

    qkv_layout: str = "auto"

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """``(heads, N, N)`` bias gathered from the table (only on a bias-cache miss)."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def resize_window(self, window: int) -> None:
        """Bicubically resample the bias table to ``(2W-1)**2`` entries and rebuild the index."""
        table = self.relative_position_bias_table
        old, new = 2 * self.window_size - 1, 2 * window - 1
        grid = table.float().t().reshape(1, self.num_heads, old, old)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        resized = grid.reshape(self.num_heads, new * new).t().contiguous().to(table.dtype)
        self.relative_position_bias_table = nn.Parameter(resized, requires_grad=table.requires_grad)
        self.relative_position_index = relative_position_index(window).to(table.device)
        self.window_size = window

    def forward(self, windows: Tensor, feature_size: Tuple[int, int], shift: int = 0,
                mask: Optional[Callable[[], "Tensor | RegionMask"]] = None) -> Tensor:
        """``windows``: ``(B, nW*N, C)`` tokens in window order (see ``window_token_order``)
        of a ``feature_size`` map; returns the same layout."""
        batch, tokens, channels = windows.shape
        ws, heads, hd = self.window_size, self.num_heads, self.head_dim
        n = ws * ws
        if heads_layout(self, windows, self.dim, n, self.qkv):
            q, k, v = head_major_qkv(self.qkv, windows, n, heads)
        else:
            # q, k, v as strided views (B, nW, heads, N, d) of the qkv output: no copy here.
            qkv = _linear(self.qkv, windows, "qkv").view(batch, tokens // n, n, 3, heads, hd)
            qkv = qkv.permute(3, 0, 1, 4, 2, 5)
            q, k, v = qkv[0], qkv[1], qkv[2]
        q = q.mul_(self.scale) if not torch.is_grad_enabled() else q * self.scale

        def make_bias() -> WindowBias:
            # Factored, nothing materialised: the attention core builds (and caches within its
            # memory budget) what its kernel needs: (heads, N, N) + (nW, N, N) mask.
            position = RelativePositionBias(self.relative_position_bias_table, (ws, ws), (ws, ws),
                                            index=self.relative_position_index)
            return WindowBias(position, None if mask is None else mask())

        out = self.attend(q, k, v, grid=(ws, ws), make_bias=make_bias,
                          bias_key=("swin", ws, shift) + tuple(feature_size))
        # (``windows`` is dead by now: its buffer takes the projection.)
        return _linear(self.proj, out.transpose(2, 3).reshape(batch, tokens, channels), "windows")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual, on ``(B, H, W, C)`` tokens."""

    def __init__(self, dim: int, img_size: int, num_heads: int, window_size: int, shift_size: int,
                 mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.img_size = img_size
        if img_size <= window_size:  # official rule: one window covers the training crop
            window_size, shift_size = img_size, 0
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio + 1e-6), buffers=("swinir.hidden", "swinir.windows"))
        # (a copy: loading a checkpoint writes into it, and the cached mask must stay exact)
        stored = shift_mask(window_size, shift_size, img_size, img_size).clone() if shift_size > 0 else None
        self.register_buffer("attn_mask", stored)

    def set_window(self, window: int, shift: int) -> None:
        self.attn.resize_window(window)
        self.window_size, self.shift_size = window, shift
        self.attn_mask = None  # masks now always come from the geometry (see module docstring)

    def _mask_source(self, height: int, width: int, device: torch.device) -> Callable[[], "Tensor | RegionMask"]:
        ws, shift = self.window_size, self.shift_size
        if self.attn_mask is not None and (height, width) == (self.img_size, self.img_size):
            stored = self.attn_mask
            return lambda: stored  # the official code uses the stored mask at the training size
        # shift_mask's rule, as region labels: (nW, N) ints instead of (nW, N, N) floats
        return lambda: RegionMask(_window_regions(ws, shift, height, width, device), _MASKED)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        shift = self.shift_size
        # Roll + window partition in one gather, and its inverse after attention.
        order = window_token_order(self.window_size, shift, height, width, x.device)
        y = self.norm1(x).view(batch, height * width, channels)
        if order is not None:
            y = _gather(y, order[0], "windows")
        mask = self._mask_source(height, width, x.device) if shift else None
        y = self.attn(y, (height, width), shift, mask)
        if order is not None:
            y = _gather(y, order[1], "unwindowed")
        x = x + y.view(batch, height, width, channels)
        # (B, H*W, C) view: the MLP's output shares the attention's reused buffer.
        return x + self.mlp(self.norm2(x).view(batch, height * width, channels)).view_as(x)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift_size={self.shift_size}"


class BasicLayer(nn.Module):
    def __init__(self, blocks: List[SwinTransformerBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv closing each RSTB and the body: one 3x3 conv, or a cheap 3-conv bottleneck."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"unknown resi_connection {kind!r}")


def _conv_tokens(conv: nn.Module, x: Tensor) -> Tensor:
    """Apply an image conv to ``(B, H, W, C)`` tokens: both permutes are free (channels-last)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: blocks, a conv, and a skip connection."""

    def __init__(self, config: SwinIRConfig, num_heads: int, depth: int) -> None:
        super().__init__()
        c = config
        self.residual_group = BasicLayer([
            SwinTransformerBlock(c.embed_dim, c.img_size, num_heads, c.window_size,
                                 0 if i % 2 == 0 else c.window_size // 2, c.mlp_ratio, c.qkv_bias)
            for i in range(depth)])
        self.conv = _residual_conv(c.embed_dim, c.resi_connection)

    def forward(self, x: Tensor) -> Tensor:
        return _conv_tokens(self.conv, self.residual_group(x)) + x


class PatchEmbed(nn.Module):
    """Patch size 1: only the optional token norm holds weights (``patch_embed.norm``)."""

    def __init__(self, dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.norm is not None else x


class Upsample(nn.Sequential):
    """Conv + PixelShuffle stages: log2(scale) x2-stages for powers of two, one x3 stage for 3."""

    def __init__(self, scale: int, num_feat: int) -> None:
        if scale & (scale - 1) == 0:
            factors = [2] * int(math.log2(scale))
        elif scale == 3:
            factors = [3]
        else:
            raise ValueError(f"scale {scale} is not supported (powers of 2 and 3)")
        layers: List[nn.Module] = []
        for f in factors:
            layers += [nn.Conv2d(num_feat, f * f * num_feat, 3, 1, 1), nn.PixelShuffle(f)]
        super().__init__(*layers)


class SwinIR(nn.Module):
    """SwinIR: shallow conv, residual Swin transformer groups, task-specific reconstruction."""

    def __init__(self, config: SwinIRConfig) -> None:
        super().__init__()
        c = self.config = config
        self.upscale, self.upsampler, self.img_range = c.upscale, c.upsampler, c.img_range
        self.window_size = c.window_size  # the padding multiple; changes with resize_window
        mean = torch.tensor(_RGB_MEAN) if c.in_chans == 3 else torch.zeros(1)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(c.in_chans, c.embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(c.embed_dim, c.patch_norm)
        if c.ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, c.img_size * c.img_size, c.embed_dim))
        self.layers = nn.ModuleList(RSTB(c, h, d) for d, h in zip(c.depths, c.num_heads))
        self.norm = nn.LayerNorm(c.embed_dim)
        self.conv_after_body = _residual_conv(c.embed_dim, c.resi_connection)

        out_ch, feat = c.in_chans, c.num_feat
        if c.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(c.embed_dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(c.upscale, feat)
            self.conv_last = nn.Conv2d(feat, out_ch, 3, 1, 1)
        elif c.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(c.embed_dim, c.upscale ** 2 * out_ch, 3, 1, 1),
                                          nn.PixelShuffle(c.upscale))
        elif c.upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(c.embed_dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
            if c.upscale == 4:
                self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(feat, out_ch, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        elif c.upsampler == "":
            self.conv_last = nn.Conv2d(c.embed_dim, out_ch, 3, 1, 1)
        else:
            raise ValueError(f"unknown upsampler {c.upsampler!r}")
        self.info = self._make_info()
        self._share_position_index()

    def _share_position_index(self) -> None:
        """One ``relative_position_index`` tensor per window size for the whole model.

        It is geometry only, identical in every block (and every checkpoint stores the same
        values), but (N, N) int64 per block: 36 x 134 MB for SwinIR-M at window 64 if each
        block kept its own. The state dict still lists it under every block's key.
        """
        shared: Dict[Tuple[int, torch.device], Tensor] = {}
        for module in self.modules():
            if isinstance(module, WindowAttention):
                index = module.relative_position_index
                module.relative_position_index = shared.setdefault((module.window_size, index.device), index)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda() convert every buffer separately, which would undo the sharing
        out = super()._apply(fn, *args, **kwargs)
        self._share_position_index()
        return out

    def _make_info(self) -> ModelInfo:
        c = self.config
        task = "sr" if c.upscale > 1 else ("car" if c.window_size == 7 else "denoise")
        return ModelInfo(arch=NAME, task=task, scale=c.upscale, in_channels=c.in_chans,
                         size_multiple=self.window_size)

    def resize_window(self, window: int) -> "SwinIR":
        """Run at window ``window`` (see the module docstring for what changes)."""
        if int(window) != window or window < 2:
            raise ValueError(f"window must be an integer >= 2, got {window!r}")
        window = int(window)
        for layer in self.layers:
            for i, block in enumerate(layer.residual_group.blocks):
                block.set_window(window, 0 if i % 2 == 0 else window // 2)
        self.window_size = window
        self.info = replace(self.info, size_multiple=window)
        self._share_position_index()
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x.permute(0, 2, 3, 1))
        if self.config.ape:
            tokens = tokens + self.absolute_pos_embed.view(1, *tokens.shape[1:])
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size).contiguous(memory_format=torch.channels_last)
        mean = self.mean.to(x.dtype)
        # The official ``out / img_range + mean`` is folded into the output convolution (its
        # weights / img_range, its bias / img_range + mean): two passes over the full-size
        # output fewer, which at x4 is a 16x larger image than the input.
        feat = self.body(self.conv_first((x - mean) * self.img_range))
        if self.upsampler == "":
            # (x_norm + conv_last(feat)) / range + mean == x + conv_last(feat) / range
            out = _output_conv(self.conv_last, feat, self.img_range, None)
            out = out.add_(x) if not torch.is_grad_enabled() else out + x
        elif self.upsampler == "pixelshuffle":
            out = _output_conv(self.conv_last, self.upsample(self.conv_before_upsample(feat)), self.img_range, mean)
        elif self.upsampler == "pixelshuffledirect":
            scale = self.upscale
            conv = _output_conv(self.upsample[0], feat, self.img_range, mean.flatten().repeat_interleave(scale * scale))
            out = F.pixel_shuffle(conv, scale)
        else:  # nearest+conv
            feat = self.conv_before_upsample(feat)
            feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
            if self.upscale == 4:
                feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
            out = _output_conv(self.conv_last, self.lrelu(self.conv_hr(feat)), self.img_range, mean)
        return out[..., :height * self.upscale, :width * self.upscale]

    def body(self, feat: Tensor) -> Tensor:
        """The transformer body and its long skip, on ``conv_first``'s features."""
        out = self.conv_after_body(self.forward_features(feat))
        return out.add_(feat) if not torch.is_grad_enabled() else out + feat


def _output_conv(conv: nn.Conv2d, x: Tensor, img_range: float, mean: Optional[Tensor]) -> Tensor:
    """``conv(x) / img_range + mean`` as one convolution (mean: per output channel, or None)."""
    weight, bias = conv.weight, conv.bias
    if img_range != 1:
        weight, bias = weight / img_range, bias / img_range
    if mean is not None:
        bias = bias + mean.flatten().to(bias.dtype)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
