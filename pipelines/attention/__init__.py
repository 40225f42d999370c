"""Exact and PnP-Nystrom window attention, and switching a model between them.

Memory (environment variables, read when this package is imported):

* ``NYSTRA_BIAS_CACHE_MB``: bytes of attention biases kept across calls, for all layers and
  models of the process together (default: an eighth of physical memory, at most 2048; 0
  keeps none). What does not fit is built per call, in pieces (see :mod:`.store`).
* ``NYSTRA_BIAS_CHUNK_MB``: the largest bias piece built per call (default 256).
* ``NYSTRA_WORKSPACE_MB``: per-thread scratch buffers of the Nyström kernel (default 512).

Numerical safety: ``NYSTRA_NYSTROM_GUARD`` (default 1.5, see :mod:`.guard`);
:func:`fallback_count` counts the window-heads recomputed exactly in this process.

At runtime: :func:`set_bias_cache_budget`; :data:`STORE` holds the cached values.

Which kernel a model runs, with its options, is an :class:`AttentionSettings` (defaults stated
once, in :mod:`.settings`).
"""
from .auto import Decision, auto_decisions, reset_auto_decisions
from .bias import RegionMask, RelativePositionBias, WindowBias
from .exact import exact_attention
from .guard import fallback_count
from .landmarks import PooledBias, landmark_grid, pool_tokens, pooling_matrix
from .module import WindowAttentionBase
from .nystrom import EPS, TAU, iterative_pinv, kappa, nystrom_attention
from .patch import attention_plan, patch_attention, unpatch
from .settings import DEFAULT, MODES, RUN_DEFAULT, AttentionSettings, Window
from .store import STORE, set_bias_cache_budget
from .workspace import clear_workspace

__all__ = [
    "DEFAULT", "EPS", "MODES", "RUN_DEFAULT", "STORE", "TAU", "AttentionSettings", "Decision", "PooledBias",
    "RegionMask", "RelativePositionBias",
    "WindowAttentionBase", "WindowBias", "attention_plan", "auto_decisions", "clear_workspace", "exact_attention",
    "fallback_count", "iterative_pinv", "kappa", "landmark_grid", "nystrom_attention", "patch_attention",
    "pool_tokens", "pooling_matrix", "reset_auto_decisions", "set_bias_cache_budget", "unpatch", "Window",
]
