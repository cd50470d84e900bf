"""Numbers in keys follow Python, and values keep ints of any size, on every backend.

``1``, ``1.0`` and ``True`` are one state key and one map key, in the cache, in the backend
and after a restart; map keys order by value with ints and floats interleaved; the inspector
finds key 1 when asked for ``1.0``; ints beyond 64 bits come back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import KeyEncodingError
from eddies.runtime.cli import main
from eddies.runtime.inspection import get_entry, query_state
from eddies.state import (
    InMemoryStateBackend,
    KeyedStateStore,
    MapState,
    RocksDbStateBackend,
    StateBackend,
    ValueState,
    decode_key,
)
from eddies.testing import Harness

T0 = 1_000


class Reopenable:
    """A backend that can be closed and opened again (RocksDB), or kept (memory)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.memory = InMemoryStateBackend()

    def open(self) -> StateBackend:
        return self.memory if self.kind == "memory" else RocksDbStateBackend(self.path)


@pytest.fixture(params=["memory", "rocksdb"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Reopenable:
    return Reopenable(request.param, tmp_path / "state")


def test_map_keys_1_and_1_0_and_true_are_one_entry(backends: Reopenable) -> None:
    db = backends.open()
    store = KeyedStateStore(db)
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put(1, "int")
    m.put(1.0, "float")
    m.put(True, "bool")
    m.put(("n", 2.0), "float in a tuple")
    m.put(("n", 2), "int in a tuple")
    assert list(m.entries()) == [(("n", 2), "int in a tuple"), (1, "bool")]
    assert [type(k) for k, _ in m.entries()] == [tuple, int], "keys come back as decoding gives them"
    assert m.get(1.0) == m.get(1) == m.get(True) == "bool"
    store.flush()
    store.clear_cache()
    store.set_key("k", T0)
    assert list(m.entries()) == [(("n", 2), "int in a tuple"), (1, "bool")]
    # across a close and reopen, written once more under another of the equal keys
    m.put(1.0, "after reload")
    store.flush()
    if backends.kind == "rocksdb":
        db.close()
    db = backends.open()
    store = KeyedStateStore(db)
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    assert list(m.entries()) == [(("n", 2), "int in a tuple"), (1, "after reload")]
    assert m.contains(True) and m.get(1) == "after reload"
    m.remove(True)
    assert list(m.keys()) == [("n", 2)]
    if backends.kind == "rocksdb":
        db.close()


def test_equal_user_keys_are_one_state_key_across_a_reopen(backends: Reopenable) -> None:
    db = backends.open()
    store = KeyedStateStore(db)
    v = store.bind(ValueState("v"))
    store.set_key(1, T0)
    v.set("one")
    store.set_key(("user", 2.0), T0)
    v.set("two")
    store.flush()
    if backends.kind == "rocksdb":
        db.close()
    db = backends.open()
    store = KeyedStateStore(db)
    v = store.bind(ValueState("v"))
    for key in (1.0, True, (1,), 1):
        store.set_key(key, T0)
        assert v.get() == "one", key
    store.set_key(("user", 2), T0)
    assert v.get() == "two"
    assert len(list(db.iterate("v"))) == 2
    if backends.kind == "rocksdb":
        db.close()


SCORES = [730, 161.7, 730.5, 12, 999.25, 500, 730.25, 998, 1e3, -3.5]


def test_top_3_by_value_over_int_and_float_scores(backends: Reopenable) -> None:
    db = backends.open()
    store = KeyedStateStore(db)
    board = store.bind(MapState("board"))
    store.set_key("game", T0)
    for i, score in enumerate(SCORES):
        board.put((score, f"p{i}"), score)
    expected = sorted(SCORES, reverse=True)[:3]
    assert expected == [1e3, 999.25, 998]
    assert [v for _, v in board.entries(reverse=True, limit=3)] == expected
    store.flush()
    store.clear_cache()
    store.set_key("game", T0)
    assert [v for _, v in board.entries(reverse=True, limit=3)] == expected
    assert [k for k, _ in board.entries(start=(161.7,), end=(730.5,))] == [
        (161.7, "p1"), (500, "p5"), (730, "p0"), (730.25, "p6")]
    assert [k for k, _ in board.entries(prefix=730)] == [(730, "p0")], "730.5 is not 730"
    assert [k[0] for k, _ in board.entries()] == sorted(SCORES)
    if backends.kind == "rocksdb":
        db.close()


def test_big_int_values_survive_a_reopen(backends: Reopenable) -> None:
    db = backends.open()
    store = KeyedStateStore(db)
    v = store.bind(ValueState("v"))
    m = store.bind(MapState("m"))
    store.set_key(10**30, T0)  # a big int key as well
    v.set(10**29)
    m.put("ids", [2**64, -(2**63) - 1, 2**200])
    store.flush()
    if backends.kind == "rocksdb":
        db.close()
    db = backends.open()
    store = KeyedStateStore(db)
    v = store.bind(ValueState("v"))
    m = store.bind(MapState("m"))
    store.set_key(1e30, T0)  # the double 1e30 is not 10**30: another key
    assert v.get() is None
    store.set_key(10**30, T0)
    assert v.get() == 10**29 and type(v.get()) is int
    assert m.get("ids") == [2**64, -(2**63) - 1, 2**200]
    if backends.kind == "rocksdb":
        db.close()


@pytest.mark.parametrize(
    "data",
    [
        "15 01 fe bf f8",  # the double cut short
        "15 01 fe c0 04 00 00 00 00 00 00",  # 2.5 after the floor 1
        "15 01 fe bf f0 00 00 00 00 00 00",  # 1.0: integral values are ints, never FE
        "15 01 fe ff f0 00 00 00 00 00 00",  # +inf after a floor
        "21 bf f8 00 00 00 00 00 00",  # key layout 1's float
        "27",  # key layout 1's True
    ],
)
def test_malformed_number_bytes_are_refused(data: str) -> None:
    with pytest.raises(KeyEncodingError, match="key"):
        decode_key(bytes.fromhex(data))


# -- through the local runner and the inspector --------------------------------------------------


class Count(ed.KeyedProcessFunction):
    n = ValueState("n", default=0)
    scores = MapState("scores")

    def on_event(self, event: dict[str, Any], ctx: Any) -> Any:
        self.n.set(self.n.get() + 1)
        self.scores.put(event["score"], event["i"])
        if event["i"] == STOP_AT and event.get("fail"):
            raise RuntimeError("stop here")
        yield {"key": ctx.key, "n": self.n.get()}


STOP_AT = 150


def counting_job(events: list[dict]) -> tuple[ed.Job, Any]:
    job = ed.Job("numbers")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts")
        .key_by("k").process(Count(), name="count").sink(out))
    return job, out


def test_1_and_1_0_are_one_state_key_across_a_run_local_restart(tmp_path: Path) -> None:
    """Key 1 before the restart, key 1.0 after it: one count, as if uninterrupted."""
    events = [{"k": 1 if i < 100 else 1.0, "i": i, "ts": T0 + i, "score": i / 2,
               "fail": True} for i in range(200)]
    spec = f"rocksdb:{tmp_path / 'state'}"
    job, _ = counting_job(events)
    with pytest.raises(ed.errors.UserFunctionError):
        ed.run_local(job, spec, checkpoint_interval=20, batch_size=10)
    resumed = [dict(e, fail=False) for e in events]
    job, out = counting_job(resumed)
    result = ed.run_local(job, spec, checkpoint_interval=20, batch_size=10)
    assert result.stats.resumed
    got = result.collected(out)
    assert got[-1] == {"key": 1.0, "n": 200}, "one key: the count goes on from the checkpoint"
    assert [o["n"] for o in got] == list(range(201 - len(got), 201))


def test_the_inspector_finds_key_1_when_asked_for_1_0(tmp_path: Path) -> None:
    events = [{"k": 1, "i": i, "ts": T0 + i, "score": s} for i, s in
              enumerate([730, 161.7, 730.5, 2, 1.5])]
    events.append({"k": ("g", 2.0), "i": 9, "ts": T0 + 9, "score": 0})
    path = tmp_path / "state"
    job, _ = counting_job(events)
    ed.run_local(job, f"rocksdb:{path}")

    db = RocksDbStateBackend(path, read_only=True)
    try:
        entry = get_entry(db, "n", 1.0)
        assert entry is not None and entry.value == 5 and entry.key == (1,)
        assert get_entry(db, "n", True) == entry
        assert get_entry(db, "scores", 1.0, map_key=730.0).value == 0  # type: ignore[union-attr]
        page = query_state(db, "scores", key=1, reverse=True, limit=3)
        assert [e.map_key for e in page.entries] == [(730.5,), (730,), (161.7,)]
        assert [e.map_key for e in query_state(db, "scores", key=1, prefix=2).entries] == [(2,)]
        assert [e.key for e in query_state(db, "n", prefix=("g", 2.0)).entries] == [("g", 2)]
        assert [e.key for e in query_state(db, "n", prefix=1.0).entries] == [(1,)]
    finally:
        db.close()

    result = CliRunner().invoke(main, ["state", "ls", str(path), "--state", "n", "--key", "1.0",
                                       "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["entries"] == [{"key": [1], "map_key": None, "value": 5, "expires_at": None}]


class Remind(ed.KeyedProcessFunction):
    def on_event(self, event: Any, ctx: Any) -> None:
        ctx.timers.register_event_time(5_000)

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        yield (ctx.key, timestamp)


def test_a_timer_of_key_1_and_of_key_1_0_is_one_timer_across_a_restore() -> None:
    h = Harness(Remind())
    h.event("x", key=1, timestamp=T0)
    snapshot = h.snapshot()
    again = Harness(Remind())
    again.restore(snapshot)
    again.event("y", key=1.0, timestamp=T0 + 1)
    again.event("z", key=True, timestamp=T0 + 2)
    assert again.pending_timers(1.0) == [("event", 5_000)]
    assert again.watermark(6_000) == [(1, 5_000)], "fired once, for the key as decoded"


class CountThenReport(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event: Any, ctx: Any) -> None:
        self.n.set(self.n.get() + 1)
        ctx.timers.register_event_time(5_000)

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        yield (ctx.key, self.n.get())


@pytest.mark.parametrize("key", [("a", None), ("a", None, 1), ("", None, "b")])
def test_timers_of_a_str_then_none_key_fire_for_that_key_after_a_restore(
        key: tuple, tmp_path: Path) -> None:
    """A timer loaded from the backend decodes its key in full: ``("a", None)`` fires as
    itself, with its state, not as ``"a"``."""
    h = Harness(CountThenReport(), state=f"rocksdb:{tmp_path / 'db'}")
    h.event("x", key=key, timestamp=T0)
    snapshot = h.snapshot()
    again = Harness(CountThenReport())
    again.restore(snapshot)
    assert again.watermark(6_000) == [(key, 1)]
