"""TimerHeap firing in one pass (``due``), registration, and what checkpoints write of timers,
against a model: a set of live (time, key) fired in (time, stored key) order."""

from __future__ import annotations

import random
from typing import Any

import pytest

import eddies as ed
from eddies.runtime.timers import EVENT, Timers
from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore, RocksDbStateBackend
from eddies.state.keys import state_key
from eddies.testing import Harness

PREFIX = KeyedStateStore(InMemoryStateBackend()).prefix


def order(timer: tuple[int, Any]) -> tuple[int, bytes]:
    return timer[0], PREFIX(timer[1])


def fire(timers: Timers, until: int, how: str, during: Any = None) -> list[tuple[int, Any]]:
    """Fire every event-time timer up to ``until``, calling ``during(time, key)`` after each
    (as on_timer would run)."""
    fired = []
    if how == "due":
        for due in timers.event.due(until):
            fired.append(due)
            if during is not None:
                during(*due)
    else:
        while (due := timers.event.pop_due(until)) is not None:
            fired.append(due)
            if during is not None:
                during(*due)
    return fired


@pytest.mark.parametrize("limit", [None, 7])
@pytest.mark.parametrize("how", ["due", "pop_due"])
def test_timers_fire_in_order_with_registrations_and_deletes_while_firing(
        how: str, limit: int | None) -> None:
    """While timers fire, the function registers timers (at the time firing, before it, after
    it, beyond the watermark) and deletes others: each fires in its turn in the same pass, in
    (time, stored key) order among the live ones, or not at all once deleted."""
    rng = random.Random(11)
    db = InMemoryStateBackend()
    timers = Timers("op", PREFIX, limit=limit)
    timers.load(db)
    model: set[tuple[int, Any]] = set()
    now = 0
    for _ in range(300):
        for _ in range(rng.randrange(1, 12)):
            t = now + rng.randrange(1, 60)
            key = state_key(f"k{rng.randrange(40)}")
            timers.register(EVENT, t, key)
            model.add((t, key))
        if rng.random() < 0.3:
            batch = Batch()
            timers.collect(batch)
            db.write(batch)
        until = now + rng.randrange(0, 40)
        expected: list[tuple[int, Any]] = []

        def during(time: int, key: Any, until: int = until,
                   expected: list[tuple[int, Any]] = expected) -> None:
            expected.append(min(model, key=order))  # the model's next due timer
            model.discard((time, key))
            roll = rng.random()
            if roll < 0.3:  # at the time firing, or before it (due at once), or later
                t = time + rng.choice([-3, -1, 0, 0, 0, 2, until - time + 5])
                k = state_key(f"k{rng.randrange(40)}")
                timers.register(EVENT, t, k)
                model.add((t, k))
            elif roll < 0.5 and model:
                t, k = rng.choice(sorted(model, key=repr))
                timers.delete(EVENT, t, k)
                model.discard((t, k))

        fired = fire(timers, until, how, during)
        assert fired == expected
        assert not [t for t in model if t[0] <= until]
        now = until
        assert timers.event.next_time() == min((t for t, _ in model), default=None)
    batch = Batch()
    timers.collect(batch)
    db.write(batch)
    again = Timers("op", PREFIX, limit=limit)
    assert again.load(db) == len(model)
    assert fire(again, 2**62, how) == sorted(model, key=order)


def test_a_timer_registered_and_fired_between_checkpoints_is_never_written() -> None:
    """A timer registered and fired (or deleted) before the next checkpoint leaves nothing in
    it: no put, no delete. One written before it fires is deleted."""
    timers = Timers("op", PREFIX)
    for i in range(50):
        timers.register(EVENT, 100 + i % 3, state_key(f"k{i}"))
    timers.delete(EVENT, 101, state_key("k1"))
    assert len(fire(timers, 200, "due")) == 49
    batch = Batch()
    timers.collect(batch)
    assert batch.ops == []

    timers.register(EVENT, 300, state_key("written"))
    timers.register(EVENT, 300, state_key("deleted"))
    batch = Batch()
    timers.collect(batch)
    assert len(batch) == 2
    timers.register(EVENT, 300, state_key("fresh"))
    timers.delete(EVENT, 300, state_key("deleted"))
    assert fire(timers, 300, "due") == sorted(
        [(300, state_key("fresh")), (300, state_key("written"))], key=order)
    batch = Batch()
    timers.collect(batch)
    assert sorted(op[:3] for op in batch.singles()) == sorted(
        (1, timers.cf, PREFIX(k)[:2] + b"e" + (300 + 2**63).to_bytes(8, "big") + PREFIX(k)[2:])
        for k in (state_key("written"), state_key("deleted")))


@pytest.mark.parametrize("how", ["due", "pop_due"])
@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_stored_timers_match_the_live_ones_after_every_checkpoint(
        backend: str, how: str, tmp_path) -> None:
    """Registrations, deletions, firings and registrations again of the same timers, with
    checkpoints in between and a small window: after each checkpoint the timers column family
    holds exactly the live timers (nothing fired or deleted left behind, nothing live lost),
    whichever of them were written before."""
    rng = random.Random(3)
    db = InMemoryStateBackend() if backend == "memory" else RocksDbStateBackend(tmp_path)
    timers = Timers("op", PREFIX, limit=6)
    timers.load(db)
    model: set[tuple[int, Any]] = set()
    keys = [state_key(f"k{i}") for i in range(12)]
    now = 0
    for _ in range(2_000):
        roll = rng.random()
        key = rng.choice(keys)
        if roll < 0.45:
            t = now + rng.randrange(-2, 15)  # a few due at once, in the past
            timers.register(EVENT, t, key)
            model.add((t, key))
        elif roll < 0.65 and model:
            t, key = rng.choice(sorted(model, key=repr))
            timers.delete(EVENT, t, key)
            model.discard((t, key))
        elif roll < 0.85:
            now += rng.randrange(0, 6)
            fired = fire(timers, now, how)
            assert fired == sorted((t for t in model if t[0] <= now), key=order)
            model.difference_update(fired)
        else:
            batch = Batch()
            timers.collect(batch)
            db.write(batch)
            stored = [k for k, _ in db.iterate(timers.cf)]
            assert stored == sorted(
                PREFIX(k)[:2] + b"e" + (t + 2**63).to_bytes(8, "big") + PREFIX(k)[2:]
                for t, k in model)
    db.close()


class EndTotals(ed.KeyedProcessFunction):
    """Job 1's shape: a timer per new key at one end-of-input time."""

    total = ed.ValueState("total")

    def on_event(self, event, ctx):
        if self.total.get() is None:
            ctx.timers.register_event_time(2**62)
        self.total.set((self.total.get() or 0) + event)

    def on_timer(self, timestamp, ctx):
        yield ctx.key, self.total.get()


def test_timers_at_one_time_fire_in_key_order_and_leave_no_stored_timer() -> None:
    """Every key's timer at one time fires once, in stored-key order (key group first), and
    the checkpoint after deletes them all."""
    h = Harness(EndTotals())
    keys = [f"u{i}" for i in range(200)]
    for i in range(1_000):
        h.event(i % 7, key=keys[(i * 31) % 200], timestamp=i)
        if i == 600:
            h.checkpoint()  # some timers written before they fire, the rest not
    out = h.watermark(2**62)
    assert [k for k, _ in out] == sorted(keys, key=lambda k: PREFIX(state_key(k)))
    assert sum(v for _, v in out) == sum(i % 7 for i in range(1_000))
    assert h.pending_timers() == []
    assert list(h.backend.iterate(h.operator.timers.cf)) == []
    h.close()


def test_heaps_replaced_as_a_rebalance_does_store_timers_under_their_own_domain() -> None:
    """A Kafka rebalance replaces both heaps with fresh ones (``type(heap)()``) before loading
    the owned key groups: registrations after it keep their domain in the stored key."""
    timers = Timers("op", PREFIX)
    timers.event = type(timers.event)()
    timers.processing = type(timers.processing)()
    key = state_key("k")
    timers.register(EVENT, 7, key)
    timers.register(b"p", 7, key)
    timers.register(b"p", 9, key)
    batch = Batch()
    timers.collect(batch)
    assert sorted(k[2:3] + k[3:11] for _, _, k, _ in batch.singles()) == [
        d + (t + 2**63).to_bytes(8, "big") for d, t in ((b"e", 7), (b"p", 7), (b"p", 9))]
    assert [(d, t) for d, t, _ in timers.pending()] == [
        ("event", 7), ("processing", 7), ("processing", 9)]
