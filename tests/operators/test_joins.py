"""Interval and as-of joins against a plain-Python batch computation.

Generated out-of-order input on both sides (never more out of order than each source's
bound, so no event is late), read through sources that interleave the two inputs in
generated ways, on the memory and RocksDB backends. Results, and their timestamps (read by
a keyed function downstream), must equal the batch computation's, and no join state or timer
is left at the end of input.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.errors import ConfigError
from eddies.operators.joins import (
    END,
    asof_join_function,
    interval_join_function,
    split_asof_key,
    split_interval_key,
)
from eddies.operators.sources import DeadLetter, Source, SourceReader
from eddies.state.backend import DELETE, PUT
from eddies.state.values import unpack
from eddies.testing import Harness

T0 = 1_000_000


# -- the batch computations ------------------------------------------------------------------
def interval_reference(lefts: list[dict], rights: list[dict], lower: int,
                       upper: int) -> list[tuple]:
    return sorted((a["k"], a["id"], b["id"], max(a["ts"], b["ts"]))
                  for a in lefts for b in rights
                  if a["k"] == b["k"] and a["ts"] + lower <= b["ts"] <= a["ts"] + upper)


def asof_reference(lefts: list[dict], rights: list[dict], how: str) -> list[tuple]:
    out = []
    for a in lefts:
        best = None
        for b in rights:  # in the right input's order: a later one at the same ts wins
            if b["k"] == a["k"] and b["ts"] <= a["ts"] and (best is None
                                                             or b["ts"] >= best["ts"]):
                best = b
        if best is not None or how == "left":
            out.append((a["k"], a["id"], None if best is None else best["id"], a["ts"]))
    return sorted(out)


# -- inputs ------------------------------------------------------------------------------------
@st.composite
def side(draw: Any, prefix: str, keys: int, disorder: int) -> list[dict]:
    """Events whose timestamps trail the highest so far by at most ``disorder`` ms."""
    n = draw(st.integers(0, 30))
    base = T0
    events = []
    for i in range(n):
        base += draw(st.integers(0, 8))
        ts = base - draw(st.integers(0, disorder))
        events.append({"k": f"k{draw(st.integers(0, keys - 1))}", "id": f"{prefix}{i}",
                       "ts": ts})
    return events


@st.composite
def steps(draw: Any, events: list[dict]) -> list[Any]:
    """How a source hands out ``events``: chunks, with empty reads (the source is slow, its
    watermark holds the join's back) in between."""
    out: list[Any] = []
    i = 0
    while i < len(events):
        if draw(st.booleans()):
            out.append(draw(st.integers(1, 4)))
        n = draw(st.integers(1, 12))
        out.append(events[i:i + n])
        i += n
    return out


class Steps(Source):
    """A bounded source that returns its events in the given chunks (an int: that many reads
    that return nothing)."""

    def __init__(self, name: str, plan: list[Any]) -> None:
        self.name = name
        self.plan = plan

    def partitions(self) -> list[SourceReader]:
        return [_StepsReader(self.plan)]


class _StepsReader(SourceReader):
    def __init__(self, plan: list[Any]) -> None:
        self.plan = plan
        self.i = 0  # step
        self.j = 0  # events of the step handed out, or empty reads done
        self.done = False  # even with no steps: done after one read, as files are

    @property
    def position(self) -> Any:
        return [self.i, self.j]

    def seek(self, position: Any) -> None:
        self.i, self.j = position
        self.done = self.i >= len(self.plan)

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        if self.i >= len(self.plan):
            self.done = True
            return [], []
        step = self.plan[self.i]
        if isinstance(step, int):
            self.j += 1
            got: list[Any] = []
            if self.j >= step:
                self.i, self.j = self.i + 1, 0
        else:
            got = step[self.j:self.j + max_records]
            self.j += len(got)
            if self.j >= len(step):
                self.i, self.j = self.i + 1, 0
        self.done = self.i >= len(self.plan)
        return got, []


class Stamp(ed.KeyedProcessFunction):
    """Reads each join result's timestamp."""

    def on_event(self, r, ctx):
        yield (r["key"], r["left"]["id"], r["right"] and r["right"]["id"], ctx.timestamp)


def run_join(lefts: list[dict], rights: list[dict], plans: tuple[list, list], disorder: int,
             batch: int, state: Any, join: str, **options: Any) -> list[tuple]:
    job = ed.Job("joined")
    out = ed.sinks.collect()
    wm = ed.BoundedOutOfOrderness(disorder)
    left = job.source(Steps("left", plans[0]), timestamp="ts", watermarks=wm).key_by("k")
    right = job.source(Steps("right", plans[1]), timestamp="ts", watermarks=wm).key_by("k")
    if join == "interval":
        joined = left.interval_join(right, name="j", **options)
    else:
        joined = left.join_asof(right, name="j", **options)
    joined.key_by("key").process(Stamp(), name="stamp").sink(out)
    result = ed.run_local(job, state, batch_size=batch, checkpoint_interval=7)
    assert result.stats.late_events == 0 and result.stats.late_dropped == 0
    return sorted(result.collected(out))


def leftover(backend: ed.RocksDbStateBackend | ed.InMemoryStateBackend) -> dict[str, int]:
    """Stored join entries and timers."""
    counts = {cf: backend.count(cf) for cf in backend.column_families()
              if cf.startswith("j.") or cf.startswith("__timers__")}
    return {cf: n for cf, n in counts.items() if n}


def check(join: str, backend: str, data: Any, **options: Any) -> list[tuple]:
    keys = data.draw(st.integers(1, 4), label="keys")
    disorder = data.draw(st.integers(0, 15), label="disorder")
    lefts = data.draw(side("L", keys, disorder), label="lefts")
    rights = data.draw(side("R", keys, disorder), label="rights")
    plans = (data.draw(steps(lefts), label="left steps"),
             data.draw(steps(rights), label="right steps"))
    batch = data.draw(st.sampled_from([1, 3, 50]), label="batch")
    if join == "interval":
        expected = interval_reference(lefts, rights, options["lower"], options["upper"])
    else:
        expected = asof_reference(lefts, rights, options.get("how", "inner"))
    tmp = Path(tempfile.mkdtemp(prefix="joins-"))
    try:
        if backend == "memory":
            state: Any = ed.InMemoryStateBackend()
            got = run_join(lefts, rights, plans, disorder, batch, state, join, **options)
            left_behind = leftover(state)
        else:
            got = run_join(lefts, rights, plans, disorder, batch, f"rocksdb:{tmp / 'db'}",
                           join, **options)
            with ed.RocksDbStateBackend(tmp / "db", read_only=True) as db:
                left_behind = leftover(db)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert got == expected
    assert left_behind == {}
    return got


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_interval_join_equals_the_batch_computation(backend: str, data: Any) -> None:
    lower = data.draw(st.integers(-20, 10), label="lower")
    upper = lower + data.draw(st.integers(0, 25), label="upper - lower")
    check("interval", backend, data, lower=lower, upper=upper)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_asof_join_equals_the_batch_computation(backend: str, data: Any) -> None:
    how = data.draw(st.sampled_from(["inner", "left"]), label="how")
    check("asof", backend, data, how=how)


def test_interval_join_emits_a_pair_at_its_later_timestamp_whichever_side_came_first() -> None:
    lefts = [{"k": "a", "id": "L0", "ts": T0 + 50}]
    rights = [{"k": "a", "id": "R0", "ts": T0 + 40}, {"k": "a", "id": "R1", "ts": T0 + 60}]
    expected = [("a", "L0", "R0", T0 + 50), ("a", "L0", "R1", T0 + 60)]
    for plans in [([lefts], [rights]), ([5, lefts], [rights]), ([lefts], [5, rights])]:
        got = run_join(lefts, rights, plans, 100, 10, "memory", "interval",
                       lower=-20, upper=20)
        assert got == expected


def test_interval_join_keeps_duplicates_and_equal_timestamps() -> None:
    lefts = [{"k": "a", "id": f"L{i}", "ts": T0} for i in range(2)]
    rights = [{"k": "a", "id": f"R{i}", "ts": T0} for i in range(2)]
    got = run_join(lefts, rights, ([lefts], [rights]), 0, 1, "memory", "interval",
                   lower=0, upper=0)
    assert got == interval_reference(lefts, rights, 0, 0) and len(got) == 4


# -- the functions, driven by hand -------------------------------------------------------------
def buffered(h: Harness, name: str, key: Any) -> dict | None:
    """A join's buffer for ``key``: map keys unpacked to tuples, events decoded (they are
    stored as msgpack bytes)."""
    entries = h.state(name, key)
    if entries is None:
        return None
    split = split_interval_key if name.startswith("ij") else split_asof_key
    return {split(k): unpack(v) if isinstance(v, bytes) else [unpack(x) for x in v]
            for k, v in entries.items()}


def test_interval_buffers_go_as_soon_as_the_watermark_rules_out_a_match() -> None:
    h = Harness(interval_join_function("ij", lower=-10, upper=20), operator="ij")
    h.event("a", key="k", timestamp=100)
    h.event("b", key="k", timestamp=100, input=2)
    # Entries (side, due, seq): the left event due at 100 + upper, the right one at
    # 100 - lower.
    assert buffered(h, "ij.buffer", "k") == {(0, 120, 0): "a", (1, 110, 0): "b"}
    h.watermark(109)
    assert len(h.state("ij.buffer", "k")) == 2
    h.watermark(110)  # a left event after 110 cannot reach back to a right one at 100
    assert buffered(h, "ij.buffer", "k") == {(0, 120, 0): "a"}
    h.watermark(119)
    assert h.event("c", key="k", timestamp=120, input=2) == [
        {"key": "k", "left": "a", "right": "c"}]
    h.watermark(120)  # nor a right event after 120 to a left one at 100
    assert buffered(h, "ij.buffer", "k") == {(1, 130, 0): "c"}
    h.watermark(130)
    assert h.state("ij.buffer", "k") is None and h.pending_timers() == []


def test_interval_pair_waits_for_its_later_timestamp() -> None:
    h = Harness(interval_join_function("ij", lower=-10, upper=10), operator="ij")
    assert h.event("late-ts", key="k", timestamp=108) == []
    assert h.event("early-ts", key="k", timestamp=100, input=2) == []  # the pair is at 108
    assert h.watermark(107) == []
    assert h.watermark(108) == [{"key": "k", "left": "late-ts", "right": "early-ts"}]


def test_asof_uses_a_version_that_arrives_after_the_left_event() -> None:
    h = Harness(asof_join_function("aj"), operator="aj")
    h.event(1, key="k", timestamp=10, input=2)
    h.event("order", key="k", timestamp=50)
    h.event(2, key="k", timestamp=40, input=2)
    h.event(3, key="k", timestamp=40, input=2)  # same ts, later in the right input: wins
    h.event(4, key="k", timestamp=51, input=2)
    assert h.watermark(50) == [{"key": "k", "left": "order", "right": 3}]
    # Only the latest version at or below the watermark, and the one above it, are kept.
    assert buffered(h, "aj.buffer", "k") == {(40, 1, 0): 3, (51, 1, 0): 4}
    h.watermark(51)
    assert buffered(h, "aj.buffer", "k") == {(51, 1, 0): 4}
    # No timers: the kept version is due at the end of input, in the join's own index.
    assert h.pending_timers() == [] and h.operator.next_event_time() == END
    h.watermark(2**63 - 1)  # the end of input: no left event can come
    assert h.state("aj.buffer", "k") is None and h.pending_timers() == []


@pytest.mark.parametrize("join", ["interval", "asof"])
def test_late_events_go_to_the_late_output_or_are_counted(join: str) -> None:
    tag = ed.OutputTag("late")
    for late in (tag, None):
        fn = (interval_join_function("j", -5, 5, late=late) if join == "interval"
              else asof_join_function("j", late=late))
        h = Harness(fn, operator="j")
        h.watermark(100)
        assert h.event({"x": 1}, key="k", timestamp=100) == []
        assert h.event({"x": 2}, key="k", timestamp=90, input=2) == []
        assert h.event({"x": 3}, key="k", timestamp=101, input=2) == []
        if late is tag:
            assert h.side_output(tag) == [{"x": 1}, {"x": 2}] and fn.late_dropped == 0
        else:
            assert fn.late_dropped == 2
        stored = repr(buffered(h, "j.buffer", "k"))  # the event in time only
        assert "{'x': 3}" in stored and "{'x': 1}" not in stored and "{'x': 2}" not in stored


def test_late_events_through_run_local() -> None:
    tag = ed.OutputTag("late")
    job = ed.Job("late")
    out, late = ed.sinks.collect(), ed.sinks.collect()
    a = job.source(ed.sources.iterable([{"k": "x", "ts": 100}, {"k": "x", "ts": 50}]),
                   timestamp="ts", name="a").key_by("k")
    b = job.source(ed.sources.iterable([{"k": "x", "ts": 200}]), timestamp="ts",
                   name="b").key_by("k")
    joined = a.interval_join(b, lower=0, upper=500, late=tag, fn=lambda x, y: (x["ts"],
                                                                                y["ts"]))
    joined.sink(out)
    joined.side_output(tag).sink(late)
    result = ed.run_local(job, batch_size=1)
    assert result.collected(late) == [{"k": "x", "ts": 50}]
    assert result.collected(out) == [(100, 200)]


def test_join_configuration_errors_say_what_to_do() -> None:
    job = ed.Job("bad")
    a = job.source(ed.sources.iterable([]), name="a").key_by("k")
    b = job.source(ed.sources.iterable([]), name="b").key_by("k")
    with pytest.raises(ConfigError, match="lower=5 is above upper=1"):
        a.interval_join(b, lower=5, upper=1)
    with pytest.raises(ConfigError, match="must be an int of ms"):
        a.interval_join(b, lower=0.5, upper=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match='how must be "inner" or "left"'):
        a.join_asof(b, how="outer")
    with pytest.raises(ConfigError, match="late must be an eddies.OutputTag"):
        a.join_asof(b, late="late")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="another keyed stream"):
        a.interval_join(job.source(ed.sources.iterable([]), name="c"), lower=0, upper=1)


def test_joins_need_event_time() -> None:
    job = ed.Job("untimed")
    out = ed.sinks.collect()
    a = job.source(ed.sources.iterable([{"k": 1}]), name="a").key_by("k")
    b = job.source(ed.sources.iterable([{"k": 1}]), name="b").key_by("k")
    a.join_asof(b).sink(out)
    with pytest.raises(ConfigError, match="needs event time"):
        ed.run_local(job)


# -- late events, against the watermark the test drives ----------------------------------------
@st.composite
def script(draw: Any) -> list[tuple]:
    """Events of either input (some behind the watermark) and watermark moves."""
    ops: list[tuple] = []
    wm = 0
    for i in range(draw(st.integers(0, 40))):
        if draw(st.integers(0, 4)) == 0:
            wm += draw(st.integers(0, 15))
            ops.append(("wm", wm))
        else:
            ts = wm + draw(st.integers(-10, 20))
            ops.append((draw(st.sampled_from([1, 2])), f"k{draw(st.integers(0, 2))}", i, ts))
    return ops


@pytest.mark.parametrize("join", ["interval", "asof"])
@settings(max_examples=150, deadline=None)
@given(ops=script(), lower=st.integers(-10, 5), width=st.integers(0, 12),
       how=st.sampled_from(["inner", "left"]))
def test_late_events_follow_the_watermark(join: str, ops: list[tuple], lower: int,
                                          width: int, how: str) -> None:
    tag = ed.OutputTag("late")
    fn = (interval_join_function("j", lower, lower + width, late=tag) if join == "interval"
          else asof_join_function("j", how=how, late=tag))
    h = Harness(fn, operator="j")
    got, late, kept = [], [], {1: [], 2: []}
    wm = -(2**63)
    for op in ops:
        if op[0] == "wm":
            wm = max(wm, op[1])
            got += h.watermark(op[1])
            continue
        side, key, i, ts = op
        event = {"k": key, "id": f"{'LR'[side - 1]}{i}", "ts": ts}
        got += h.event(event, key=key, timestamp=ts, input=side)
        (late if ts <= wm else kept[side]).append(event)
    got += h.watermark(2**63 - 1)
    results = sorted((r["key"], r["left"]["id"], r["right"] and r["right"]["id"]) for r in got)
    if join == "interval":
        expected = interval_reference(kept[1], kept[2], lower, lower + width)
    else:
        expected = asof_reference(kept[1], kept[2], how)
    assert results == [e[:3] for e in expected]
    assert h.side_output(tag) == late
    assert all(h.state("j.buffer", f"k{k}") is None for k in range(3))
    assert h.pending_timers() == []


# -- the buffers against checkpoints and restores ------------------------------------------------
def recorded_writes(backend: ed.InMemoryStateBackend) -> list[tuple]:
    """The ``(op, key)`` of every write to the join's state ``j.buffer`` from now on."""
    seen: list[tuple] = []
    write = backend.write

    def recording(batch: Any, **kwargs: Any) -> Any:
        seen.extend((op[0], op[2]) for op in batch.singles() if op[1] == "j.buffer")
        return write(batch, **kwargs)

    backend.write = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("join", ["interval", "asof"])
def test_an_entry_gone_before_a_checkpoint_never_reaches_the_backend(join: str) -> None:
    """Entries added and dropped between two checkpoints cost the backend nothing; one held
    across a checkpoint is written by it and deleted by a later one."""
    backend = ed.InMemoryStateBackend()
    fn = (interval_join_function("j", -5, 5) if join == "interval"
          else asof_join_function("j", how="left"))
    h = Harness(fn, backend, operator="j")
    writes = recorded_writes(backend)
    h.event({"x": 1}, key="k", timestamp=100)
    assert len(h.watermark(200)) == (join == "asof")  # the harness checkpoints after it
    assert writes == [] and backend.count("j.buffer") == 0
    h.event({"x": 2}, key="k", timestamp=300)
    h.checkpoint()
    assert [op for op, _ in writes] == [PUT] and backend.count("j.buffer") == 1
    h.watermark(400)
    assert [op for op, _ in writes] == [PUT, DELETE] and writes[0][1] == writes[1][1]
    assert backend.count("j.buffer") == 0


@pytest.mark.parametrize("join", ["interval", "asof"])
@settings(max_examples=100, deadline=None)
@given(ops=script(), restores=st.lists(st.booleans(), min_size=40, max_size=40),
       lower=st.integers(-10, 5), width=st.integers(0, 12),
       how=st.sampled_from(["inner", "left"]))
def test_a_restore_anywhere_gives_the_results_of_one_run(join: str, ops: list[tuple],
                                                         restores: list[bool], lower: int,
                                                         width: int, how: str) -> None:
    """Snapshot and restore into a new harness between any two steps: the buffers and their
    due times are rebuilt from the stored entries, so the results, and an empty state at
    the end, are those of one uninterrupted run."""
    def new() -> Harness:
        fn = (interval_join_function("j", lower, lower + width) if join == "interval"
              else asof_join_function("j", how=how))
        return Harness(fn, operator="j")

    def drive(restoring: bool) -> list[tuple]:
        h = new()
        got: list[Any] = []
        for op, restore in zip(ops, restores, strict=False):
            if op[0] == "wm":
                got += h.watermark(op[1])
            else:
                side, key, i, ts = op
                got += h.event({"id": f"{'LR'[side - 1]}{i}"}, key=key, timestamp=ts,
                               input=side)
            if restoring and restore:
                snapshot = h.snapshot()
                h = new()
                h.restore(snapshot)
        got += h.watermark(2**63 - 1)
        assert h.backend.count("j.buffer") == 0
        return sorted((r["key"], r["left"]["id"], r["right"] and r["right"]["id"])
                      for r in got)

    assert drive(True) == drive(False)
