"""Startup: bulk preload of timers, watermarks, positions and broadcast state, with metrics."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.runtime.local import LocalRunner, RunStats

T0 = 1_700_000_000_000
PHASES = {"open_s", "restore_s", "preload_s", "first_event_s", "total_s", "round_trips"}
# Keys of every shape the timer codec has to bring back (the str fast path and the rest).
ODD_KEYS: list[Any] = ["plain", "nul\x00inside", "ünï", "", 7, -3, 2.5, None, True, b"raw",
                       ("a", 1), ("nested", ("t",))]


class Stop(Exception):
    pass


class EndTotals(ed.KeyedProcessFunction):
    """Counts per key and reports at an event-time timer 10 s after the key's first event."""

    count = ed.ValueState("count", default=0)

    def on_event(self, event, ctx):
        if self.count.get() == 0:
            ctx.timers.register_event_time(ctx.timestamp + 10_000)
        self.count.set(self.count.get() + 1)

    def on_timer(self, timestamp, ctx):
        yield (repr(ctx.key), timestamp, self.count.get())


class WithRules(ed.KeyedBroadcastProcessFunction):
    rules = ed.BroadcastState("rules")
    count = ed.ValueState("count", default=0)

    def on_broadcast(self, rule, ctx):
        self.rules.put(rule["name"], rule["limit"])

    def on_event(self, event, ctx):
        self.count.set(self.count.get() + 1)
        yield (event["k"], self.rules.get("max"), self.count.get())


def keyed_events(keys: list[Any], n: int) -> list[dict]:
    return [{"k": keys[i % len(keys)], "ts": T0 + i * 100} for i in range(n)]


def timer_job(evs: list[dict], out: ed.sinks.CollectSink) -> ed.Job:
    job = ed.Job("startup")
    (job.source(ed.sources.iterable(evs), timestamp="ts")
        .key_by("k").process(EndTotals()).sink(out))
    return job


def run_until(job: ed.Job, state: str, checkpoints: int, **options: Any) -> None:
    """Run until ``checkpoints`` checkpoints are written, then stop (as a crash would)."""

    def stop(stats: RunStats) -> None:
        if stats.checkpoints >= checkpoints:
            raise Stop

    with contextlib.suppress(Stop):
        ed.run_local(job, state, on_progress=stop, **options)


def test_timers_of_every_key_shape_survive_a_restart(tmp_path: Path) -> None:
    evs = keyed_events(ODD_KEYS, 600)  # timers fire from ts T0 + 10 s, after event 100
    whole = ed.sinks.collect()
    ed.run_local(timer_job(evs, whole), "memory", checkpoint_interval=20, batch_size=20)

    state = f"rocksdb:{tmp_path / 'db'}"
    run_until(timer_job(evs, ed.sinks.collect()), state, 2, checkpoint_interval=20,
              batch_size=20)  # stopped with every key's timer pending
    resumed = ed.sinks.collect()
    result = ed.run_local(timer_job(evs, resumed), state, checkpoint_interval=20,
                          batch_size=20)
    assert result.stats.resumed
    assert sorted(resumed.items) == sorted(whole.items)
    assert len(whole.items) == len(ODD_KEYS)


def startup_of(tmp_path: Path, n_keys: int) -> dict[str, float]:
    keys = [f"user{i}" for i in range(n_keys)]
    evs = keyed_events(keys, n_keys * 3)
    state = f"rocksdb:{tmp_path / f'db{n_keys}'}"
    run_until(timer_job(evs, ed.sinks.collect()), state, 1, checkpoint_interval=n_keys * 2,
              batch_size=n_keys)
    result = ed.run_local(timer_job(evs, ed.sinks.collect()), state,
                          checkpoint_interval=n_keys * 2, batch_size=n_keys)
    assert result.stats.resumed
    return result.startup


def test_startup_phases_are_recorded_and_reads_do_not_grow_with_keys(tmp_path: Path) -> None:
    small = startup_of(tmp_path, 20)
    large = startup_of(tmp_path, 2_000)
    for startup in (small, large):
        assert set(startup) == PHASES
        assert all(startup[k] >= 0 for k in PHASES)
        assert startup["total_s"] >= startup["first_event_s"]
    # Metadata, timers and the operator watermark in bulk; keyed state is read per key as
    # events come, so the first event costs one read of its key.
    assert large["round_trips"] == small["round_trips"] <= 6


def test_a_fresh_run_records_startup_too() -> None:
    out = ed.sinks.collect()
    result = ed.run_local(timer_job(keyed_events(["a"], 5), out), "memory")
    assert set(result.stats.startup) == PHASES
    assert result.startup is result.stats.startup


def test_broadcast_state_is_preloaded_in_one_range_read(tmp_path: Path) -> None:
    def job() -> tuple[ed.Job, ed.sinks.CollectSink]:
        j = ed.Job("rules")
        out = ed.sinks.collect()
        rules = j.source(ed.sources.iterable([{"name": "max", "limit": 5, "ts": T0}]),
                         timestamp="ts", name="rules")
        (j.source(ed.sources.iterable(keyed_events([f"c{i}" for i in range(50)], 400)),
                  timestamp="ts", name="events")
            .key_by("k").connect(rules.broadcast()).process(WithRules()).sink(out))
        return j, out

    state = f"rocksdb:{tmp_path / 'db'}"
    first, _ = job()
    run_until(first, state, 2, checkpoint_interval=100, batch_size=100)
    second, out = job()
    runner = LocalRunner(second, state, checkpoint_interval=100, batch_size=100)
    op = next(iter(runner.operators.values()))
    rules = op.handles["rules"]
    result = runner.run()
    assert result.stats.resumed
    assert rules.misses == 1  # loaded once, at startup
    assert {limit for _, limit, _ in out.items} == {5}
    assert result.startup["round_trips"] <= 7


@pytest.mark.parametrize("cache_entries", [None, 3])
def test_restart_results_equal_an_uninterrupted_run(tmp_path: Path, cache_entries) -> None:
    keys = [f"k{i}" for i in range(40)]
    evs = keyed_events(keys, 1_000)
    options = {} if cache_entries is None else {"cache_entries": cache_entries}
    whole = ed.sinks.collect()
    ed.run_local(timer_job(evs, whole), "memory", checkpoint_interval=50, batch_size=25)
    state = f"rocksdb:{tmp_path / 'db'}"
    first = ed.sinks.collect()
    run_until(timer_job(evs, first), state, 7, checkpoint_interval=50, batch_size=25, **options)
    resumed = ed.sinks.collect()
    ed.run_local(timer_job(evs, resumed), state, checkpoint_interval=50, batch_size=25,
                 **options)
    # Outputs of the interrupted run up to its last checkpoint, then the resumed run's.
    assert sorted(set(first.items) | set(resumed.items)) == sorted(whole.items)


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_timer_load_brings_back_what_collect_wrote(kind: str, tmp_path: Path) -> None:
    """Both domains, several times and key groups, and window marks, in one range read; a
    key-group range loads only its own."""
    from eddies.runtime.timers import EVENT, PROCESSING, Timers
    from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore, RocksDbStateBackend
    from eddies.state.keys import state_key

    backend = InMemoryStateBackend() if kind == "memory" else RocksDbStateBackend(tmp_path)
    prefix = KeyedStateStore(InMemoryStateBackend()).prefix
    written = Timers("op", prefix)
    keys = [state_key(k) for k in ODD_KEYS]
    for i, key in enumerate(keys):
        written.register(EVENT, 5_000 if i % 2 else 9_000, key)
        written.register(PROCESSING, 100 + i, key)
    group = prefix(keys[0])[:2]
    written.mark(group, 60_000, b"tag")
    batch = Batch()
    written.collect(batch)
    backend.write(batch)

    loaded = Timers("op", prefix)
    assert loaded.load(backend) == 2 * len(keys)
    assert loaded.event.live == written.event.live
    assert loaded.processing.live == written.processing.live
    assert loaded.event.marks == written.event.marks

    upper = (int.from_bytes(group, "big") + 1).to_bytes(2, "big")
    part = Timers("op", prefix)
    in_group = [k for k in keys if prefix(k)[:2] == group]
    assert part.load(backend, group, upper) == 2 * len(in_group)
    assert {k for _, k in part.event.live} == set(in_group)
    assert part.event.marks == written.event.marks
    backend.close()
