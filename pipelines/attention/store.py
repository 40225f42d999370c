"""One process-wide, byte-bounded cache for everything built from attention biases.

Dense biases of large windows are huge (one shifted SwinIR layer at window 64 is 1.6 GB), so
no layer keeps its own: every layer's dense and pooled biases live here, under one budget
(``NYSTRA_BIAS_CACHE_MB``, default: an eighth of physical memory, at most 2 GiB; 0 disables
caching). A value that does not fit is simply not kept: the caller builds it for the call and
drops it (what the official code pays on every call anyway).

Admission is scan-resistant. A model calls its layers in the same order on every frame; with
plain LRU, a working set larger than the budget evicts every entry just before its next use
and nothing is ever reused. Here a new value may evict only entries that went unused for a
whole reuse interval of the newcomer (since it was last asked for), i.e. entries colder than
itself; otherwise it is refused. So the layers that fit stay cached frame after frame, and
after a change of input size the old size's entries make way once the new ones recur.
Entries are tagged with an owner (a layer) so that a layer whose weights change, or that is
garbage-collected, drops its own; geometry-only values (shift masks) have no owner and are
shared by every layer.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional

import torch


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    """``NYSTRA_BIAS_CACHE_MB`` if set, else min(2 GiB, physical memory / 8)."""
    configured = os.environ.get("NYSTRA_BIAS_CACHE_MB")
    if configured is not None and configured.strip():
        return max(0, int(float(configured) * 2**20))
    memory = _physical_memory()
    return min(2 << 30, memory // 8) if memory else 1 << 30


def nbytes_of(value: Any) -> int:
    """Bytes held by a tensor, an object with ``nbytes``, or a tuple of those."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes_of(v) for v in value)
    return int(getattr(value, "nbytes", 0))


@dataclass
class _Entry:
    value: Any
    nbytes: int
    owner: Optional[int]
    used: int  # tick of the latest use


class BiasStore:
    """Byte-bounded cache with owner tags and scan-resistant admission (see module docstring)."""

    def __init__(self, budget: Optional[int] = None, max_ghosts: int = 4096) -> None:
        self.budget = default_budget() if budget is None else int(budget)
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Hashable, _Entry]" = OrderedDict()  # least recently used first
        self._ghosts: "OrderedDict[Hashable, int]" = OrderedDict()  # refused keys -> tick last asked
        self._max_ghosts = max_ghosts
        self._tick = 0
        self._nbytes = 0
        self.stats: Dict[str, int] = {"hits": 0, "misses": 0, "refused": 0, "evicted": 0}

    # -- queries --------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys_with_prefix(self, prefix: tuple) -> list:
        """Cached keys (tuples) that start with ``prefix``."""
        size = len(prefix)
        with self._lock:
            return [k for k in self._entries if isinstance(k, tuple) and k[:size] == prefix]

    def owned_by(self, owner: int) -> int:
        """How many entries ``owner`` has."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.owner == owner)

    # -- use ------------------------------------------------------------------------------------

    def lookup(self, key: Hashable) -> Any:
        """The cached value for ``key`` (marked used), or None."""
        with self._lock:
            self._tick += 1
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry.used = self._tick
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
            return entry.value

    def reserve(self, key: Hashable, nbytes: int) -> bool:
        """Whether a value of ``nbytes`` for ``key`` would be kept; if so, room is made for it
        now (so callers can decide between building it whole and building it in parts)."""
        with self._lock:
            self._tick += 1
            self.stats["misses"] += 1
            if key in self._entries:
                return True
            if nbytes > self.budget:
                self._refuse(key)
                return False
            free = self.budget - self._nbytes
            if nbytes <= free:
                return True
            asked_before = self._ghosts.get(key)
            if asked_before is None:
                self._refuse(key)
                return False
            victims, gained = [], 0
            for victim, entry in self._entries.items():  # oldest first
                if entry.used >= asked_before:
                    break  # used within the newcomer's reuse interval: at least as hot
                victims.append(victim)
                gained += entry.nbytes
                if free + gained >= nbytes:
                    break
            if free + gained < nbytes:
                self._refuse(key)
                return False
            for victim in victims:
                self._nbytes -= self._entries.pop(victim).nbytes
                self.stats["evicted"] += 1
            return True

    def put(self, key: Hashable, value: Any, owner: Optional[int] = None) -> bool:
        """Keep ``value`` if it fits now (after a successful :meth:`reserve`); True if kept."""
        size = nbytes_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            if self._nbytes + size > self.budget:
                return False
            self._entries[key] = _Entry(value, size, owner, self._tick)
            self._nbytes += size
            self._ghosts.pop(key, None)
            return True

    def get(self, key: Hashable, build: Callable[[], Any], nbytes: int, owner: Optional[int] = None) -> Any:
        """The cached value, or ``build()`` (kept if admitted). ``nbytes``: its expected size."""
        found = self.lookup(key)
        if found is not None:
            return found
        keep = self.reserve(key, nbytes)
        value = build()  # outside the lock: building may be slow; a racing duplicate is harmless
        if keep and value is not None:
            self.put(key, value, owner)
        return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._nbytes -= entry.nbytes

    def drop_owner(self, owner: int) -> None:
        """Forget every entry of ``owner`` (its weights changed, or it is gone)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.owner == owner]:
                self._nbytes -= self._entries.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._ghosts.clear()
            self._nbytes = 0

    def _refuse(self, key: Hashable) -> None:
        self.stats["refused"] += 1
        self._ghosts[key] = self._tick
        self._ghosts.move_to_end(key)
        while len(self._ghosts) > self._max_ghosts:
            self._ghosts.popitem(last=False)


#: The process-wide store every window-attention layer uses.
STORE = BiasStore()


def set_bias_cache_budget(megabytes: float) -> None:
    """Change the budget of the process-wide store (drops what it holds)."""
    STORE.clear()
    STORE.budget = max(0, int(megabytes * 2**20))
