"""Startup in two round trips: the checkpoint metadata, then one preload issued together."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.runtime.local import RunStats
from eddies.state.backend import Batch
from eddies.state.rocksdb import RocksDbStateBackend

T0 = 1_700_000_000_000


class Stop(Exception):
    pass


def keyed_events(keys: list[Any], n: int) -> list[dict]:
    return [{"k": keys[i % len(keys)], "ts": T0 + i * 100} for i in range(n)]


def run_until(j: ed.Job, state: str, checkpoints: int, **options: Any) -> None:
    """Run until ``checkpoints`` checkpoints are written, then stop (as a crash would)."""

    def stop(stats: RunStats) -> None:
        if stats.checkpoints >= checkpoints:
            raise Stop

    with contextlib.suppress(Stop):
        ed.run_local(j, state, on_progress=stop, **options)


class Totals(ed.KeyedProcessFunction):
    """Two ValueStates and an event-time timer per key."""

    count = ed.ValueState("count", default=0)
    total = ed.ValueState("total", default=0)

    def on_event(self, event, ctx):
        if self.count.get() == 0:
            ctx.timers.register_event_time(ctx.timestamp + 10**9)  # fires at the end
        self.count.set(self.count.get() + 1)
        self.total.set(self.total.get() + event["ts"] - T0)

    def on_timer(self, timestamp, ctx):
        yield (ctx.key, self.count.get(), self.total.get())


def job(evs: list[dict], out: ed.sinks.CollectSink) -> ed.Job:
    j = ed.Job("round-trips")
    (j.source(ed.sources.iterable(evs), timestamp="ts")
        .key_by("k").process(Totals(), name="totals").sink(out))
    return j


@pytest.mark.parametrize("n_keys", [20, 3_000])
def test_a_restart_with_keyed_state_and_timers_takes_two_round_trips(
        tmp_path: Path, n_keys: int) -> None:
    evs = keyed_events([f"user{i}" for i in range(n_keys)], n_keys * 3)
    whole = ed.sinks.collect()
    ed.run_local(job(evs, whole), "memory")
    state = f"rocksdb:{tmp_path / 'db'}"
    options: dict[str, Any] = {"checkpoint_interval": n_keys * 2, "batch_size": n_keys}
    run_until(job(evs, ed.sinks.collect()), state, 1, **options)  # every key has state
    resumed = ed.sinks.collect()
    result = ed.run_local(job(evs, resumed), state, **options)
    assert result.stats.resumed
    # 1: the __meta__ column family; 2: timers, emptiness probes and the first keys'
    # values of both states, issued together. The first event reads nothing more.
    assert result.startup["round_trips"] == 2
    first_run = {k: (c, t) for k, c, t in whole.items}
    assert {k: (c, t) for k, c, t in resumed.items} == first_run


def test_a_fresh_rocksdb_run_reads_nothing_per_key(tmp_path: Path) -> None:
    result = ed.run_local(job(keyed_events(["a", "b"], 10), ed.sinks.collect()),
                          f"rocksdb:{tmp_path / 'db'}")
    assert result.startup["round_trips"] == 2


def test_read_together_counts_the_longest_chain_of_reads(tmp_path: Path) -> None:
    with RocksDbStateBackend(tmp_path / "db") as db:
        batch = Batch()
        for i in range(10):
            batch.put("s", b"k%d" % i, b"v%d" % i)
        db.write(batch)
        threads: set[str] = set()

        def scan() -> int:
            threads.add(threading.current_thread().name)
            return len(list(db.iterate("s")))

        def two_in_a_row() -> bytes | None:
            threads.add(threading.current_thread().name)
            db.get("s", b"k1")
            return db.get("s", b"k2")

        before = db.round_trips
        assert db.read_together([scan, scan, lambda: db.multi_get("s", [b"k3"])]) == [
            10, 10, [b"v3"]]
        assert db.round_trips - before == 1
        assert len(threads) == 2  # each read on a thread of its own
        assert threading.current_thread().name not in threads
        before = db.round_trips
        assert db.read_together([scan, two_in_a_row]) == [10, b"v2"]
        assert db.round_trips - before == 2
        before = db.round_trips
        db.get("s", b"k1")
        db.iterate("s")
        assert db.round_trips - before == 2  # outside a group, every call is one

        def fails() -> None:
            db.iterate("s")
            raise ValueError("in a read")

        with pytest.raises(ValueError, match="in a read"):
            db.read_together([scan, fails])
        assert db.get("s", b"k1") == b"v1"  # the group is over: reads count again


def test_what_is_read_ahead_is_answered_once_and_dropped_at_a_write(tmp_path: Path) -> None:
    with RocksDbStateBackend(tmp_path / "db") as db:
        batch = Batch()
        batch.put("s", b"a", b"1")
        db.write(batch)
        db.read_together([lambda: db.read_ahead("s", [b"a", b"b"]),
                          lambda: db.probe_empty("s"), lambda: db.probe_empty("t")])
        before = db.round_trips
        assert db.get("s", b"a") == b"1"
        assert db.get("s", b"b") is None
        assert not db.is_empty("s") and db.is_empty("t")
        assert db.round_trips == before  # answered from what was read ahead
        assert db.get("s", b"a") == b"1"
        assert db.round_trips == before + 1  # once only
        db.read_together([lambda: db.read_ahead("s", [b"a"]), lambda: db.probe_empty("t")])
        batch = Batch()
        batch.put("s", b"a", b"2")
        batch.put("t", b"x", b"y")
        db.write(batch)
        assert db.get("s", b"a") == b"2"
        assert not db.is_empty("t")


def test_first_keys_that_cannot_be_stored_go_to_dead_letters_as_before(
        tmp_path: Path) -> None:
    evs = [{"k": ["a", "list"], "ts": T0}, {"k": "ok", "ts": T0 + 1}]
    out = ed.sinks.collect()
    dead = ed.sinks.collect()
    result = ed.run_local(job(evs, out), f"rocksdb:{tmp_path / 'db'}", dead_letters=dead)
    assert result.stats.dead_letters == 1
    assert [k for k, _, _ in out.items] == ["ok"]


class Doubled(ed.KeyedProcessFunction):
    seen = ed.ValueState("seen", default=0)

    def on_event(self, event, ctx):
        self.seen.set(self.seen.get() + 1)
        yield {"k": event["k"], "n": self.seen.get()}


def test_each_operator_reports_its_startup_and_exports_it(tmp_path: Path) -> None:
    from eddies.runtime.kafka.tansu import free_port
    from eddies.runtime.local import LocalRunner

    def two_ops(evs: list[dict]) -> ed.Job:
        j = ed.Job("per-op")
        (j.source(ed.sources.iterable(evs), timestamp="ts")
            .key_by("k").process(Totals(), name="totals").sink(ed.sinks.collect()))
        (j.source(ed.sources.iterable(evs), timestamp="ts", name="again")
            .map(lambda e: {**e, "k": e["k"].upper()}).key_by("k")
            .process(Doubled(), name="behind_a_map").sink(ed.sinks.collect()))
        return j

    evs = keyed_events([f"u{i}" for i in range(50)], 300)
    state = f"rocksdb:{tmp_path / 'db'}"
    run_until(two_ops(evs), state, 1, checkpoint_interval=100, batch_size=50)
    runner = LocalRunner(two_ops(evs), state, checkpoint_interval=100, batch_size=50,
                         metrics_port=free_port())
    observers: list[Any] = []
    runner.on_progress = lambda stats: observers.append(runner.observer)
    result = runner.run()
    assert result.stats.resumed
    assert result.startup["round_trips"] == 2
    per_op = runner.operator_startup
    assert set(per_op) == {"totals", "behind_a_map"}
    for phases in per_op.values():
        assert set(phases) == {"open_s", "restore_s", "preload_s", "first_event_s",
                               "round_trips"}
        assert phases["open_s"] == result.startup["open_s"]
        assert 0 <= phases["preload_s"] <= result.startup["preload_s"]
    assert per_op["totals"]["round_trips"] == 2
    # Its keys come out of a map: read per key when its first event comes.
    assert per_op["behind_a_map"]["round_trips"] > 2
    metrics = observers[-1].metrics  # the run's, as /metrics served it
    for name, phases in per_op.items():
        assert metrics.value("eddies_operator_startup_round_trips",
                             operator=name) == phases["round_trips"]
        for phase in ("open", "restore", "preload", "first_event"):
            assert metrics.value("eddies_operator_startup_phase_seconds", operator=name,
                                 phase=phase) == phases[f"{phase}_s"]
