"""The byte-bounded bias store: budget, scan-resistant admission, owners."""
from __future__ import annotations

import torch

from pipelines.attention.store import BiasStore, default_budget


def tensor(kib: int) -> torch.Tensor:
    return torch.zeros(kib * 256)  # float32: kib KiB


def run_pass(store: BiasStore, keys, kib: int = 1) -> int:
    """One 'forward': every key once, in order; returns how many were cache hits."""
    hits = 0
    for key in keys:
        hit = store.lookup(key) is not None
        hits += hit
        if not hit:
            store.get(key, lambda: tensor(kib), nbytes=kib * 1024)
        assert store.nbytes <= store.budget
    return hits


def test_never_holds_more_than_the_budget_and_refuses_what_cannot_fit():
    store = BiasStore(budget=10 * 1024)
    built = store.get("big", lambda: tensor(11), nbytes=11 * 1024)
    assert built.numel() == 11 * 256  # still built for the caller...
    assert "big" not in store and store.nbytes == 0  # ...but not kept
    for i in range(30):
        store.get(i, lambda: tensor(3), nbytes=3 * 1024)
        assert store.nbytes <= 10 * 1024
    assert len(store) == 3


def test_cyclic_use_larger_than_the_budget_keeps_a_stable_part_cached():
    # 12 layers called in order every frame, room for 5: plain LRU would never hit.
    store = BiasStore(budget=5 * 1024)
    layers = [f"layer{i}" for i in range(12)]
    assert run_pass(store, layers) == 0
    hits = [run_pass(store, layers) for _ in range(4)]
    assert hits == [5, 5, 5, 5]


def test_a_new_working_set_displaces_the_old_one_once_it_recurs():
    store = BiasStore(budget=4 * 1024)
    old, new = [f"old{i}" for i in range(4)], [f"new{i}" for i in range(4)]
    run_pass(store, old)
    assert run_pass(store, old) == 4
    assert run_pass(store, new) == 0  # first sight: the old entries are not colder yet
    assert run_pass(store, new) == 0  # second: old ones unused for a whole cycle make way
    assert run_pass(store, new) == 4
    assert not any(key in store for key in old)


def test_owners_drop_their_entries():
    store = BiasStore(budget=1 << 20)
    store.put("a", tensor(1), owner=1)
    store.put("b", tensor(1), owner=2)
    store.put("shared", tensor(1))
    assert store.owned_by(1) == 1
    store.drop_owner(1)
    assert "a" not in store and "b" in store and "shared" in store
    assert store.nbytes == 2 * 1024
    store.put(("layer", 2, "x", 1), tensor(1), owner=2)
    assert store.keys_with_prefix(("layer", 2)) == [("layer", 2, "x", 1)]


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("NYSTRA_BIAS_CACHE_MB", "12.5")
    assert default_budget() == int(12.5 * 2**20)
    monkeypatch.setenv("NYSTRA_BIAS_CACHE_MB", "0")
    assert BiasStore().budget == 0
    assert BiasStore().get("x", lambda: tensor(1), nbytes=1024) is not None  # built, never kept
    monkeypatch.delenv("NYSTRA_BIAS_CACHE_MB")
    assert 0 < default_budget() <= 2 << 30
