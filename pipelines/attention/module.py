"""Base class for window self-attention layers whose attention kernel can be switched.

Model files (SwinIR, Uformer, RVRT) subclass :class:`WindowAttentionBase` for every
window-attention layer and call :meth:`WindowAttentionBase.attend` with their
(already scaled) q, k, v. :func:`pipelines.attention.patch_attention` then switches
every such layer between ``exact``, ``nystrom`` and ``auto`` without touching the
state dict (the mode lives in plain attributes, never in parameters or buffers).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Hashable, Optional, Sequence

import torch
from torch import Tensor, nn

from . import auto
from .cache import BiasCache, freeze_key, parameter_stamp
from .exact import exact_attention
from .landmarks import PooledBias
from .nystrom import nystrom_attention

MODES = ("exact", "nystrom", "auto")
BiasFactory = Optional[Callable[[], Optional[Tensor]]]


class WindowAttentionBase(nn.Module):
    """A window self-attention layer with a switchable attention kernel.

    Attributes set by ``patch_attention``: ``attention_mode`` (exact | nystrom | auto),
    ``landmarks``, ``iters`` and ``nystrom_bias`` (False: Nyström drops the bias, as the
    paper does). ``last_decision`` records what the latest call ran (see ``attention_plan``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention_mode: str = "exact"  # exact | nystrom | auto
        self.landmarks: int = 16
        self.iters: int = 2
        self.nystrom_bias: bool = True
        self.last_decision: Optional[auto.Decision] = None
        self.last_window: Optional[tuple] = None
        self.attention_cache = BiasCache()
        self._auto_memo: Dict[Hashable, auto.Decision] = {}

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        grid: Sequence[int],
        make_bias: BiasFactory = None,
        bias_key: Optional[Hashable] = None,
    ) -> Tensor:
        """Attention of one layer over all its windows.

        q, k, v: ``(..., heads, N, d)``; q already multiplied by ``head_dim**-0.5``.
        grid: the window's token grid, ``(h, w)`` or ``(t, h, w)``, ``prod(grid) == N``.
        make_bias: returns the additive bias broadcastable to ``(..., heads, N, N)``
            (relative position bias plus shift mask) or None; called only when the
            cached value for ``bias_key`` is missing.
        bias_key: hashable naming what ``make_bias`` depends on besides this layer's
            parameters (e.g. padded feature size and shift); ``None`` disables caching.
            Tensors inside it are keyed by storage and version, not identity.
        Returns ``(..., heads, N, d)``.

        Biases are cached only while autograd is off; with grad enabled ``make_bias`` is
        called every time so that gradients reach the bias table (training runs exact).
        """
        grid = tuple(int(g) for g in grid)
        self.last_window = (grid, tuple(q.shape))
        mode = self.attention_mode
        if mode == "auto":
            mode = self._auto_choice(q, grid, make_bias, bias_key).choice
        elif mode in ("exact", "nystrom"):
            self.last_decision = auto.Decision(mode, "fixed")
        else:
            raise ValueError(f"unknown attention mode {mode!r} (choose from {', '.join(MODES)})")
        if mode == "nystrom":
            pooled = self._pooled_bias(q, grid, make_bias, bias_key) if self.nystrom_bias else None
            return nystrom_attention(q, k, v, grid, self.landmarks, self.iters, bias=pooled)
        return exact_attention(q, k, v, self._dense_bias(q, make_bias, bias_key))

    # -- biases -------------------------------------------------------------------------------

    def _bias(self, key: Optional[Hashable], make_bias: BiasFactory, convert: Callable[[Tensor], object]):
        if make_bias is None:
            return None

        def build():
            dense = make_bias()
            return None if dense is None else convert(dense)

        if key is None or torch.is_grad_enabled():
            return build()
        return self.attention_cache.get(parameter_stamp(self), key, build)

    def _dense_key(self, q: Tensor, bias_key: Optional[Hashable]) -> Optional[Hashable]:
        return None if bias_key is None else ("exact", freeze_key(bias_key), q.device, q.dtype)

    def _pooled_key(self, q: Tensor, grid: tuple, bias_key: Optional[Hashable]) -> Optional[Hashable]:
        if bias_key is None:
            return None
        return ("nystrom", freeze_key(bias_key), q.device, q.dtype, grid, self.landmarks)

    def _dense_bias(self, q: Tensor, make_bias: BiasFactory, bias_key: Optional[Hashable]) -> Optional[Tensor]:
        return self._bias(self._dense_key(q, bias_key), make_bias, lambda b: b.to(q.device, q.dtype))

    def _pooled_bias(self, q: Tensor, grid: tuple, make_bias: BiasFactory,
                     bias_key: Optional[Hashable]) -> Optional[PooledBias]:
        def pool(dense: Tensor) -> PooledBias:
            return PooledBias.from_bias(dense.to(q.device), grid, self.landmarks).to(q.device, q.dtype)

        return self._bias(self._pooled_key(q, grid, bias_key), make_bias, pool)

    # -- auto ---------------------------------------------------------------------------------

    def _auto_choice(self, q: Tensor, grid: tuple, make_bias: BiasFactory,
                     bias_key: Optional[Hashable]) -> auto.Decision:
        if torch.is_grad_enabled():
            decision = auto.Decision("exact", "grad enabled")
        elif 2 * self.landmarks >= math.prod(grid):
            decision = auto.Decision("exact", "landmarks >= N/2")
        else:
            memo_key = (tuple(q.shape), str(q.device), q.dtype, grid, self.landmarks, self.iters,
                        self.nystrom_bias, freeze_key(bias_key), make_bias is None)
            decision = self._auto_memo.get(memo_key)
            if decision is None:
                decision = self._measure(q, grid, make_bias, bias_key)
                if bias_key is not None:
                    if len(self._auto_memo) >= 64:  # many input sizes: start over rather than grow
                        self._auto_memo.clear()
                    self._auto_memo[memo_key] = decision
        self.last_decision = decision
        return decision

    def _measure(self, q: Tensor, grid: tuple, make_bias: BiasFactory, bias_key: Optional[Hashable]) -> auto.Decision:
        dense = self._dense_bias(q, make_bias, bias_key)
        pooled = self._pooled_bias(q, grid, make_bias, bias_key) if self.nystrom_bias else None
        layout = None if dense is None else (tuple(dense.shape), self.nystrom_bias)
        key = auto.decision_key(q, grid, self.landmarks, self.iters, layout)
        landmarks, iters = self.landmarks, self.iters

        def synthetic() -> tuple:
            # Scores ~ N(0, 1) as after the model's scaling; values and keys unit scale.
            d = q.shape[-1]
            make = lambda: torch.randn(q.shape, dtype=q.dtype, device=q.device)  # noqa: E731
            return make() * d**-0.5, make(), make()

        inputs: list = []

        def run_exact():
            if not inputs:
                inputs.extend(synthetic())
            return exact_attention(*inputs, dense)

        def run_nystrom():
            if not inputs:
                inputs.extend(synthetic())
            return nystrom_attention(*inputs, grid, landmarks, iters, bias=pooled)

        decision = auto.decide(key, run_exact, run_nystrom, q.device)
        # Keep only the bias the chosen kernel uses (dense biases of big windows are large).
        if decision.choice == "nystrom":
            dense_key = self._dense_key(q, bias_key)
            if dense_key is not None:
                self.attention_cache.discard(dense_key)
        else:
            pooled_key = self._pooled_key(q, grid, bias_key)
            if pooled_key is not None:
                self.attention_cache.discard(pooled_key)
        return decision

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # (BiasCache empties itself when copied or pickled)
        state["_auto_memo"] = {}
        return state
