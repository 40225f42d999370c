"""Model architectures. Each architecture module provides:

- ``NAME``: str
- ``matches(state_dict) -> bool``: whether a (unwrapped) state dict is this architecture
- ``from_state_dict(state_dict, window=None) -> nn.Module``: infer the config, build the
  model, adapt to ``window`` if given, load strictly, return it (train mode untouched;
  the loader sets eval mode and attention)
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import List

# Order matters only for speed: ``matches`` must be unambiguous.
_ARCH_MODULES = ("swinir", "uformer", "rvrt")


def architectures() -> List[ModuleType]:
    """The architecture modules that are present (imported lazily)."""
    found = []
    for name in _ARCH_MODULES:
        try:
            found.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    return found
