"""Event-time results do not depend on how the runner batches its input.

Every run must equal the per-record reference (``batch_size=1``: the watermark advances after
every record): the same outputs in the same order, the same side outputs and the same late
and dead-letter counts, on the memory and the RocksDB backend. The jobs use everything that
reads event time: TTL state, event-time timers (some registered already due), tumbling
windows with a late side output and with late events dropped, and a late output of their own.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.runtime.executor import Executor
from eddies.runtime.watermarks import MIN_TIME, BoundedOutOfOrderness, PartitionWatermark
from eddies.state import open_backend
from eddies.state.backend import Batch
from eddies.state.keys import decode_user_key

BOUND = 1_000
TTL_MS = 2_500
LATE = ed.OutputTag("late")
WINDOW_LATE = ed.OutputTag("window-late")


class Probe(ed.KeyedProcessFunction):
    """Reads and writes TTL state, registers timers (some already due) and reports what it
    saw, including the watermark; late events also go to a side output."""

    last = ed.ValueState("last", ttl=ed.Ttl(ms=TTL_MS))
    count = ed.ValueState("count", ttl=ed.Ttl(ms=TTL_MS, update="on_read_and_write"))

    def on_event(self, event, ctx):
        prev = self.last.get()
        n = (self.count.get() or 0) + 1
        self.last.set(event["id"])
        self.count.set(n)
        ctx.timers.register_event_time(ctx.timestamp + event["after"])
        if ctx.timestamp <= ctx.watermark:
            ctx.output(LATE, event["id"])
        yield ("event", event["id"], ctx.key, prev, n, ctx.watermark)

    def on_timer(self, timestamp, ctx):
        yield ("timer", ctx.key, timestamp, self.last.get(), ctx.watermark)


class Count:
    def create(self):
        return 0

    def add(self, acc, event):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def result(self, acc):
        return acc


def build(shape: str, events: list[dict[str, Any]]
          ) -> tuple[ed.Job, dict[str, ed.sinks.CollectSink]]:
    """``fused``: source -> key_by -> process only (the runner's batch path); ``graph``: the
    keyed stream also feeds two windows and the side outputs (the record-at-a-time path)."""
    job = ed.Job(f"batch-{shape}")
    sinks = {name: ed.sinks.collect(name=name)
             for name in ("probe", "late", "windows", "window_late", "windows_dropping")}
    keyed = job.source(ed.sources.iterable(events), timestamp="ts",
                       watermarks=ed.BoundedOutOfOrderness(BOUND)).key_by("key")
    probe = keyed.process(Probe(), name="probe")
    probe.sink(sinks["probe"])
    if shape == "graph":
        probe.side_output(LATE).sink(sinks["late"])
        windows = keyed.window(ed.Tumbling(3_000), allowed_lateness=700,
                               late=WINDOW_LATE).aggregate(Count(), name="windows")
        windows.sink(sinks["windows"])
        windows.side_output(WINDOW_LATE).map(lambda e: e["id"]).sink(sinks["window_late"])
        keyed.window(ed.Tumbling(2_000)).aggregate(Count(), name="dropping").sink(
            sinks["windows_dropping"])
    return job, sinks


def run(shape: str, events: list[dict[str, Any]], state: str, batch_size: int,
        checkpoint_interval: int) -> dict[str, Any]:
    job, sinks = build(shape, events)
    result = ed.run_local(job, state, batch_size=batch_size,
                          checkpoint_interval=max(checkpoint_interval, batch_size))
    stats = result.stats
    return {
        **{name: sink.items for name, sink in sinks.items()},
        "dead_letters": [d["reason"] for d in result.dead_letters],
        "counts": (stats.events_in, stats.dead_letters, stats.late_events,
                   stats.late_dropped, stats.watermark),
    }


@st.composite
def inputs(draw: Any) -> list[dict[str, Any]]:
    """A few keys; timestamps that mostly rise, out of order within the bound, some beyond
    it (late); timers due from before the event to after the TTL; a few bad timestamps."""
    n = draw(st.integers(50, 1_500))
    # A seeded generator: drawing each choice from hypothesis would make an input of 1,500
    # events too large for its data budget (a failed health check, now and then).
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    keys = [f"k{i}" for i in range(draw(st.integers(1, 4)))]
    step = draw(st.sampled_from([5, 40, 150]))
    late_share = draw(st.sampled_from([0.0, 0.03, 0.15]))
    events: list[dict[str, Any]] = []
    t = 100_000
    for i in range(n):
        t += rng.randint(0, 2 * step)
        roll = rng.random()
        if roll < late_share:
            ts: Any = t - rng.randint(BOUND + 1, 4 * BOUND)
        elif roll < 0.995:
            ts = t - rng.randint(0, BOUND)
        else:
            ts = "bad"
        events.append({"id": i, "key": rng.choice(keys), "ts": ts,
                       "after": rng.choice([-800, 0, 1, 300, 1_500, TTL_MS, 4_000])})
    return events


@pytest.mark.parametrize("shape", ["fused", "graph"])
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(events=inputs(), sizes=st.lists(st.integers(2, 5_000), min_size=2, max_size=2),
       small=st.integers(2, 40), interval=st.integers(1, 3_000))
def test_every_batch_size_gives_the_per_record_results(
    shape: str, events: list[dict[str, Any]], sizes: list[int], small: int, interval: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    reference = run(shape, events, "memory", 1, interval)
    assert reference["probe"], "the job produced nothing"
    for i, size in enumerate([small, *sizes]):
        for backend in ("memory", "rocksdb"):
            state = ("memory" if backend == "memory"
                     else f"rocksdb:{tmp_path_factory.mktemp('st') / str(i)}")
            got = run(shape, events, state, size, interval)
            for part, expected in reference.items():
                assert got[part] == expected, (part, size, backend)


def test_timers_and_ttl_fire_inside_a_batch_as_per_record() -> None:
    """One batch of the whole input: a key's TTL entry expires and its timer fires between
    two records of the batch, exactly where per-record advancing puts them."""
    events = [{"id": 0, "key": "a", "ts": 10_000, "after": 1_000},
              {"id": 1, "key": "b", "ts": 12_000, "after": 10**9},
              {"id": 2, "key": "b", "ts": 13_600, "after": 10**9},
              {"id": 3, "key": "a", "ts": 13_700, "after": 10**9},
              {"id": 4, "key": "a", "ts": 11_000, "after": 10**9}]  # late: 11,000 <= 12,699
    per_record = run("graph", events, "memory", 1, 100)
    whole = run("graph", events, "memory", 5_000, 100)
    assert whole == per_record
    probe = whole["probe"]
    # Record 2 moved the watermark to 12,599: a's timer at 11,000 fired before record 3
    # (seeing a's entry, which lives until 12,500), and record 3 found it expired.
    assert probe[:4] == [("event", 0, "a", None, 1, MIN_TIME),
                         ("event", 1, "b", None, 1, 8_999),
                         ("event", 2, "b", 1, 2, 10_999),
                         ("timer", "a", 11_000, 0, 11_000)]
    assert probe[4] == ("event", 3, "a", None, 1, 12_599)
    assert whole["late"] == [4] and whole["window_late"] == [4]
    assert whole["counts"][2] == 3  # the late record, counted by each of its three operators


class _Source:
    """Drives an Executor as the Kafka worker does (kafka/worker.py ``_push``): one partition,
    batches of records pushed with the key group pinned to the partition and with the
    partition's watermark, which is observed after each batch, then time advanced."""

    def __init__(self, shape: str, events: list[dict[str, Any]]) -> None:
        self.shape = shape
        self.events = events

    def run(self, batch: int) -> dict[str, Any]:
        job, sinks = build(self.shape, self.events)
        ex = Executor(job, open_backend("memory"), clock=lambda: 0)
        ex.open_operators()
        node = job.nodes[0]
        mark = PartitionWatermark(BoundedOutOfOrderness(BOUND), 0)
        for lo in range(0, len(self.events), batch):
            for op in ex.operators.values():
                op.store.key_group = 3
            try:
                max_ts = ex.push_records(node, self.events[lo:lo + batch], None, 0,
                                         mark=mark, others={})
            finally:
                for op in ex.operators.values():
                    op.store.key_group = None
            mark.observe(max_ts, 0)
            ex.advance_time({node: [(mark.watermark, False)]}, 0)
        ex.advance_time({}, 0)
        ex.flush_sinks()
        return {**{name: sink.items for name, sink in sinks.items()},
                "counts": (ex.stats.late_events, ex.stats.late_dropped, ex.stats.dead_letters)}


@pytest.mark.parametrize("shape", ["fused", "graph"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=inputs(), size=st.integers(2, 2_000))
def test_executor_entry_point_of_the_workers_is_batch_independent(
    shape: str, events: list[dict[str, Any]], size: int
) -> None:
    """push_records with the partition's watermark (what kafka/worker.py passes) gives the
    results of feeding one record at a time."""
    source = _Source(shape, events)
    assert source.run(size) == source.run(1)


def _timer_per_record(n: int) -> list[dict[str, Any]]:
    """One record every 10 ms over three keys, each registering a timer 3 bounds later (a
    few 300 ms later, some already due): past the first ones, a timer comes due between
    nearly every two records."""
    return [{"id": i, "key": f"k{i % 3}", "ts": 100_000 + 10 * i - (i % 7) * 3,
             "after": -50 if i % 11 == 0 else 3 * BOUND + i % 5} for i in range(n)]


@pytest.mark.parametrize("shape", ["fused", "graph"])
def test_a_timer_due_before_nearly_every_record_as_per_record(shape: str) -> None:
    """Timers and TTL expiry due between nearly every two records of a batch: each fires
    before the record whose watermark reaches it, whatever the batch size."""
    events = _timer_per_record(1_200)
    reference = run(shape, events, "memory", 1, 1_000)
    fired = [o for o in reference["probe"] if o[0] == "timer"]
    assert len(fired) > 1_100
    for size in (2, 37, 500, 5_000):
        assert run(shape, events, "memory", size, 1_000) == reference, size


def _push_union(events: list[dict[str, Any]], chunks: list[int], other: tuple[int, bool]
                ) -> dict[str, Any]:
    """Drive an Executor over ``events`` from one partition of source ``a``, unioned with
    source ``b`` whose one partition stands at ``other`` (watermark, idle): pushes of
    ``chunks`` records each, no advance_time between them."""
    job = ed.Job("union")
    sink = ed.sinks.collect(name="probe")
    a = job.source(ed.sources.iterable(events), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(BOUND), name="a")
    b = job.source(ed.sources.iterable([]), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(BOUND), name="b")
    a.union(b).key_by("key").process(Probe(), name="probe").sink(sink)
    ex = Executor(job, open_backend("memory"), clock=lambda: 0)
    ex.open_operators()
    mark = PartitionWatermark(BoundedOutOfOrderness(BOUND), 0)
    others = {b.node: [other]}
    lo = 0
    for size in chunks:
        max_ts = ex.push_records(a.node, events[lo:lo + size], None, 0, mark=mark,
                                 others=others)
        mark.observe(max_ts, 0)
        lo += size
    assert lo == len(events)
    ex.advance_time({a.node: [(mark.watermark, False)], b.node: [other]}, 0)
    watermarks = [ex.wm[n] for n in job.nodes]
    ex.advance_time({}, 0)
    ex.flush_sinks()
    return {"probe": sink.items, "late": ex.stats.late_events, "watermarks": watermarks}


@pytest.mark.parametrize("other", [(100_000 + 4_000, False), (MIN_TIME, True)])
def test_a_push_with_other_inputs_holding_time_back_is_per_record(
    other: tuple[int, bool]
) -> None:
    """Another input holds the operator's watermark back (or is idle): one push of many
    records, with timers due between nearly all of them, gives what pushing them one at a
    time gives."""
    events = _timer_per_record(1_200)
    one_by_one = _push_union(events, [1] * len(events), other)
    assert len(one_by_one["probe"]) > 2_000
    for chunks in ([len(events)], [37] * 32 + [16], [600, 1, 599]):
        assert _push_union(events, chunks, other) == one_by_one, chunks


class _Tally(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event: dict[str, Any], ctx: ed.Context) -> Any:
        self.n.set(self.n.get() + 1)
        return [(ctx.key, self.n.get())]


def _push_pinned(ex: Executor, node: Any, group: int, events: list[dict[str, Any]],
                 mark: PartitionWatermark | None = None) -> int | None:
    """Push ``events`` as the Kafka worker does: with key group ``group`` pinned."""
    ex.pin_key_group(group)
    try:
        return ex.push_records(node, events, None, 0, mark=mark,
                               others=None if mark is None else {})
    finally:
        ex.pin_key_group(None)


def _checkpoint(ex: Executor, backend: Any) -> None:
    """Write the executor's checkpoint to ``backend`` (the store's, under the TTL layer)."""
    batch = Batch()
    ex.checkpoint_ops(batch)
    backend.write(batch)


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_keys_pushed_with_a_pinned_group_are_stored_under_the_group_they_were_first_seen_in(
    batch: int,
) -> None:
    """As the Kafka worker pushes: a key new to the operator takes the pinned group (the
    partition), and a key already known under another group (a timer's, pinned at
    assignment) keeps that group, however the records are batched."""
    events = [{"key": k, "ts": 1_000 + i} for i, k in enumerate(["old", "new", "new", "old",
                                                                "x", "new"])]
    job = ed.Job("pinned")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts").key_by("key")
     .process(_Tally(), name="tally").sink(out))
    ex = Executor(job, open_backend("memory"), clock=lambda: 0)
    ex.open_operators()
    (op,) = ex.operators.values()
    store = op.store
    store.pin_prefix("old", (5).to_bytes(2, "big") + store.prefix("old")[2:])
    node = job.nodes[0]
    mark = PartitionWatermark(BoundedOutOfOrderness(BOUND), 0)
    for lo in range(0, len(events), batch):
        max_ts = _push_pinned(ex, node, 3, events[lo:lo + batch], mark)
        mark.observe(max_ts, 0)
        ex.advance_time({node: [(mark.watermark, False)]}, 0)
    ex.flush_sinks()
    store.flush()
    groups = {stored[2:]: int.from_bytes(stored[:2], "big")
              for stored, _ in store.backend.iterate("n", None, None)}
    assert groups == {store.prefix("old")[2:]: 5, store.prefix("new")[2:]: 3,
                      store.prefix("x")[2:]: 3}
    assert out.items == [("old", 1), ("new", 1), ("new", 2), ("old", 2), ("x", 1), ("new", 3)]


class _BlindWrites(ed.KeyedProcessFunction):
    """Writes without reading first (the handle's fast path, which takes no prefix), or
    only reads, or registers a timer, or touches no state at all."""

    n = ed.ValueState("n", default=0)

    def on_event(self, event: dict[str, Any], ctx: ed.Context) -> Any:
        if event["op"] == "write":
            self.n.set(event["ts"])
        elif event["op"] == "read":
            return [(ctx.key, self.n.get())]
        elif event["op"] == "timer":
            ctx.timers.register_event_time(10**12)
        return None


def test_blind_writes_under_pinned_groups_keep_the_group_of_their_key_first_push() -> None:
    """The batch path takes no prefix for a batch's keys (``KeyedStateStore.defer_prefixes``):
    a key takes the group pinned when its prefix is first needed (a timer here), and a
    key only written blind, whose prefix is first needed at the checkpoint, the group of the
    first batch it came in since the last checkpoint."""
    job = ed.Job("blind")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable([]), timestamp="ts").key_by("key")
     .process(_BlindWrites(), name="blind").sink(out))
    ex = Executor(job, open_backend("memory"), clock=lambda: 0)
    ex.open_operators()
    (op,) = ex.operators.values()
    node = job.nodes[0]
    mark = PartitionWatermark(BoundedOutOfOrderness(BOUND), 0)
    ts = iter(range(1_000, 2_000))

    def push(group: int, *records: tuple[str, str]) -> None:
        events = [{"key": k, "op": o, "ts": next(ts)} for k, o in records]
        mark.observe(_push_pinned(ex, node, group, events, mark), 0)

    push(3, ("a", "write"), ("b", "none"), ("g", "none"))
    push(4, ("b", "write"), ("c", "write"), ("a", "write"), ("e", "read"), ("g", "timer"),
         ("g", "write"))
    _checkpoint(ex, op.store.backend.inner)
    push(5, ("d", "none"))
    _checkpoint(ex, op.store.backend.inner)
    push(6, ("d", "write"), ("f", "none"))
    push(7, ("f", "write"))
    _checkpoint(ex, op.store.backend.inner)
    stored = {decode_user_key(k, 2)[0]: int.from_bytes(k[:2], "big")
              for k, _ in op.store.backend.iterate("n", None, None)}
    assert stored == {"a": 3, "b": 3, "c": 4, "d": 6, "f": 6, "g": 4}
    ex.flush_sinks()
    assert out.items == [("e", 0)]


class _Remind(ed.KeyedProcessFunction):
    """Keeps the record's ts and reports it from a timer at ts + 1,000."""

    last = ed.ValueState("last")

    def on_event(self, event: dict[str, Any], ctx: ed.Context) -> Any:
        self.last.set(event["ts"])
        ctx.timers.register_event_time(event["ts"] + 1_000)

    def on_timer(self, timestamp: int, ctx: ed.Context) -> Any:
        return [(ctx.key, self.last.get())]


def test_a_timer_read_back_from_the_store_under_pinned_groups_finds_its_key_state() -> None:
    """Under pinned key groups, a timer beyond the ones kept in memory is read back from the
    store when it comes due, and fires unpinned: its key takes the group the timer is stored
    under, so the timer finds the state stored in that group (not in ``crc32 % 128``)."""
    backend = open_backend("memory")
    keys = [f"k{i}" for i in range(8)]

    def executor() -> tuple[Executor, Any, Any]:
        job = ed.Job("remind")
        out = ed.sinks.collect()
        (job.source(ed.sources.iterable([]), timestamp="ts").key_by("key")
         .process(_Remind(), name="remind").sink(out))
        ex = Executor(job, backend, clock=lambda: 0, cache_entries=2)
        ex.open_operators()
        return ex, out, job.nodes[0]

    ex, out, node = executor()
    _push_pinned(ex, node, 5, [{"key": k, "ts": 1_000 + i} for i, k in enumerate(keys)])
    _checkpoint(ex, backend)

    again, out, node = executor()  # restored: two timers in memory, six in the store
    again.pin_key_group(5)  # as the worker does before it pushes (nothing here)
    again.pin_key_group(None)
    again.advance_time({node: [(10_000, False)]}, 0)
    again.flush_sinks()
    assert out.items == [(k, 1_000 + i) for i, k in enumerate(keys)]
