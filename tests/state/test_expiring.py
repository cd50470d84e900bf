"""The slots of states declared with ``on_expire`` (``eddies.state.expiring``): one per key
while the key is queued, found by its queue entry and by the key's next miss alike."""

from __future__ import annotations

from typing import Any

from eddies.state import InMemoryStateBackend, KeyedStateStore, Ttl, ValueState
from eddies.state.expiring import UNQUEUED, ExpiringValueHandle
from eddies.state.handles import MISSING


def bound() -> tuple[KeyedStateStore, Any]:
    store = KeyedStateStore(InMemoryStateBackend())
    handle = store.bind(ValueState("acc", ttl=Ttl(ms=100), on_expire=True))
    assert isinstance(handle, ExpiringValueHandle)
    for key, ts in [("a", 10), ("b", 20), ("c", 30)]:
        store.set_key(key, ts)
        handle.set(key.upper())
    store.flush()
    return store, handle


def test_a_trimmed_queued_key_keeps_its_slot_for_its_entry_and_its_next_read() -> None:
    store, handle = bound()
    slots = dict(handle._cache)
    assert store.trim(limit=0) == 3  # clean, so dropped from the cache; queued, so parked
    assert handle._cache == {}
    assert handle._parked == slots and all(s.value is MISSING for s in slots.values())
    assert store.cached_entries() == 0  # parked slots are not cached entries

    store.set_key("a", 40)
    assert handle.get() == "A"  # the miss takes the parked slot back, value read in
    assert handle._cache["a"] is slots["a"] and "a" not in handle._parked
    store.set_key("c", 50)
    handle.set("C2")  # a blind write to a parked key reuses its slot and moves its stamp
    assert handle._cache["c"] is slots["c"] and slots["c"].stamp == 150

    fired: list[tuple[int, Any, Any]] = []
    handle.expire_until(1_000, lambda time, key, value: fired.append((time, key, value)))
    # b's value was never read back: its entry reads it through the slot it carries; c's
    # entry at 130 finds the later stamp and moves on to it.
    assert fired == [(110, "a", "A"), (120, "b", "B"), (150, "c", "C2")]
    assert handle._parked == {}
    store.flush()  # the expired values are deleted
    assert store.backend.inner.count("acc") == 0


def test_a_value_cleared_and_set_again_keeps_one_slot_and_fires_once() -> None:
    store, handle = bound()
    slot = handle._cache["a"]
    store.set_key("a", 10)
    handle.clear()
    assert slot.queued == UNQUEUED  # its entry at 110 is stale now
    handle.set("A2")  # the same stamp again: the slot is queued anew at 110
    assert handle._cache["a"] is slot and slot.queued == 110
    fired: list[Any] = []
    handle.expire_until(1_000, lambda time, key, value: fired.append((time, key, value)))
    assert [f for f in fired if f[1] == "a"] == [(110, "a", "A2")]
