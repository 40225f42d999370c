"""Exact and PnP-Nystrom window attention, and switching a model between them."""
from .auto import Decision, auto_decisions, reset_auto_decisions
from .exact import exact_attention
from .landmarks import PooledBias, landmark_grid, pool_tokens, pooling_matrix
from .module import MODES, WindowAttentionBase
from .nystrom import EPS, TAU, iterative_pinv, kappa, nystrom_attention
from .patch import attention_plan, patch_attention, unpatch
from .workspace import clear_workspace

__all__ = [
    "EPS", "MODES", "TAU", "Decision", "PooledBias", "WindowAttentionBase", "attention_plan",
    "auto_decisions", "clear_workspace", "exact_attention", "iterative_pinv", "kappa", "landmark_grid",
    "nystrom_attention", "patch_attention", "pool_tokens", "pooling_matrix", "reset_auto_decisions", "unpatch",
]
