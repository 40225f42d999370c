"""``--serve``: watch a run in a browser (see :mod:`streamer.serve.app` for the URLs).

:func:`open_view` is the one place the ``live`` extra (aiohttp, prometheus-client) is
imported, so a run without ``--serve`` never needs it, and a missing extra is one line.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

from ..errors import UsageError
from .address import ServeAddress, check_serve, parse_serve
from .board import FrameBoard

__all__ = ["FrameBoard", "ServeAddress", "check_serve", "open_view", "parse_serve"]


def open_view(address: ServeAddress, board: FrameBoard, snapshot: Callable[[], Mapping],
              token: Optional[str] = None):
    """A started :class:`~streamer.serve.app.ViewServer` (bound, serving) for ``board``."""
    try:
        from .app import ViewServer   # the extra's entry point (see the module docstring)
    except ImportError as err:
        raise UsageError(f"--serve needs the live extra: pip install 'nystra-stream[live]' ({err.name} is missing)") \
            from None
    server = ViewServer(address, board, snapshot, token)
    server.start()
    return server
