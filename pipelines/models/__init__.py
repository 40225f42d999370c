"""Model architectures: one model file per architecture (``swinir``, ``uformer``, ``rvrt``,
the layers as the official checkpoints name them) and one loading file beside it
(``*_loading``: recognise a state dict, infer the config, build, load strictly). A loading
module imports its model module, never the other way, and provides:

- ``NAME``: str
- ``matches(state_dict) -> bool``: whether a (unwrapped) state dict is this architecture
- ``from_state_dict(state_dict, window=None) -> nn.Module``: infer the config, build the
  model, adapt to ``window`` if given, load strictly, return it (train mode untouched;
  the loader sets eval mode and attention)
- ``infer_config(state_dict)``: the architecture's config dataclass
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import List

# Order matters only for speed: ``matches`` must be unambiguous.
_LOADING_MODULES = ("swinir_loading", "uformer_loading", "rvrt_loading")


def architectures() -> List[ModuleType]:
    """The architectures' loading modules that are present (imported lazily: loading one
    checkpoint should not build every architecture's module)."""
    found = []
    for name in _LOADING_MODULES:
        try:
            found.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    return found
