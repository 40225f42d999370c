"""Per-layer cache of bias *descriptions*, and the stamps that say when a layer's biases change.

A layer's bias is fixed once its parameters are. What ``make_bias`` returns for a bias key (a
:class:`~pipelines.attention.bias.WindowBias`: a reference to the layer's table and the window
geometry, a few KB) is kept here per layer; what is *built* from it (dense or pooled tensors,
possibly GBs) lives in the process-wide, byte-bounded :mod:`~pipelines.attention.store`.
Entries are stamped with the version counter, storage pointer, device and dtype of every
parameter and buffer of the layer, so ``load_state_dict``, ``.to()``, ``.half()`` and in-place
edits under ``no_grad`` all invalidate them and bump the cache's ``generation`` (which the
layer's store keys carry); edits through ``.data`` bypass version counters and are not seen.
The cache is a plain attribute: it never appears in ``state_dict()`` and is emptied when a
layer is copied or pickled.
"""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

from torch import Tensor, nn


def _tensor_stamp(t: Tensor) -> tuple:
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter
        version = None
    return (version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


def parameter_stamp(module: nn.Module) -> tuple:
    """What the module's cached values depend on: a change in any parameter or buffer changes it."""
    return tuple(_tensor_stamp(t) for t in itertools.chain(module.parameters(), module.buffers()))


def freeze_key(key: Any) -> Hashable:
    """A bias key with tensors replaced by their stamp (tensors hash by identity, not content)."""
    if isinstance(key, Tensor):
        return ("tensor",) + _tensor_stamp(key)
    if isinstance(key, (tuple, list)):
        return tuple(freeze_key(k) for k in key)
    return key


class BiasCache:
    """A small LRU of bias descriptions, cleared whenever the owner's parameter stamp changes."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._entries: "OrderedDict[Hashable, Any]" = OrderedDict()
        self.generation = 0  # bumped on every stamp change

    def check(self, stamp: tuple) -> int:
        """Note the owner's current stamp (clearing everything if it changed); the generation."""
        with self._lock:
            self._check(stamp)
            return self.generation

    def _check(self, stamp: tuple) -> None:
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp
            self.generation += 1

    def get(self, stamp: tuple, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            self._check(stamp)
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()  # outside the lock: building may be slow; a racing duplicate is harmless
        with self._lock:
            if stamp == self._stamp:
                self._entries[key] = value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # Locks cannot be copied or pickled, and a copy must not share (or carry) stale biases.
    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"])
