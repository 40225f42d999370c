"""Uformer (Wang et al., "Uformer: A General U-Shaped Transformer for Image Restoration", CVPR 2022).

Inference-only re-implementation of the official ``model.py`` (ZhendongWang6/Uformer): LeWin blocks
(window attention with relative position bias, optional cyclic shift, optional per-window "modulator"
embedding in the decoder), ``linear`` or ``conv`` token projection, ``leff`` or ``ffn`` MLP, ``dd_in``.
Parameter and buffer names match the official checkpoints, so released files load strictly.

Differences from the official code, all numerically neutral for inputs it accepts:

* the official forward only takes square inputs (it recovers ``H = W = sqrt(L)`` from the token count);
  here every stage carries ``(H, W)`` explicitly, so any ``H x W`` that is a multiple of
  ``info.size_multiple`` runs, with identical results to the official code for square ones;
* :meth:`Uformer.forward` pads internally and crops back (``pad_mode``):
  ``"multiple"`` (default) reflect-pads the bottom/right of each dimension to the next multiple of
  ``size_multiple`` only; ``"square"`` is the official test scripts' ``expand2square``: zero padding,
  centred, to a square whose side is a multiple of ``lcm(128, size_multiple)`` (it reproduces the
  official test pipeline exactly, at the cost of much more padding for non-square frames);
* attention goes through :class:`pipelines.attention.WindowAttentionBase` (exact / Nystrom / auto);
  tokens stay in one ``(B, H, W, C)`` map: q/k/v are projected on the map and window partition plus
  head split is a single permute-copy (the per-window modulator is added on the map, the same sum);
* ``window=W`` (:meth:`Uformer.resize_window`): the stages get the windows and shifts the official
  constructor would give them for ``win_size=W`` at the same ``img_size`` (so the clamp below still
  holds: with W=16 at ``img_size=128`` level 3 runs one 16-window without shift and the bottleneck keeps
  its trained 8); each block's relative-position-bias table is resampled bicubically over its
  ``(2w-1) x (2w-1)`` offset grid, its index rebuilt, its modulator (``w*w x dim``) resampled
  bicubically as a ``w x w`` grid; shift masks are always built for the padded input size.

Construction-time window clamp (official semantics, easy to miss): a stage whose training-time feature
map ``img_size // 2**level`` is no larger than the window uses that size as its window and never
shifts, *whatever the input size at run time*. Released models use ``img_size=128`` and window 8, so
the bottleneck (8x8 at training) never shifts, even on 256x256 inputs. ``img_size`` is not stored in
checkpoints: see :func:`infer_config` for how it is recovered (128 when nothing says otherwise).

Not supported: ``cross_modulator`` (unused by every released model; refused with a clear error).
``info.task`` is ``"denoise"``: the SIDD and GoPro checkpoints have identical layouts, so presets that
know better set it with ``dataclasses.replace(model.info, task="deblur")``.

Layout: the architecture is here; window geometry is in :mod:`.uformer_geometry` and state-dict
recognition / config inference in :mod:`.uformer_loading` (which imports this module, never the
other way).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import RegionMask, RelativePositionBias, WindowAttentionBase, WindowBias
from .base import ModelInfo
from .layers import Mlp
from .uformer_geometry import (add_per_window, merge_window_heads, reflect_pad_to, relative_position_index,
                               resize_bias_table, resize_modulator, shift_attention_mask, shift_regions,
                               window_heads)

NAME = "uformer"

# Stage names in official order and the pyramid level (downsampling steps) each runs at.
STAGES: Tuple[str, ...] = ("encoderlayer_0", "encoderlayer_1", "encoderlayer_2", "encoderlayer_3", "conv",
                           "decoderlayer_0", "decoderlayer_1", "decoderlayer_2", "decoderlayer_3")
STAGE_LEVELS: Tuple[int, ...] = (0, 1, 2, 3, 4, 3, 2, 1, 0)
RELEASED_IMG_SIZE = 128  # --train_ps of the released SIDD / GoPro models; see infer_config
PAD_MODES = ("multiple", "square")


@dataclass(frozen=True)
class UformerConfig:
    """The official constructor arguments that change the network (defaults: released Uformer-B)."""

    embed_dim: int = 32
    depths: Tuple[int, ...] = (1, 2, 8, 8, 2, 8, 8, 2, 1)
    num_heads: Tuple[int, ...] = (1, 2, 4, 8, 16, 16, 8, 4, 2)
    win_size: int = 8
    img_size: int = RELEASED_IMG_SIZE  # only decides the construction-time window clamp
    mlp_ratio: float = 4.0
    token_projection: str = "linear"  # linear | conv
    token_mlp: str = "leff"  # leff | ffn
    modulator: bool = True
    qkv_bias: bool = True
    in_chans: int = 3
    dd_in: int = 3
    shift_flag: bool = True  # not visible in a state dict; the official default (and released value)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))

    def stage_dims(self) -> List[int]:
        c = self.embed_dim
        return [c, 2 * c, 4 * c, 8 * c, 16 * c, 16 * c, 8 * c, 4 * c, 2 * c]  # decoders see concats

    def level_window(self, level: int) -> Tuple[int, bool]:
        """(window, may_shift) of a stage at ``level``, the official clamp on ``img_size``."""
        resolution = self.img_size // 2 ** level
        if resolution <= self.win_size:
            return resolution, False
        return self.win_size, self.shift_flag

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: 4 stride-2 downsamplings, whole windows at every level."""
        multiple = 16
        for level in range(5):
            multiple = math.lcm(multiple, 2 ** level * self.level_window(level)[0])
        return multiple


# --------------------------------------------------------------------------------------------------
# building blocks (attribute names = checkpoint key names)


class LinearProjection(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)

    def forward(self, x: Tensor, window: int) -> Tuple[Tensor, Tensor, Tensor]:
        """(B, H, W, C) map -> q, k, v (B, nW, heads, N, d)."""
        k, v = window_heads(self.to_kv(x), window, 2, self.heads)
        return window_heads(self.to_q(x), window, 1, self.heads)[0], k, v


class SepConv2d(nn.Module):
    """Depthwise 3x3, ReLU, pointwise 1x1 (the official ``conv`` token projection's unit)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act_layer = nn.ReLU()
        self.pointwise = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.act_layer(self.depthwise(x)))


class ConvProjection(nn.Module):
    """q, k, v by separable convolutions over each window as its own image (zero padded at its border)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = SepConv2d(dim, dim), SepConv2d(dim, dim), SepConv2d(dim, dim)

    def forward(self, x: Tensor, window: int) -> Tuple[Tensor, Tensor, Tensor]:
        b, h, w, c = x.shape
        rows, cols = h // window, w // window
        images = x.view(b, rows, window, cols, window, c).permute(0, 1, 3, 5, 2, 4)
        images = images.reshape(b * rows * cols, c, window, window)

        def heads_of(conv: SepConv2d) -> Tensor:  # channels are (head, d), as 'b (h d) l w' officially
            out = conv(images).view(b, rows * cols, self.heads, c // self.heads, window * window)
            return out.transpose(-2, -1)

        return heads_of(self.to_q), heads_of(self.to_k), heads_of(self.to_v)


class WindowAttention(WindowAttentionBase):
    """Multi-head self-attention inside w x w windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, token_projection: str, qkv_bias: bool) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        if token_projection == "linear":
            self.qkv: nn.Module = LinearProjection(dim, num_heads, bias=qkv_bias)
        elif token_projection == "conv":
            self.qkv = ConvProjection(dim, num_heads)
        else:
            raise ValueError(f"unknown token projection {token_projection!r}")
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()  # heads, N, N

    @torch.no_grad()
    def resize_window(self, window: int) -> None:
        table = self.relative_position_bias_table
        self.relative_position_bias_table = nn.Parameter(resize_bias_table(table, window),
                                                         requires_grad=table.requires_grad)
        self.relative_position_index = relative_position_index(window).to(table.device)
        self.window = window

    def forward(self, x: Tensor, shift: int) -> Tensor:
        """x: (B, H, W, C) map, already rolled by ``shift``; returns the projected attention output."""
        _, h, w, _ = x.shape
        q, k, v = self.qkv(x, self.window)  # (B, nW, heads, N, d)
        q = q * self.scale if torch.is_grad_enabled() else q.mul_(self.scale)  # q is a fresh copy

        def make_bias() -> WindowBias:
            # Factored, nothing materialised: (heads, N, N) position bias + (nW, N, N) shift mask
            # (as region labels); the attention core builds what its kernel needs.
            grid = (self.window, self.window)
            position = RelativePositionBias(self.relative_position_bias_table, grid, grid,
                                            index=self.relative_position_index)
            if not shift:
                return WindowBias(position)
            regions = shift_regions(h, w, self.window, shift, device=x.device)
            return WindowBias(position, RegionMask(regions, -100.0))

        key = ("uformer", self.window, shift, h, w) if shift else ("uformer", self.window, 0)
        out = self.attend(q, k, v, (self.window, self.window), make_bias=make_bias, bias_key=key)
        return self.proj(merge_window_heads(out, h, w))

    def extra_repr(self) -> str:
        return f"window={self.window}, num_heads={self.num_heads}"


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: linear, depthwise 3x3 conv on the token grid, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C); the permutes are channels-last views
        x = self.linear1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.linear2(x)


class LeWinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, config: UformerConfig,
                 modulator: bool) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        # Official size is win_size**2 (unclamped); it only differs from window**2 where the clamped
        # window would crash the official forward, so the effective window is used here.
        self.modulator = nn.Embedding(window * window, dim) if modulator else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, config.token_projection, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * config.mlp_ratio)
        if config.token_mlp == "leff":
            self.mlp: nn.Module = LeFF(dim, hidden)
        elif config.token_mlp in ("ffn", "mlp"):
            self.mlp = Mlp(dim, hidden)
        else:
            raise ValueError(f"unknown token mlp {config.token_mlp!r}")

    @torch.no_grad()
    def set_window(self, window: int, shift: int) -> None:
        self.attn.resize_window(window)
        if self.modulator is not None:
            weight = self.modulator.weight
            self.modulator.weight = nn.Parameter(resize_modulator(weight, window), requires_grad=weight.requires_grad)
            self.modulator.num_embeddings = window * window
        self.window, self.shift = window, shift

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C)
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        if self.modulator is not None:  # learned offset per window position, seen by q, k and v
            y = add_per_window(y, self.modulator.weight, self.window)
        y = self.attn(y, self.shift)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}"


class BasicUformerLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, level: int, config: UformerConfig,
                 modulator: bool) -> None:
        super().__init__()
        self.level = level
        window, may_shift = config.level_window(level)
        self.blocks = nn.ModuleList(
            LeWinTransformerBlock(dim, num_heads, window, _shift(window, may_shift, i), config, modulator)
            for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _shift(window: int, may_shift: bool, index: int) -> int:
    return window // 2 if may_shift and index % 2 else 0  # odd blocks shift, as officially


class ConvOnGrid(nn.Module):
    """A convolution applied to (B, H, W, C) tokens; ``attr`` names the Sequential as in checkpoints."""

    def __init__(self, attr: str, conv: nn.Module, act: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.Sequential(conv, *([act] if act is not None else [])))

    def forward(self, x: Tensor, channels_last_in: bool = True, channels_last_out: bool = True) -> Tensor:
        if channels_last_in:
            x = x.permute(0, 3, 1, 2)
        x = getattr(self, self.attr)(x)
        return x.permute(0, 2, 3, 1) if channels_last_out else x


# --------------------------------------------------------------------------------------------------
# the network


class Uformer(nn.Module):
    """U-shaped LeWin network: 4 encoder stages, a bottleneck, 4 decoder stages with skip concats."""

    def __init__(self, config: UformerConfig = UformerConfig(), pad_mode: str = "multiple") -> None:
        super().__init__()
        if len(config.depths) != 9 or len(config.num_heads) != 9:
            raise ValueError("Uformer needs 9 depths and 9 head counts")
        self.config = config
        self.pad_mode = pad_mode
        c = config.embed_dim
        self.input_proj = ConvOnGrid("proj", nn.Conv2d(config.dd_in, c, 3, padding=1), nn.LeakyReLU(inplace=True))
        self.output_proj = ConvOnGrid("proj", nn.Conv2d(2 * c, config.in_chans, 3, padding=1))
        dims = config.stage_dims()
        for i, (name, level) in enumerate(zip(STAGES, STAGE_LEVELS)):
            stage = BasicUformerLayer(dims[i], config.depths[i], config.num_heads[i], level, config,
                                      modulator=config.modulator and i > 4)
            setattr(self, name, stage)
            if i < 4:
                setattr(self, f"dowsample_{i}", ConvOnGrid("conv", nn.Conv2d(dims[i], 2 * dims[i], 4, 2, 1)))
            elif i < 8:  # upsample_j feeds decoderlayer_j (concatenated with the level's skip)
                out_dim = c * 2 ** (7 - i)
                setattr(self, f"upsample_{i - 4}", ConvOnGrid("deconv", nn.ConvTranspose2d(dims[i], out_dim, 2, 2)))
        self.info = ModelInfo(arch=NAME, task="denoise", scale=1, in_channels=config.in_chans,
                              size_multiple=config.size_multiple)

    @property
    def pad_mode(self) -> str:
        return self._pad_mode

    @pad_mode.setter
    def pad_mode(self, mode: str) -> None:
        if mode not in PAD_MODES:
            raise ValueError(f"unknown pad mode {mode!r} (choose from {', '.join(PAD_MODES)})")
        self._pad_mode = mode

    def resize_window(self, window: int) -> "Uformer":
        """Run at window ``window`` (see the module docstring for what changes)."""
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        config = replace(self.config, win_size=int(window))
        for name in STAGES:
            stage = getattr(self, name)
            stage_window, may_shift = config.level_window(stage.level)
            for i, block in enumerate(stage.blocks):
                block.set_window(stage_window, _shift(stage_window, may_shift, i))
        self.config = config
        self.info = replace(self.info, size_multiple=config.size_multiple)
        return self

    def forward_padded(self, x: Tensor) -> Tensor:
        """The official forward, for (B, dd_in, H, W) with H, W multiples of ``info.size_multiple``."""
        multiple = self.info.size_multiple
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of {multiple}; use forward()")
        y = self.input_proj(x, channels_last_in=False)
        skips = []
        for i in range(4):
            y = getattr(self, STAGES[i])(y)
            skips.append(y)
            y = getattr(self, f"dowsample_{i}")(y)
        y = self.conv(y)
        for j in range(4):
            y = torch.cat([getattr(self, f"upsample_{j}")(y), skips[3 - j]], dim=-1)
            y = getattr(self, f"decoderlayer_{j}")(y)
        y = self.output_proj(y, channels_last_out=False)
        return x + y if self.config.dd_in == 3 else y

    def forward(self, x: Tensor) -> Tensor:
        """(B, dd_in, H, W) of any size -> (B, in_chans, H, W); pads per ``pad_mode`` and crops back."""
        h, w = x.shape[-2:]
        multiple = self.info.size_multiple
        if self.pad_mode == "square":  # expand2square(x, factor=128) of the official test scripts
            side = math.lcm(RELEASED_IMG_SIZE, multiple)
            side = -(-max(h, w) // side) * side
            top, left = (side - h) // 2, (side - w) // 2
            x = F.pad(x, (left, side - w - left, top, side - h - top))
        else:
            top = left = 0
            x = reflect_pad_to(x, -(-h // multiple) * multiple, -(-w // multiple) * multiple)
        return self.forward_padded(x)[..., top:top + h, left:left + w]
