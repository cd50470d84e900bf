"""Event time and processing time in the local runner, against plain-Python references.

The reference runs use ``batch_size=1``: the runner then advances time after every record, as
a record-at-a-time engine would, and the reference simulates exactly that with dicts and sets.
Input is generated from fixed seeds, out of order, with some records late.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import eddies as ed
from eddies.operators.sources import DeadLetter, Source, SourceReader
from eddies.runtime.local import LocalRunner
from eddies.runtime.watermarks import (
    MAX_TIME,
    MIN_TIME,
    BoundedOutOfOrderness,
    PartitionWatermark,
    merge_watermarks,
)


class Clock:
    """An injected processing-time clock, moved by the test's sources."""

    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class ScriptedSource(Source):
    """Partitions that follow a script: lists of records, or ``("stall", n)`` for ``n`` reads
    that return nothing (the partition is alive but quiet) while the clock moves ``tick`` ms."""

    def __init__(self, name: str, scripts: list[list[Any]], clock: Clock | None = None,
                 tick: int = 0) -> None:
        self.name = name
        self.scripts = scripts
        self.clock = clock
        self.tick = tick

    def partitions(self) -> list[SourceReader]:
        return [_ScriptedReader(self, script, i) for i, script in enumerate(self.scripts)]


class _ScriptedReader(SourceReader):
    def __init__(self, source: ScriptedSource, script: list[Any], partition: int) -> None:
        self.source = source
        self.partition = partition
        self.steps: list[Any] = [list(step) if isinstance(step, list) else step
                                 for step in script]
        self.step = 0
        self.offset = 0
        self.done = False

    @property
    def position(self) -> Any:
        return [self.step, self.offset]

    def seek(self, position: Any) -> None:  # pragma: no cover - these runs never resume
        self.step, self.offset = position

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        while self.step < len(self.steps):
            step = self.steps[self.step]
            if isinstance(step, tuple):
                if self.offset < step[1]:
                    self.offset += 1
                    if self.source.clock is not None:
                        self.source.clock.now += self.source.tick
                    return [], []
            elif self.offset < len(step):
                out = step[self.offset:self.offset + max_records]
                self.offset += len(out)
                return out, []
            self.step += 1
            self.offset = 0
        self.done = True
        return [], []


def generate(seed: int, n: int, keys: int, step: int, disorder: int) -> list[dict[str, Any]]:
    """Events with ids, keys and timestamps ``step`` apart, out of order by up to ``disorder``."""
    rng = random.Random(seed)
    return [{"id": i, "key": f"k{rng.randrange(keys)}",
             "ts": 1_000_000 + i * step - rng.randint(0, disorder)} for i in range(n)]


def by_key(outputs: list[tuple[Any, ...]]) -> dict[Any, list[tuple[Any, ...]]]:
    """Outputs grouped by key (their second field), in order. Timers of equal time on
    different keys fire in stored-key order, so only each key's own sequence is compared."""
    grouped: dict[Any, list[tuple[Any, ...]]] = defaultdict(list)
    for out in outputs:
        grouped[out[1]].append(tuple(out))
    return dict(grouped)


class RefTimers:
    """Plain-Python timers: a set of (time, key), fired smallest first."""

    def __init__(self) -> None:
        self.pending: set[tuple[int, str]] = set()

    def fire(self, until: int, on_timer: Callable[[int, str], None]) -> None:
        while True:
            due = [t for t in self.pending if t[0] <= until]
            if not due:
                return
            first = min(due)
            self.pending.discard(first)
            on_timer(*first)


# -- unit level ----------------------------------------------------------------------------------
def test_partition_watermark_trails_max_timestamp_and_goes_to_infinity_at_end() -> None:
    wm = PartitionWatermark(BoundedOutOfOrderness(1_000), now=0)
    assert wm.watermark == MIN_TIME
    wm.observe(5_000, now=1)
    assert wm.watermark == 3_999
    wm.observe(4_000, now=2)  # an older batch never moves the watermark back
    assert wm.watermark == 3_999
    wm.observe(None, now=3)
    assert wm.watermark == 3_999
    wm.finish()
    assert wm.watermark == MAX_TIME


def test_partition_becomes_idle_after_idle_timeout_without_events() -> None:
    wm = PartitionWatermark(BoundedOutOfOrderness(0, idle_timeout=500), now=1_000)
    assert not wm.idle(1_499)
    assert wm.idle(1_500)
    wm.observe(None, now=1_600)  # an empty batch is not activity
    assert wm.idle(1_600)
    wm.observe(10, now=1_700)
    assert not wm.idle(2_199) and wm.idle(2_200)
    wm.finish()
    assert not wm.idle(10**9)  # a finished partition is at +inf, not idle
    never = PartitionWatermark(BoundedOutOfOrderness(0), now=0)
    assert not never.idle(10**12)


def test_merge_is_the_minimum_over_active_inputs() -> None:
    rng = random.Random(3)
    for _ in range(500):
        inputs = [(rng.randint(-5, 100), rng.random() < 0.3) for _ in range(rng.randint(1, 6))]
        active = [wm for wm, idle in inputs if not idle]
        assert merge_watermarks(inputs) == (min(active) if active else None)


# -- timers --------------------------------------------------------------------------------------
class TimerFn(ed.KeyedProcessFunction):
    """Registers or deletes a timer per event; reports every event and every firing."""

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def on_event(self, event, ctx):
        t = event["at"]
        timers = ctx.timers
        if self.domain == "event":
            register, delete = timers.register_event_time, timers.delete_event_time
        else:
            register, delete = timers.register_processing_time, timers.delete_processing_time
        (delete if event["op"] == "del" else register)(t)
        yield ("event", ctx.key, event["id"])

    def on_timer(self, timestamp, ctx):
        wm = ctx.watermark if ctx.time_domain == "event" else None
        yield ("timer", ctx.key, timestamp, ctx.time_domain, wm)


def timer_input(seed: int, domain: str, n: int = 1_500, keys: int = 8) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = generate(seed, n, keys=keys, step=100, disorder=1_500)
    registered: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        e["pt"] = 10_000 + i * 100  # processing time when the record is read
        base = e["ts"] if domain == "event" else e["pt"]
        if registered[e["key"]] and rng.random() < 0.25:
            e["op"] = "del"
            e["at"] = rng.choice(registered[e["key"]][-5:])
        else:
            e["op"] = "reg"
            # Rounded to 500 ms so one key often registers the same time twice; some times
            # are already due when registered.
            e["at"] = (base + rng.choice([-1_000, 0, 300, 1_000, 2_500, 8_000])) // 500 * 500
            registered[e["key"]].append(e["at"])
    return events


def timer_reference(events: list[dict[str, Any]], domain: str, ooo: int) -> list[tuple]:
    out: list[tuple] = []
    timers = RefTimers()
    wm = MIN_TIME
    max_ts = MIN_TIME

    for e in events:
        if e["op"] == "del":
            timers.pending.discard((e["at"], e["key"]))
        else:
            timers.pending.add((e["at"], e["key"]))
        out.append(("event", e["key"], e["id"]))
        if domain == "event":
            max_ts = max(max_ts, e["ts"])
            new = max_ts - ooo - 1
            if new > wm:  # event-time timers fire only when the watermark moves
                old = wm
                timers.fire(new, lambda t, k, old=old: out.append(
                    ("timer", k, t, "event", max(old, t))))
                wm = new
        else:
            timers.fire(e["pt"], lambda t, k: out.append(("timer", k, t, "processing", None)))
    if domain == "event":  # end of input: the watermark goes to +inf
        timers.fire(MAX_TIME, lambda t, k: out.append(("timer", k, t, "event", max(wm, t))))
    return out  # processing-time timers still pending at the end stay pending


def iterable_with_clock(events: list[dict[str, Any]], clock: Clock) -> Iterator[dict]:
    for e in events:
        clock.now = e["pt"]
        yield e


@pytest.mark.parametrize("domain", ["event", "processing"])
def test_timers_per_key_dedup_delete_and_order_match_reference(domain: str) -> None:
    events = timer_input(11, domain)
    clock = Clock()
    job = ed.Job("timers")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(iterable_with_clock(events, clock)), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(1_000))
        .key_by("key").process(TimerFn(domain)).sink(out))
    result = ed.run_local(job, batch_size=1, clock=clock)
    got = [tuple(o) for o in result.collected(out)]
    expected = timer_reference(events, domain, ooo=1_000)
    assert by_key(got) == by_key(expected)
    fired = [o for o in got if o[0] == "timer"]
    registrations = sum(e["op"] == "reg" for e in events)
    deletions = sum(e["op"] == "del" for e in events)
    # The input exercises every path: many timers fire, many registrations are duplicates
    # of a pending (key, time) and fire once, and deletions remove pending timers.
    assert len(fired) > 200 and deletions > 200
    assert len(fired) < registrations - 100
    if domain == "event":
        assert result.stats.watermark == MAX_TIME
        assert result.stats.late_events > 0  # some timers were registered already due


def test_end_of_input_fires_every_event_timer_in_time_order() -> None:
    events = generate(5, 2_000, keys=30, step=10, disorder=500)

    class FarFuture(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            # Far beyond the input, rounded so many (key, time) pairs are registered twice.
            ctx.timers.register_event_time(10**12 + ctx.timestamp // 1_000)

        def on_timer(self, timestamp, ctx):
            yield (ctx.key, timestamp, ctx.watermark)
            if timestamp % 2 == 0:  # timers registered while firing at +inf fire too
                ctx.timers.register_event_time(timestamp + 1)

    job = ed.Job("eoi")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(1_000))
        .key_by("key").process(FarFuture()).sink(out))
    result = ed.run_local(job)
    got = result.collected(out)
    expected = {(e["key"], 10**12 + e["ts"] // 1_000) for e in events}
    expected |= {(k, t + 1) for k, t in expected if t % 2 == 0}
    assert sorted((k, t) for k, t, _ in got) == sorted(expected)  # each once: deduplicated
    times = [t for _, t, _ in got]
    assert times == sorted(times)  # one watermark step to +inf fires them in time order
    assert all(wm == t for _, t, wm in got)  # each sees the watermark at its own time
    assert result.stats.watermark == MAX_TIME


# -- the bounded window of timers in memory ------------------------------------------------------
WINDOW = 12  # cache_entries, and so the timers each domain keeps in memory


class WindowProbe(TimerFn):
    """TimerFn that checks, at every call, the timers its operator holds in memory."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.op: Any = None
        self.most = 0  # the most timers in memory seen in one domain
        self.windowed = False  # whether timers were ever left out of memory

    def probe(self) -> None:
        for heap in (self.op.timers.event, self.op.timers.processing):
            self.most = max(self.most, len(heap))
            self.windowed = self.windowed or heap.horizon < 2**63

    def on_event(self, event, ctx):
        self.probe()
        yield from super().on_event(event, ctx)
        self.probe()

    def on_timer(self, timestamp, ctx):
        self.probe()
        yield from super().on_timer(timestamp, ctx)


def windowed_run(events: list[dict[str, Any]], domain: str, state: str,
                 **options: Any) -> tuple[list[tuple], WindowProbe]:
    clock = Clock()
    job = ed.Job("timers")
    out = ed.sinks.collect()
    fn = WindowProbe(domain)
    (job.source(ed.sources.iterable(iterable_with_clock(events, clock)), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(1_000))
        .key_by("key").process(fn).sink(out))
    runner = LocalRunner(job, state, batch_size=1, clock=clock, cache_entries=WINDOW, **options)
    fn.op = next(iter(runner.operators.values()))
    result = runner.run()
    return [tuple(o) for o in result.collected(out)], fn


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@pytest.mark.parametrize("domain", ["event", "processing"])
def test_timers_beyond_the_window_stay_in_the_store_and_fire_as_the_reference(
    domain: str, backend: str, tmp_path
) -> None:
    # 300 keys, each with timers pending: far more than the WINDOW timers memory may hold.
    events = timer_input(17, domain, n=4_000, keys=300)
    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'db'}"
    got, fn = windowed_run(events, domain, state, checkpoint_interval=150)
    assert fn.windowed
    assert fn.most <= WINDOW
    expected = timer_reference(events, domain, ooo=1_000)
    assert by_key(got) == by_key(expected)
    # Across keys too: the same events and timer times, interleaved the same way.
    assert [o[:3:2] for o in got] == [o[:3:2] for o in expected]
    assert sum(o[0] == "timer" for o in got) > 1_000


class Stop(Exception):
    pass


def test_a_run_stopped_with_timers_beyond_the_window_resumes_exactly(tmp_path) -> None:
    events = timer_input(23, "event", n=3_000, keys=250)
    expected = timer_reference(events, "event", ooo=1_000)
    state = f"rocksdb:{tmp_path / 'db'}"
    whole = tmp_path / "out.jsonl"

    def job(fn: WindowProbe) -> ed.Job:
        j = ed.Job("timers")
        (j.source(ed.sources.iterable(events), timestamp="ts",
                  watermarks=ed.BoundedOutOfOrderness(1_000))
            .key_by("key").process(fn).sink(ed.sinks.jsonl(whole)))
        return j

    def stop(stats: Any) -> None:
        if stats.checkpoints >= 9:
            raise Stop

    first = WindowProbe("event")
    runner = LocalRunner(job(first), state, batch_size=1, cache_entries=WINDOW,
                         checkpoint_interval=170, on_progress=stop)
    first.op = next(iter(runner.operators.values()))
    with pytest.raises(Stop):
        runner.run()
    assert first.windowed  # stopped with timers in the store only
    second = WindowProbe("event")
    runner = LocalRunner(job(second), state, batch_size=1, cache_entries=WINDOW,
                         checkpoint_interval=170)
    second.op = next(iter(runner.operators.values()))
    assert runner.run().stats.resumed
    assert max(first.most, second.most) <= WINDOW
    got = [tuple(json.loads(line)) for line in whole.read_text().splitlines()]
    assert by_key(got) == by_key(expected)  # the file sink was cut back to the checkpoint
    assert [o[:3:2] for o in got] == [o[:3:2] for o in expected]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_window_unit_order_dedup_delete_next_time_and_restore(backend: str, tmp_path) -> None:
    """Timers, the window and the store driven directly: registrations below and beyond the
    horizon, duplicates, deletions of timers in memory, buffered and stored only, checkpoints
    in between, and a reload, against a set of (time, key)."""
    from eddies.runtime.timers import EVENT, Timers
    from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore, RocksDbStateBackend
    from eddies.state.keys import state_key

    db = InMemoryStateBackend() if backend == "memory" else RocksDbStateBackend(tmp_path)
    prefix = KeyedStateStore(InMemoryStateBackend()).prefix
    rng = random.Random(5)
    timers = Timers("op", prefix, limit=10)
    timers.load(db)
    model: set[tuple[int, Any]] = set()

    def order(timer: tuple[int, Any]) -> tuple[int, bytes]:
        return timer[0], prefix(timer[1])

    now = 0
    windowed = False
    for step in range(3_000):
        key = state_key(f"k{rng.randrange(60)}")
        roll = rng.random()
        if roll < 0.55:
            t = now + rng.randrange(-5, 400)
            timers.register(EVENT, t, key)
            model.add((t, key))
        elif roll < 0.75 and model:
            t, key = rng.choice(sorted(model, key=repr))
            timers.delete(EVENT, t, key)
            model.discard((t, key))
        elif roll < 0.9:
            now += rng.randrange(0, 30)
            fired = []
            while (due := timers.event.pop_due(now)) is not None:
                fired.append(due)
            # In time order, and within one time in stored-key order (key group first).
            due_model = sorted(((t, k) for t, k in model if t <= now), key=order)
            assert fired == due_model
            model.difference_update(due_model)
        else:
            batch = Batch()
            timers.collect(batch)
            db.write(batch)
        assert len(timers.event) <= 10
        windowed = windowed or timers.event.horizon < 2**63
        nearest = min((t for t, _ in model), default=None)
        assert timers.event.next_time() == nearest
        if step % 500 == 0:  # memory, the buffer and the store (less tombstones)
            assert sorted((t, k) for _, t, k in timers.pending()) == sorted(model)
    assert windowed
    batch = Batch()
    timers.collect(batch)
    db.write(batch)
    again = Timers("op", prefix, limit=10)
    assert again.load(db) == len(model)
    assert sorted((t, k) for _, t, k in again.pending()) == sorted(model)
    rest = []
    while (due := again.event.pop_due(2**62)) is not None:
        rest.append(due)
        assert len(again.event) <= 10
    assert rest == sorted(model, key=order)
    db.close()


def test_one_time_due_for_many_keys_is_loaded_and_fired_in_parts(tmp_path) -> None:
    """Every key's timer at one time (an end-of-input timer): memory still holds at most
    ``limit`` of them, from the restore on, and they fire in stored-key order."""
    from eddies.runtime.timers import EVENT, Timers
    from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore, RocksDbStateBackend
    from eddies.state.keys import state_key

    prefix = KeyedStateStore(InMemoryStateBackend()).prefix
    keys = [state_key(f"user{i}") for i in range(500)]
    written = Timers("op", prefix)
    for key in keys:
        written.register(EVENT, 2**62, key)
    batch = Batch()
    written.collect(batch)
    with RocksDbStateBackend(tmp_path) as db:
        db.write(batch)
        loaded = Timers("op", prefix, limit=10)
        assert loaded.load(db) == 500
        assert len(loaded.event) <= 10
        assert loaded.event.next_time() == 2**62
        fired = []
        while (due := loaded.event.pop_due(2**62)) is not None:
            fired.append(due[1])
            assert len(loaded.event) <= 10
        assert fired == sorted(keys, key=prefix)


# -- TTL -----------------------------------------------------------------------------------------
TTL_MS = 3_000


class LastSeen(ed.KeyedProcessFunction):
    def __init__(self, update: str) -> None:
        type(self).last = ed.ValueState("last", ttl=ed.Ttl(ms=TTL_MS, update=update))

    def on_event(self, event, ctx):
        prev = self.last.get()
        self.last.set(ctx.timestamp)
        ctx.timers.register_event_time(ctx.timestamp + TTL_MS)
        yield ("event", ctx.key, ctx.timestamp, prev)

    def on_timer(self, timestamp, ctx):
        yield ("timer", ctx.key, timestamp, self.last.get())


def ttl_reference(events: list[dict[str, Any]], ooo: int, update: str) -> list[tuple]:
    out: list[tuple] = []
    state: dict[str, tuple[int, int]] = {}  # key -> (value, expires_at)
    timers = RefTimers()
    wm = MIN_TIME
    max_ts = MIN_TIME

    def read(key: str, clock: int, now_ts: int) -> int | None:
        if key not in state or state[key][1] <= clock:  # expired once the clock reaches it
            return None
        value = state[key][0]
        if update == "on_read_and_write":  # a read moves the expiry on, never back
            state[key] = (value, max(state[key][1], now_ts + TTL_MS))
        return value

    for e in events:
        key, ts = e["key"], e["ts"]
        out.append(("event", key, ts, read(key, wm, ts)))
        state[key] = (ts, ts + TTL_MS)
        timers.pending.add((ts + TTL_MS, key))
        max_ts = max(max_ts, ts)
        new = max_ts - ooo - 1
        if new > wm:
            old = wm
            # In on_timer the TTL clock is the timer's time (its watermark).
            timers.fire(new, lambda t, k, old=old: out.append(
                ("timer", k, t, read(k, max(old, t), t))))
            wm = new
    timers.fire(MAX_TIME, lambda t, k: out.append(("timer", k, t, read(k, max(wm, t), t))))
    return out


@pytest.mark.parametrize("update", ["on_write", "on_read_and_write"])
@pytest.mark.parametrize("state", ["memory", "rocksdb"])
@pytest.mark.parametrize("lag", [0, 3_000], ids=["no_lag", "sweep_lag"])
def test_ttl_state_follows_the_operator_watermark(
    update: str, state: str, lag: int, tmp_path
) -> None:
    # Gaps per key straddle the TTL, and the disorder makes some events late.
    events = generate(21, 1_200, keys=6, step=400, disorder=1_500)
    job = ed.Job("ttl")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(1_000))
        .key_by("key").process(LastSeen(update)).sink(out))
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'st'}"
    # Small checkpoint intervals make the sweep delete expired entries along the way.
    # A sweep lag defers deletion only: what the function reads stays the same.
    result = ed.run_local(job, spec, batch_size=1, checkpoint_interval=50,
                          ttl_config=ed.TtlConfig(sweep_lag_ms=lag))
    got = [tuple(o) for o in result.collected(out)]
    expected = ttl_reference(events, ooo=1_000, update=update)
    assert by_key(got) == by_key(expected)
    reads = [o[3] for o in expected]
    assert reads.count(None) > 50 and len(reads) - reads.count(None) > 50  # both outcomes


def test_ttl_entry_expiring_at_a_timer_time_is_gone_in_on_timer() -> None:
    """Whatever the batching, on_timer at t sees TTL state as of watermark t."""

    class Expiry(ed.KeyedProcessFunction):
        flag = ed.ValueState("flag", ttl=ed.Ttl(ms=60_000))

        def on_event(self, event, ctx):
            self.flag.set(ctx.timestamp)
            ctx.timers.register_event_time(ctx.timestamp + 60_000)

        def on_timer(self, timestamp, ctx):
            yield (ctx.key, self.flag.get())

    events = [{"key": f"k{i}", "ts": 1_000 + i} for i in range(50)]
    events.append({"key": "late-runner", "ts": 500_000})
    for batch_size in (1, 7, 10_000):
        job = ed.Job("expiry")
        out = ed.sinks.collect()
        job.source(ed.sources.iterable(events), timestamp="ts").key_by("key").process(
            Expiry()).sink(out)
        got = ed.run_local(job, batch_size=batch_size).collected(out)
        assert len(got) == 51 and all(v is None for _, v in got), (batch_size, got[:3])


# -- watermarks across partitions and a union ----------------------------------------------------
class WatermarkProbe(ed.KeyedProcessFunction):
    def on_event(self, event, ctx):
        yield (event["id"], ctx.watermark)


def partitions_reference(parts: list[list[dict]], ooos: list[int]) -> list[tuple[str, int]]:
    """Round by round, each partition gives one record; after every record the operator's
    watermark becomes the min over partitions of (max ts - ooo - 1), +inf for finished ones."""
    n = len(parts)
    pos = [0] * n
    pwm = [MIN_TIME] * n
    pmax = [MIN_TIME] * n
    done = [False] * n
    wm = MIN_TIME
    out = []
    while not all(done):
        for p in range(n):
            if done[p]:
                continue
            if pos[p] < len(parts[p]):
                e = parts[p][pos[p]]
                pos[p] += 1
                out.append((e["id"], wm))
                pmax[p] = max(pmax[p], e["ts"])
                pwm[p] = max(pwm[p], pmax[p] - ooos[p] - 1)
            else:
                done[p] = True
                pwm[p] = MAX_TIME
            wm = max(wm, min(pwm))
    return out


def test_per_partition_watermarks_merge_by_min_across_a_union() -> None:
    rng = random.Random(8)

    def part(prefix: str, n: int, step: int, start: int) -> list[dict]:
        return [{"id": f"{prefix}{i}", "key": f"k{rng.randrange(5)}",
                 "ts": start + i * step - rng.randint(0, 2 * step)} for i in range(n)]

    # Source A has two partitions running at different speeds; B is a second source, slower
    # still and with its own bound. Each finishes at a different time.
    a0, a1 = part("a0-", 300, 100, 0), part("a1-", 200, 250, 5_000)
    b0 = part("b0-", 250, 40, 1_000)
    job = ed.Job("union-wm")
    out = ed.sinks.collect()
    a = job.source(ScriptedSource("a", [[a0], [a1]]), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(300))
    b = job.source(ScriptedSource("b", [[b0]]), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(1_000))
    a.union(b).key_by("key").process(WatermarkProbe()).sink(out)
    got = ed.run_local(job, batch_size=1).collected(out)
    expected = partitions_reference([a0, a1, b0], [300, 300, 1_000])
    assert [tuple(o) for o in got] == expected
    # Every partition held the watermark back at some point.
    assert len({wm for _, wm in expected}) > 100


def stalling_job(idle_timeout: int | None, clock: Clock,
                 connect: bool = False) -> tuple[ed.Job, Any]:
    """Source A sends ts 0..9,000, goes quiet for 20 reads (1 s of clock each), then sends
    ts 10,000..14,000; source B sends ts 0..39,000 throughout. ``connect``: A and B are the
    two keyed inputs of a KeyedCoProcessFunction rather than a union."""
    a_before = [{"id": f"a{i}", "src": "a", "ts": i * 1_000} for i in range(10)]
    a_after = [{"id": f"a{i}", "src": "a", "ts": i * 1_000} for i in range(10, 15)]
    b = [{"id": f"b{i}", "src": "b", "ts": i * 1_000} for i in range(40)]

    class Log(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            ctx.timers.register_event_time(ctx.timestamp)
            yield ("event", event["id"], ctx.watermark)

        def on_timer(self, timestamp, ctx):
            yield ("timer", ctx.key, timestamp)

    job = ed.Job("idle")
    out = ed.sinks.collect()
    strategy = ed.BoundedOutOfOrderness(0, idle_timeout=idle_timeout)
    sa = job.source(ScriptedSource("a", [[a_before, ("stall", 20), a_after]], clock, 1_000),
                    timestamp="ts", watermarks=strategy)
    sb = job.source(ScriptedSource("b", [[b]]), timestamp="ts", watermarks=strategy)
    class CoLog(ed.KeyedCoProcessFunction):  # Log, on two inputs
        def on_event1(self, event, ctx):
            ctx.timers.register_event_time(ctx.timestamp)
            yield ("event", event["id"], ctx.watermark)

        on_event2 = on_event1

        def on_timer(self, timestamp, ctx):
            yield ("timer", ctx.key, timestamp)

    if connect:
        sa.key_by("src").connect(sb.key_by("src")).process(CoLog()).sink(out)
    else:
        sa.union(sb).key_by("src").process(Log()).sink(out)
    return job, out


@pytest.mark.parametrize("connect", [False, True], ids=["union", "co-process"])
@pytest.mark.parametrize("idle_timeout", [5_000, None])
def test_idle_input_is_left_out_of_the_min_after_idle_timeout(idle_timeout, connect) -> None:
    clock = Clock()
    job, out = stalling_job(idle_timeout, clock, connect)
    result = ed.run_local(job, batch_size=1, clock=clock)
    got = result.collected(out)
    ids = [o[1] for o in got]
    stall_start, stall_end = ids.index("a9"), ids.index("a10")
    during = got[stall_start + 1:stall_end]
    a_wm = 9_000 - 1  # A's own watermark while it is quiet
    fired_during = [o[2] for o in during if o[0] == "timer" and o[2] > a_wm]
    wm_during = [o[2] for o in during if o[0] == "event"]
    if idle_timeout is None:
        # A quiet input holds event time back until it speaks again.
        assert not fired_during and max(wm_during) <= a_wm
        assert result.stats.late_events == 0
    else:
        # After 5 s of clock without events A is left out: B's timers fire meanwhile...
        assert fired_during and max(wm_during) > a_wm
        assert fired_during == sorted(fired_during)
        # ...and A's records after the pause are behind the watermark: late, but processed.
        assert result.stats.late_events > 0
        assert {"a10", "a14"} <= set(ids)
    timers = sorted((o[1], o[2]) for o in got if o[0] == "timer")
    expected = [("a", i * 1_000) for i in range(15)] + [("b", i * 1_000) for i in range(40)]
    assert timers == expected  # every (key, time) exactly once


def test_processing_time_timers_fire_while_event_time_is_idle() -> None:
    clock = Clock()
    records = [{"id": i, "key": "k", "ts": i} for i in range(3)]

    class Timeout(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            ctx.timers.register_processing_time(ctx.current_processing_time() + 3_000)
            yield ("event", event["id"])

        def on_timer(self, timestamp, ctx):
            yield ("timeout", ctx.time_domain)

    job = ed.Job("pt-idle")
    out = ed.sinks.collect()
    (job.source(ScriptedSource("s", [[records[:2], ("stall", 10), records[2:]]], clock, 1_000),
                timestamp="ts", watermarks=ed.BoundedOutOfOrderness(0, idle_timeout=2_000))
        .key_by("key").process(Timeout()).sink(out))
    got = ed.run_local(job, batch_size=10, clock=clock).collected(out)
    # The wall-clock timeout fires during the pause, before record 2 arrives.
    assert got[:3] == [("event", 0), ("event", 1), ("timeout", "processing")]
    assert got[3] == ("event", 2)


def test_processing_time_via_runner_clock_drives_ttl_and_timers() -> None:
    """LocalRunner(clock=...) is the processing-time source for timers and processing TTL."""
    clock = Clock(1_000)

    class Session(ed.KeyedProcessFunction):
        seen = ed.ValueState("seen", ttl=ed.Ttl(ms=2_000, time="processing"))

        def on_event(self, event, ctx):
            yield ("event", event["id"], self.seen.get())
            self.seen.set(event["id"])

    events = [{"id": i, "key": "k", "pt": 1_000 + i * 900} for i in range(6)]
    job = ed.Job("pt-ttl")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(iterable_with_clock(events, clock)))
        .key_by("key").process(Session()).sink(out))
    got = LocalRunner(job, batch_size=1, clock=clock).run().collected(out)
    # Each value lives 2,000 ms of processing time; events come 900 ms apart.
    assert got == [("event", 0, None), ("event", 1, 0), ("event", 2, 1), ("event", 3, 2),
                   ("event", 4, 3), ("event", 5, 4)]
    events = [{"id": i, "key": "k", "pt": 1_000 + i * 2_000} for i in range(3)]
    clock.now = 1_000
    job = ed.Job("pt-ttl2")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(iterable_with_clock(events, clock)))
        .key_by("key").process(Session()).sink(out))
    got = LocalRunner(job, batch_size=1, clock=clock).run().collected(out)
    assert got == [("event", 0, None), ("event", 1, None), ("event", 2, None)]
