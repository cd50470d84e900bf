"""Restart: state, timers and the watermark survive a RocksDB close and reopen, and a snapshot."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest

import eddies as ed
from eddies.errors import StateDirLockedError
from eddies.state import (
    BroadcastState,
    ListState,
    MapState,
    ReducingState,
    RocksDbStateBackend,
    Ttl,
    ValueState,
)
from eddies.testing import Harness


class Everything(ed.KeyedBroadcastProcessFunction):
    """Every primitive, a TTL'd value, and both kinds of timer."""

    last = ValueState("last")
    brief = ValueState("brief", ttl=Ttl(seconds=10))
    history = ListState("history")
    places = MapState("places")
    total = ReducingState("total", operator.add)
    rules = BroadcastState("rules")

    def on_broadcast(self, event, ctx):
        self.rules.put(event["rule"], event["limit"])

    def on_event(self, event, ctx):
        self.last.set(event["v"])
        self.brief.set(event["v"])
        self.history.add(event["v"])
        self.places.put((event["place"], ctx.timestamp), event["v"])
        self.total.add(event["v"])
        ctx.timers.register_event_time(ctx.timestamp + 100_000)
        ctx.timers.register_processing_time(500)

    def on_timer(self, timestamp, ctx):
        yield (
            "timer",
            ctx.key,
            timestamp,
            ctx.time_domain,
            self.total.get(),
            self.rules.get("max"),
        )


def drive(h: Harness) -> None:
    h.broadcast({"rule": "max", "limit": 50})
    h.event({"v": 1, "place": "home"}, key="alice", timestamp=1_000)
    h.event({"v": 2, "place": "work"}, key="alice", timestamp=2_000)
    h.event({"v": 7, "place": "home"}, key=("bob", 2), timestamp=3_000)
    h.watermark(5_000)


def check(h: Harness) -> None:
    assert h.state("last", "alice") == 2
    assert h.state("brief", "alice") == 2
    assert h.state("history", "alice") == [1, 2]
    assert h.state("places", "alice") == {("home", 1_000): 1, ("work", 2_000): 2}
    assert h.state("total", "alice") == 3
    assert h.state("rules", None) == {"max": 50}
    assert h.state("history", ("bob", 2)) == [7]
    assert h.state("total", ("bob", 2)) == 7
    assert h.pending_timers() == [
        ("event", 101_000),
        ("event", 102_000),
        ("event", 103_000),
        ("processing", 500),
        ("processing", 500),
    ]
    assert h.pending_timers("alice") == [
        ("event", 101_000),
        ("event", 102_000),
        ("processing", 500),
    ]
    assert h.operator.watermark == 5_000, "the watermark is restored with the state"
    # TTL keeps counting from the original write, and timers fire in order with state intact.
    h.watermark(12_000)
    assert h.state("brief", "alice") is None
    assert h.state("brief", ("bob", 2)) == 7
    # Equal times fire in stored-key order: key group 108 (bob) before 118 (alice).
    assert h.processing_time(500) == [
        ("timer", ("bob", 2), 500, "processing", 7, 50),
        ("timer", "alice", 500, "processing", 3, 50),
    ]
    assert h.watermark(102_000) == [
        ("timer", "alice", 101_000, "event", 3, 50),
        ("timer", "alice", 102_000, "event", 3, 50),
    ]
    assert h.pending_timers() == [("event", 103_000)]


def test_rocksdb_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state"
    first = Harness(Everything(), state=f"rocksdb:{path}")
    drive(first)
    first.close()
    second = Harness(Everything(), state=f"rocksdb:{path}")
    try:
        check(second)
    finally:
        second.close()
    # What the second run did (fired timers, expired state) is durable too.
    third = Harness(Everything(), state=f"rocksdb:{path}")
    try:
        assert third.pending_timers() == [("event", 103_000)]
        assert third.state("brief", "alice") is None
        assert third.state("total", "alice") == 3
    finally:
        third.close()


def test_rocksdb_durable_backend_reopens(tmp_path: Path) -> None:
    path = tmp_path / "state"
    first = Harness(Everything(), state=RocksDbStateBackend(path, durability=True))
    drive(first)
    first.close()
    second = Harness(Everything(), state=RocksDbStateBackend(path))
    try:
        check(second)
    finally:
        second.close()


@pytest.mark.parametrize("source", ["memory", "rocksdb"])
def test_snapshot_restores_into_a_memory_harness(source: str, tmp_path: Path) -> None:
    spec = "memory" if source == "memory" else f"rocksdb:{tmp_path / 'state'}"
    first = Harness(Everything(), state=spec)
    drive(first)
    first.processing_time(100)
    blob = first.snapshot()
    assert isinstance(blob, bytes)
    first.close()
    second = Harness(Everything())
    second.restore(blob)
    check(second)


def test_snapshot_restores_across_cache_state(tmp_path: Path) -> None:
    """A snapshot holds what was only in the write-back cache, and restore drops old caches."""
    first = Harness(Everything())
    drive(first)
    first.event({"v": 10, "place": "gym"}, key="alice", timestamp=4_000)  # not yet flushed
    blob = first.snapshot()
    second = Harness(Everything())
    second.restore(blob)
    assert second.state("history", "alice") == [1, 2, 10]
    assert second.state("total", "alice") == 13


def test_restore_rejects_an_unknown_snapshot_version() -> None:
    import msgpack

    h = Harness(Everything())
    with pytest.raises(ed.errors.StateError, match="version"):
        h.restore(msgpack.packb({"version": 99, "cfs": {}}))


def test_a_state_dir_opens_once(tmp_path: Path) -> None:
    path = tmp_path / "state"
    first = Harness(Everything(), state=f"rocksdb:{path}")
    try:
        with pytest.raises(StateDirLockedError, match="in use"):
            Harness(Everything(), state=f"rocksdb:{path}")
    finally:
        first.close()
    Harness(Everything(), state=f"rocksdb:{path}").close()


def test_a_failed_harness_releases_its_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "state"
    with pytest.raises(ed.errors.ConfigError):
        Harness(object(), state=f"rocksdb:{path}")  # type: ignore[arg-type]
    Harness(Everything(), state=f"rocksdb:{path}").close()


def test_harness_as_context_manager_closes(tmp_path: Path) -> None:
    path = tmp_path / "state"
    with Harness(Everything(), state=f"rocksdb:{path}") as h:
        drive(h)
    with Harness(Everything(), state=f"rocksdb:{path}") as h:
        check(h)


def test_snapshot_from_every_backend(backend) -> None:
    """Including a TtlStateBackend passed in: snapshots move stored bytes below the TTL layer."""
    first = Harness(Everything(), state=backend)
    drive(first)
    blob = first.snapshot()
    second = Harness(Everything())
    second.restore(blob)
    check(second)
