"""Joins at their edges: events state cannot hold, results changed downstream, many events
at one time, wide offsets, keys equal in Python but of other types, a side with no input, and
late counts in the harness."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.operators import joins
from eddies.operators.joins import asof_join_function, interval_join_function
from eddies.operators.sources import DeadLetter, Source, SourceReader
from eddies.state import buffers
from eddies.testing import Harness


def two_sources(job: ed.Job, lefts: list[Any], rights: list[Any],
                wm: Any = None) -> tuple[Any, Any]:
    wm = wm or ed.BoundedOutOfOrderness(1_000)
    a = job.source(ed.sources.iterable(lefts), timestamp="ts", watermarks=wm, name="L")
    b = job.source(ed.sources.iterable(rights), timestamp="ts", watermarks=wm, name="R")
    return a.key_by("k"), b.key_by("k")


def join(kind: str, a: Any, b: Any, **options: Any) -> Any:
    if kind == "interval":
        return a.interval_join(b, lower=0, upper=5, name="j", **options)
    return a.join_asof(b, name="j", **options)


@pytest.mark.parametrize("kind", ["interval", "asof"])
@pytest.mark.parametrize("batch", [1, 100])
def test_an_event_state_cannot_hold_goes_to_dead_letters_alone(kind: str, batch: int) -> None:
    lefts = [{"k": 1, "ts": 10, "id": "good1"}, {"k": 1, "ts": 10, "id": "bad", "x": {1}},
             {"k": 1, "ts": 10, "id": "good2"}]
    rights = [{"k": 1, "ts": 12 if kind == "interval" else 5, "id": "r"}]
    job = ed.Job("unstorable")
    out = ed.sinks.collect()
    join(kind, *two_sources(job, lefts, rights),
         fn=lambda a, b: (a["id"], b["id"])).sink(out)
    result = ed.run_local(job, state=ed.InMemoryStateBackend(), batch_size=batch)
    assert sorted(result.collected(out)) == [("good1", "r"), ("good2", "r")]
    assert [d["raw"] for d in result.dead_letters] == [repr(lefts[1])]
    assert "left event: cannot serialize dict (can not serialize 'set'" in (
        result.dead_letters[0]["reason"])


def mark_left(r: dict) -> tuple:
    """A downstream map that changes the result it is given."""
    r["left"]["seen"] = r["left"].get("seen", 0) + 1
    r["right"]["seen"] = r["right"].get("seen", 0) + 1
    return (r["left"]["id"], r["right"]["id"], r["left"]["seen"], r["right"]["seen"])


@pytest.mark.parametrize("kind", ["interval", "asof"])
@pytest.mark.parametrize("state", ["memory", "rocksdb"])
@pytest.mark.parametrize("cache_entries", [None, 1])
@pytest.mark.parametrize("left_first", [True, False])
def test_results_share_nothing_with_the_buffers_or_each_other(
        kind: str, state: str, cache_entries: int | None, left_first: bool) -> None:
    if kind == "interval":  # one left event, three right ones it matches
        lefts = [{"k": 1, "ts": 10, "id": "l"}]
        rights = [{"k": 1, "ts": 10 + i, "id": f"r{i}"} for i in range(1, 4)]
        expected = [("l", f"r{i}", 1, 1) for i in range(1, 4)]
    else:  # three left events, one right version they all use
        lefts = [{"k": 1, "ts": 10 + i, "id": f"l{i}"} for i in range(3)]
        rights = [{"k": 1, "ts": 5, "id": "r"}]
        expected = [(f"l{i}", "r", 1, 1) for i in range(3)]
    # Other keys in between, so that a cache of one entry evicts key 1's buffer.
    others = [{"k": i, "ts": 10, "id": f"x{i}"} for i in range(2, 30)]
    wm = ed.BoundedOutOfOrderness(1_000)
    job = ed.Job("shared")
    out = ed.sinks.collect()
    first, second = ("L", "R") if left_first else ("R", "L")
    sources = {}
    for name in (first, second):
        events = lefts + others if name == "L" else rights
        sources[name] = job.source(ed.sources.iterable(events), timestamp="ts",
                                   watermarks=wm, name=name).key_by("k")
    join(kind, sources["L"], sources["R"]).map(mark_left).sink(out)
    with tempfile.TemporaryDirectory() as tmp:
        result = ed.run_local(job, state="memory" if state == "memory"
                              else f"rocksdb:{Path(tmp) / 'db'}", batch_size=1,
                              checkpoint_interval=1, cache_entries=cache_entries)
    assert sorted(result.collected(out)) == expected


def packed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes a join packs (each event as it is buffered, entries at checkpoints)."""
    packed = [0]
    pack = joins.pack

    def counting(value: Any) -> bytes:
        data = pack(value)
        packed[0] += len(data)
        return data

    monkeypatch.setattr(joins, "pack", counting)
    monkeypatch.setattr(buffers, "pack", counting)
    return packed


@pytest.mark.parametrize("kind", ["interval", "asof"])
def test_many_events_at_one_time_cost_each_the_same(kind: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Work per event does not grow with the events already buffered at its key and time:
    the bytes state packs stay linear in the events."""
    packed = packed_bytes(monkeypatch)
    n = 2_000
    fn = (interval_join_function("j", 0, 5) if kind == "interval"
          else asof_join_function("j", how="left"))
    h = Harness(fn, operator="j")
    for i in range(n):
        h.event({"id": i}, key="k", timestamp=10)
        if i % 100 == 99:
            h.checkpoint()
    assert packed[0] < 40 * n
    got = h.watermark(2**62)
    assert len(got) == (0 if kind == "interval" else n)


class _CountingReads(list):  # type: ignore[type-arg]
    """A key's buffered values, counting the reads of one entry."""

    reads = 0

    def __getitem__(self, index: Any) -> Any:
        if type(index) is int:
            _CountingReads.reads += 1
        return super().__getitem__(index)


class _CountingHeld(buffers.Held):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.vals = _CountingReads()


def test_interval_read_is_as_wide_as_the_interval() -> None:
    """With ``lower = upper = 2000`` an event reads the entries of one timestamp, not the
    2000 ms of buffered events below its own due time."""
    fn = interval_join_function("j", 2_000, 2_000)
    h = Harness(fn, operator="j")
    buffer = fn.buffer

    def new(key: Any) -> Any:
        held = buffer.held[key] = _CountingHeld(key)
        return held

    buffer.new = new
    _CountingReads.reads = 0
    n = 500
    results = []
    for i in range(n):
        results += h.event({"l": i}, key="k", timestamp=i)
        results += h.event({"r": i}, key="k", timestamp=i + 2_000, input=2)
    results += h.watermark(2**62)
    assert sorted((r["left"]["l"], r["right"]["r"]) for r in results) == [
        (i, i) for i in range(n)]
    assert 0 < _CountingReads.reads <= 2 * n


@pytest.mark.parametrize("kind", ["interval", "asof"])
@pytest.mark.parametrize("left_first", [True, False])
def test_the_output_key_does_not_depend_on_which_side_came_last(kind: str,
                                                                left_first: bool) -> None:
    """Keys equal in Python are one key; results carry it as the state holds it."""
    fn = (interval_join_function("j", 0, 0) if kind == "interval"
          else asof_join_function("j"))
    h = Harness(fn, operator="j")
    events = [({"id": "l"}, 1.0, 1), ({"id": "r"}, True, 2)]
    if not left_first:
        events.reverse()
    got = []
    for event, key, side in events:
        got += h.event(event, key=key, timestamp=10, input=side)
    got += h.watermark(2**62)
    assert [(r["key"], type(r["key"])) for r in got] == [(1, int)]


class _DoneReader(SourceReader):
    """An empty partition: done before its first read."""

    done = True

    @property
    def position(self) -> Any:
        return 0

    def seek(self, position: Any) -> None:
        pass

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        return [], []


class _Empty(Source):
    name = "profiles"

    def partitions(self) -> list[SourceReader]:
        return [_DoneReader()]


def test_a_side_whose_reader_is_done_from_the_start_does_not_hold_the_join_back() -> None:
    job = ed.Job("empty-side")
    out = ed.sinks.collect()
    orders = job.source(ed.sources.iterable([{"c": "a", "ts": 10}, {"c": "a", "ts": 20}]),
                        timestamp="ts", name="orders")
    profiles = job.source(_Empty(), timestamp="ts")
    orders.key_by("c").join_asof(profiles.key_by("c"), how="left",
                                 fn=lambda o, p: (o["ts"], p)).sink(out)
    result = ed.run_local(job)
    assert result.collected(out) == [(10, None), (20, None)]
    assert result.stats.watermark == 2**63 - 1


def test_the_harness_counts_late_events_a_join_dropped() -> None:
    fn = interval_join_function("j", 0, 5)
    h = Harness(fn, operator="j")
    h.watermark(100)
    assert h.event({"a": 1}, key="k", timestamp=50) == []
    assert h.event({"b": 1}, key="k", timestamp=100, input=2) == []
    assert h.stats.late_events == 2 and h.stats.late_dropped == 2 == fn.late_dropped


@pytest.mark.parametrize("kind", ["interval", "asof"])
def test_join_buffers_do_not_bring_checkpoints_forward(kind: str) -> None:
    """Buffers are not a cache a checkpoint can shrink: holding more keys than twice
    ``cache_entries`` must not make every round checkpoint."""
    lefts = [{"k": i % 500, "ts": 1000 + i, "id": i} for i in range(3000)]
    rights = [{"k": i % 500, "ts": 1000 + i, "id": i} for i in range(3000)]

    def run(cache: int) -> tuple[int, list[Any]]:
        job = ed.Job("buffered")
        out = ed.sinks.collect()
        left = job.source(ed.sources.iterable(lefts, name="L"), timestamp="ts").key_by("k")
        right = job.source(ed.sources.iterable(rights, name="R"), timestamp="ts").key_by("k")
        if kind == "interval":
            joined = left.interval_join(right, lower=-100_000, upper=100_000, name="j")
        else:
            joined = left.join_asof(right, how="left", name="j")
        joined.sink(out)
        result = ed.run_local(job, ed.InMemoryStateBackend(), batch_size=10,
                              cache_entries=cache, checkpoint_interval=100_000)
        items = sorted(repr(r) for r in result.collected(out))
        return result.stats.checkpoints, items

    checkpoints, items = run(100)
    assert (checkpoints, items) == run(200_000)
    assert checkpoints <= 2


def _chained(job: ed.Job, first: str) -> tuple[Any, Any]:
    """Sources A and B into an interval join or (B unused) a tumbling window over A, whose
    results go, keyed again, into an as-of left join with source C; every source in order."""
    def events(prefix: str, times: list[int]) -> list[dict[str, Any]]:
        return [{"k": "x", "id": f"{prefix}{t}", "ts": t} for t in times]

    wm = ed.BoundedOutOfOrderness(0)
    a, b, c = (job.source(ed.sources.iterable(items, name=name), timestamp="ts", watermarks=wm)
               for name, items in (("A", events("a", [10, 50, 51])),
                                   ("B", events("b", [5, 6, 30])),
                                   ("C", events("c", [2, 20, 40]))))
    if first == "interval_join":
        upstream = a.key_by("k").interval_join(
            b.key_by("k"), lower=-10, upper=0, name="first",
            fn=lambda x, y: {"k": "x", "id": x["id"] + "+" + y["id"],
                             "ts": max(x["ts"], y["ts"])})
    else:
        upstream = (a.union(b).key_by("k").window(ed.Tumbling(15)).aggregate(ed.Count())
                    .map(lambda w: {"k": "x", "id": f"w{w['start']}", "ts": w["end"] - 1}))
    late = ed.OutputTag("late")
    joined = upstream.key_by("k").join_asof(c.key_by("k"), how="left", late=late, name="asof",
                                            fn=lambda x, y: (x["id"], y and y["id"]))
    return joined, joined.side_output(late)


@pytest.mark.parametrize("first", ["interval_join", "window"])
@pytest.mark.parametrize("batch", [1, 2, 1_000])
def test_results_of_an_operator_reach_a_join_below_it_before_its_watermark_passes_them(
        first: str, batch: int) -> None:
    """An operator's results held for the watermark (a join's pairs, a window's) reach the
    join below it, whose other input is another source, as if event time moved after every
    record: never late there, whatever the batch size."""
    job = ed.Job("chained")
    joined, late = _chained(job, first)
    out, late_out = ed.sinks.collect(), ed.sinks.collect()
    joined.sink(out)
    late.sink(late_out)
    result = ed.run_local(job, batch_size=batch)
    assert result.collected(late_out) == []
    expected = ([("a10+b5", "c2"), ("a10+b6", "c2")] if first == "interval_join"
                else [("w0", "c2"), ("w30", "c40"), ("w45", "c40")])
    assert result.collected(out) == expected
