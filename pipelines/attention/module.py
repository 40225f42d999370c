"""Base class for window self-attention layers whose attention kernel can be switched.

Model files (SwinIR, Uformer, RVRT) subclass :class:`WindowAttentionBase` for every
window-attention layer and call :meth:`WindowAttentionBase.attend` with their
(already scaled) q, k, v. :func:`pipelines.attention.patch_attention` then switches
every such layer between ``exact``, ``nystrom`` and ``auto`` without touching the
state dict (the mode lives in plain attributes, never in parameters or buffers).

Biases: ``make_bias`` describes the layer's bias (best as a factored
:class:`~pipelines.attention.bias.WindowBias`); the description is kept per layer and bias
key, and everything built from it (dense rows for exact, pooled terms for Nyström) goes
through the process-wide byte-bounded store (:mod:`~pipelines.attention.store`), so memory
for biases stays under one budget whatever the window size (see :mod:`.resolve`).
"""
from __future__ import annotations

import itertools
import math
import weakref
from typing import Callable, Dict, Hashable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import auto
from .bias import WindowBias
from .cache import BiasCache, freeze_key, parameter_stamp
from .exact import exact_attention
from .landmarks import PooledBias, landmark_grid
from .nystrom import nystrom_attention
from .resolve import LayerBiases, exact_with_bias
from .settings import DEFAULT, MODES
from .store import STORE

BiasFactory = Optional[Callable[[], Union[WindowBias, Tensor, None]]]

_OWNERS = itertools.count(1)
_NO_BIAS, _OPAQUE = "no bias", "opaque dense bias"  # description-cache markers


class WindowAttentionBase(nn.Module):
    """A window self-attention layer with a switchable attention kernel.

    Attributes set by ``patch_attention``: ``attention_mode`` (exact | nystrom | auto),
    ``landmarks``, ``iters`` and ``nystrom_bias`` (False: Nyström drops the bias, as the
    paper does). ``last_decision`` records what the latest call ran (see ``attention_plan``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention_mode: str = DEFAULT.mode  # exact | nystrom | auto
        self.landmarks: int = DEFAULT.landmarks
        self.iters: int = DEFAULT.iters
        self.nystrom_bias: bool = DEFAULT.bias_aware
        self.last_decision: Optional[auto.Decision] = None
        self.last_window: Optional[tuple] = None
        self.exact_fallbacks = 0  # window-heads recomputed exactly after a Nyström breakdown
        self.attention_cache = BiasCache()
        self._auto_memo: Dict[Hashable, auto.Decision] = {}
        self._new_bias_owner()

    # Geometry buffers that models may share between layers (one (N, N) index per window size
    # instead of one per block: GBs at window 64). A state dict must not hand out shared
    # storage (safetensors refuses it, and edits through one key would change others), so
    # each key gets its own copy there; the copy is small at trained window sizes.
    shared_buffers: Sequence[str] = ("relative_position_index",)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self.shared_buffers:
            key = prefix + name
            if key in destination and isinstance(destination[key], Tensor):
                destination[key] = destination[key].clone()

    def _new_bias_owner(self) -> None:
        """A fresh identity in the bias store; the layer's entries go when the layer does."""
        owner = next(_OWNERS)
        self._bias_owner = owner
        self._store_generation = -1
        weakref.finalize(self, STORE.drop_owner, owner)

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
        make_bias: returns the additive bias (relative position bias plus shift mask) or None:
            either a :class:`~pipelines.attention.bias.WindowBias` (position table and mask
            geometry, nothing materialised; its mask runs along q's window axis, q being
            ``(..., nW, heads, N, d)``) or a dense tensor broadcastable to
            ``(..., heads, N, N)``. Called only when the description for ``bias_key`` is not
            cached (for a dense tensor: when what is built from it is not cached).
        bias_key: hashable naming what ``make_bias`` depends on besides this layer's
            parameters (e.g. padded feature size and shift); ``None`` disables caching.
            Tensors inside it are keyed by storage and version, not identity.
        Returns ``(..., heads, N, d)``.

        Biases are cached only while autograd is off; with grad enabled ``make_bias`` is
        called every time and its dense form used, so that gradients reach the bias table.
        """
        grid = tuple(int(g) for g in grid)
        self.last_window = (grid, tuple(q.shape))
        mode = self.attention_mode
        if mode not in MODES:
            raise ValueError(f"unknown attention mode {mode!r} (choose from {', '.join(MODES)})")
        biases = self._biases(q, grid, make_bias, bias_key)
        if mode == "auto":
            mode = self._auto_choice(q, grid, biases).choice
        else:
            self.last_decision = auto.Decision(mode, "fixed")
        if torch.is_grad_enabled():
            return self._attend_with_grad(q, k, v, grid, mode, biases)
        if mode == "nystrom":
            terms = biases.pooled(landmark_grid(grid, self.landmarks)) if self.nystrom_bias else ()
            lead = tuple(q.shape[:-2])
            return nystrom_attention(q, k, v, grid, self.landmarks, self.iters, bias=terms,
                                     exact_bias=lambda items: self._exact_rows(biases, lead, items))
        return exact_with_bias(q, k, v, biases)

    def _attend_with_grad(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple, mode: str,
                          biases: LayerBiases) -> Tensor:
        """Plain differentiable forms (training, small windows): the bias materialised."""
        dense = biases.dense_factory() if biases.opaque else (None if biases.desc is None else biases.desc.dense())
        if mode == "nystrom":
            pooled = None
            if dense is not None and self.nystrom_bias:
                pooled = PooledBias.from_bias(dense, grid, self.landmarks)
            return nystrom_attention(q, k, v, grid, self.landmarks, self.iters, bias=pooled)
        return exact_attention(q, k, v, dense)

    def _exact_rows(self, biases: LayerBiases, lead: tuple, items: Tensor) -> Optional[Tensor]:
        """The true bias of window-heads whose Nyström output broke down (they are recomputed
        exactly; counted in ``exact_fallbacks``)."""
        self.exact_fallbacks += items.numel()
        return biases.item_rows(lead, items)

    # -- biases -------------------------------------------------------------------------------

    def _biases(self, q: Tensor, grid: tuple, make_bias: BiasFactory, bias_key: Optional[Hashable]) -> LayerBiases:
        device, dtype = q.device, q.dtype
        if make_bias is None:
            return LayerBiases(None, grid, device, dtype)
        if bias_key is None or torch.is_grad_enabled():
            made = make_bias()
            if made is None or isinstance(made, WindowBias):
                return LayerBiases(made, grid, device, dtype)
            return LayerBiases(None, grid, device, dtype, dense_factory=lambda: made)
        stamp = parameter_stamp(self)
        generation = self.attention_cache.check(stamp)
        if generation != self._store_generation:  # weights changed (or first call)
            STORE.drop_owner(self._bias_owner)
            self._store_generation = generation
        key = freeze_key(bias_key)
        fresh: list = []

        def describe():
            made = make_bias()
            if made is None:
                return _NO_BIAS
            if isinstance(made, WindowBias):
                return made
            fresh.append(made)  # a dense tensor: never kept here, only what the store admits
            return _OPAQUE

        desc = self.attention_cache.get(stamp, key, describe)
        owner = (self._bias_owner, generation)
        if desc is _OPAQUE:
            factory = (lambda: fresh.pop() if fresh else make_bias())
            return LayerBiases(None, grid, device, dtype, owner[0], owner[1], key, dense_factory=factory)
        return LayerBiases(None if desc is _NO_BIAS else desc, grid, device, dtype, owner[0], owner[1], key)

    def bias_store_entries(self) -> int:
        """How many values this layer has in the bias store (for tests and diagnostics)."""
        return STORE.owned_by(self._bias_owner)

    # -- auto ---------------------------------------------------------------------------------

    def _auto_choice(self, q: Tensor, grid: tuple, biases: LayerBiases) -> auto.Decision:
        n = math.prod(grid)
        if torch.is_grad_enabled():
            decision = auto.Decision("exact", "grad enabled")
        elif 2 * self.landmarks >= n:
            decision = auto.Decision("exact", "landmarks >= N/2")
        else:
            memo_key = (tuple(q.shape), str(q.device), q.dtype, grid, self.landmarks, self.iters,
                        self.nystrom_bias, biases.key, biases.owner is None, biases.generation)
            decision = self._auto_memo.get(memo_key)
            if decision is None:
                decision = auto.floor_decision(q, grid, self.landmarks, self.iters)
                if decision is None:
                    decision = self._measure(q, grid, biases)
                if biases.owner is not None:
                    if len(self._auto_memo) >= 64:  # many input sizes: start over rather than grow
                        self._auto_memo.clear()
                    self._auto_memo[memo_key] = decision
        self.last_decision = decision
        return decision

    def _measure(self, q: Tensor, grid: tuple, biases: LayerBiases) -> auto.Decision:
        lgrid = landmark_grid(grid, self.landmarks)
        terms = biases.pooled(lgrid) if self.nystrom_bias else ()
        key = auto.decision_key(q, grid, self.landmarks, self.iters, (biases.layout(), self.nystrom_bias))
        landmarks, iters = self.landmarks, self.iters
        inputs: list = []

        def synthetic() -> list:
            if not inputs:  # scores ~ N(0, 1) as after the model's scaling; values and keys unit scale
                make = lambda: torch.randn(q.shape, dtype=q.dtype, device=q.device)  # noqa: E731
                inputs.extend((make() * q.shape[-1] ** -0.5, make(), make()))
            return inputs

        decision = auto.decide(key, lambda: exact_with_bias(*synthetic(), biases),
                               lambda: nystrom_attention(*synthetic(), grid, landmarks, iters, bias=terms), q.device)
        # Keep only what the chosen kernel uses (dense biases of big windows are large).
        if decision.choice == "nystrom":
            biases.forget_dense()
        else:
            biases.forget_pooled()
        return decision

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # (BiasCache empties itself when copied or pickled)
        state["_auto_memo"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._new_bias_owner()  # a copy must never read (or drop) the original's entries
