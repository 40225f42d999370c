"""How frames flow: sources, windows, workers, sinks, and ``run`` which wires them.

``streamer.run(input, output, **options) -> Stats`` is the Python entry point (the CLI,
``nystra-stream``, is a thin layer over it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["run", "Stats"]

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Stats, run


def __getattr__(name: str):
    # Imported on first use: worker processes import ``streamer.workers`` and should not
    # pay for the sink/source (FFmpeg) imports they never use.
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'streamer' has no attribute {name!r}")
