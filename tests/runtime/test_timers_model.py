"""Timers against a plain model: the stored timers equal the live ones after every checkpoint,
and a restore fires what the live heap would, through registrations and deletions while
timers fire, timers registered again right after they fired, firing cut short by an error in
on_timer, and heaps that hold only ``limit`` timers in memory (spilling to the store and the
pending-write buffer and reading back in ranges)."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import pytest

from eddies.runtime.timers import EVENT, Timers
from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore
from eddies.state.keys import state_key

PREFIX = KeyedStateStore(InMemoryStateBackend()).prefix


def stored_key(time: int, key: Any) -> bytes:
    prefix = PREFIX(key)
    return prefix[:2] + EVENT + (time + 2**63).to_bytes(8, "big") + prefix[2:]


def firing_order(timer: tuple[int, Any]) -> tuple[int, bytes]:
    return timer[0], PREFIX(timer[1])


def checkpoint(timers: Timers, db: InMemoryStateBackend) -> list[bytes]:
    batch = Batch()
    timers.collect(batch)
    db.write(batch)
    return [k for k, _ in db.iterate(timers.cf)]


def loaded(db: InMemoryStateBackend, limit: int | None) -> Timers:
    """An operator's timers holding ``limit`` in memory, attached to ``db``."""
    timers = Timers("op", PREFIX, limit=limit)
    timers.load(db)
    return timers


def heap_with(timers_at: list[tuple[int, str]],
              limit: int) -> tuple[InMemoryStateBackend, Timers]:
    """Timers holding ``limit`` in memory, with ``timers_at`` registered and checkpointed."""
    db = InMemoryStateBackend()
    timers = loaded(db, limit)
    for time, key in timers_at:
        timers.register(EVENT, time, state_key(key))
    checkpoint(timers, db)
    return db, timers


def fire_all(timers: Timers, until: int) -> list[tuple[int, Any]]:
    return list(iter(lambda: timers.event.pop_due(until), None))


class OnTimerFailed(Exception):
    pass


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("walk", ["due", "pop_due"])
@pytest.mark.parametrize("limit", [None, 1, 3, 6])
def test_stored_and_fired_timers_follow_the_model(seed: int, walk: str, limit: int | None) -> None:
    rng = random.Random(seed)
    db = InMemoryStateBackend()
    timers = loaded(db, limit)
    live: set[tuple[int, Any]] = set()
    keys = [state_key(f"k{i}") for i in range(10)]
    now = 0
    for step in range(600):
        roll = rng.random()
        if roll < 0.4:  # a registration, possibly already due
            timer = (now + rng.randrange(-2, 25), rng.choice(keys))
            timers.register(EVENT, *timer)
            live.add(timer)
        elif roll < 0.55 and live:
            timer = rng.choice(sorted(live, key=repr))
            timers.delete(EVENT, *timer)
            live.discard(timer)
        elif roll < 0.85:  # the watermark moves: fire what is due
            now += rng.randrange(0, 6)
            fail_after = rng.randrange(0, 8) if rng.random() < 0.2 else None
            fired = 0
            heap = timers.event
            due = heap.due(now) if walk == "due" else iter(partial(heap.pop_due, now), None)
            try:
                for time, key in due:
                    assert (time, key) == min(live, key=firing_order), step
                    live.discard((time, key))
                    fired += 1
                    if fail_after is not None and fired > fail_after:
                        raise OnTimerFailed
                    r = rng.random()
                    if r < 0.25:  # on_timer registers another timer, due or not
                        timer = (time + rng.choice([-3, -1, 0, 0, 1, 30]), rng.choice(keys))
                        timers.register(EVENT, *timer)
                        live.add(timer)
                    elif r < 0.4 and live:
                        timer = rng.choice(sorted(live, key=repr))
                        timers.delete(EVENT, *timer)
                        live.discard(timer)
                    elif r < 0.5:  # the same timer again
                        timers.register(EVENT, time, key)
                        live.add((time, key))
            except OnTimerFailed:
                pass
            else:
                assert not [t for t in live if t[0] <= now], step
        else:
            stored = checkpoint(timers, db)
            assert stored == sorted(stored_key(*t) for t in live), step
            if rng.random() < 0.3:  # restart from the checkpoint
                timers = loaded(db, limit)
    checkpoint(timers, db)
    restored = loaded(db, limit)
    assert fire_all(restored, 2**62) == sorted(live, key=firing_order)


def test_a_timer_fired_then_registered_again_and_spilled_stays_stored() -> None:
    """Its old stored copy, deletion pending, is not read back in its place."""
    db, timers = heap_with([(10, "a"), (20, "b"), (30, "c")], limit=2)
    assert fire_all(timers, 10) == [(10, "a")]
    for time, key in ((10, "a"), (5, "x"), (6, "y")):  # the last ones spill "a"
        timers.register(EVENT, time, state_key(key))
    timers.delete(EVENT, 5, state_key("x"))
    timers.event.next_time()  # reads the next range back
    live = {(10, "a"), (6, "y"), (20, "b"), (30, "c")}
    assert checkpoint(timers, db) == sorted(stored_key(t, k) for t, k in live)


def test_timers_fired_before_a_spill_do_not_fire_again() -> None:
    db, timers = heap_with([(10, "a"), (20, "b"), (30, "c")], limit=2)
    assert fire_all(timers, 20) == [(10, "a"), (20, "b")]
    for time, key in ((5, "x"), (6, "y"), (7, "z")):  # due at once; they spill the heap
        timers.register(EVENT, time, state_key(key))
    assert fire_all(timers, 20) == [(5, "x"), (6, "y"), (7, "z")]


def test_timers_a_failed_on_timer_left_unfired_survive_the_checkpoint() -> None:
    """More fired timers than ``limit`` are deleted by key-group range: the range stops at
    the last one fired."""
    by_group: dict[bytes, list[Any]] = {}
    i = 0
    while True:
        key = state_key(f"k{i}")
        group = by_group.setdefault(PREFIX(key)[:2], [])
        group.append(key)
        if len(group) == 10:
            break
        i += 1
    db = InMemoryStateBackend()
    timers = loaded(db, 4)
    for key in group:
        timers.register(EVENT, 100, key)
    checkpoint(timers, db)
    fired = []
    with pytest.raises(OnTimerFailed):
        for _, key in timers.event.due(100):
            fired.append(key)
            if len(fired) == 6:
                raise OnTimerFailed
    checkpoint(timers, db)
    restored = loaded(db, 4)
    assert sorted(k for _, k in fire_all(restored, 100)) == sorted(set(group) - set(fired))
