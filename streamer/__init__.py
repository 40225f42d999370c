"""How frames flow: sources, windows, workers, sinks, and ``run`` which wires them.

``streamer.run(input, output, **options) -> Stats`` is the Python entry point (the CLI,
``nystra-stream``, is a thin layer over it); ``streamer.Run`` is the same run as an object
whose ``stats`` survive a failure, and ``streamer.Options`` describes every option.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {"run": "pipeline", "Run": "pipeline", "Stats": "pipeline", "Options": "options"}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .options import Options
    from .pipeline import Run, Stats, run


def __getattr__(name: str):
    # Loaded on first use, not to dodge an import cycle: the CPU pool's worker processes import
    # ``streamer.pool`` and need not pay for the source/sink (FFmpeg) modules they never use.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'streamer' has no attribute {name!r}")
