"""Exact and PnP-Nystrom window attention, and switching a model between them."""
from .module import WindowAttentionBase
from .patch import patch_attention, unpatch

__all__ = ["WindowAttentionBase", "patch_attention", "unpatch"]
