"""Two keyed inputs on one keyed state: ``a.key_by(k).connect(b.key_by(k)).process(fn)``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.errors import ConfigError, KeyEncodingError
from eddies.testing import Harness

BOUND = 500


class Buffer(ed.KeyedCoProcessFunction):
    """Keeps each side's events per key and emits them, sorted, when the watermark passes
    their timestamp: an event-time result that arrival order cannot change."""

    left = ed.ListState("left")
    right = ed.ListState("right")
    seen = ed.ValueState("seen", default=0)

    def on_event1(self, event, ctx):
        self.left.add([ctx.timestamp, event["id"]])
        self.seen.set(self.seen.get() + 1)
        ctx.timers.register_event_time(ctx.timestamp)

    def on_event2(self, event, ctx):
        self.right.add([ctx.timestamp, event["id"]])
        self.seen.set(self.seen.get() + 1)
        ctx.timers.register_event_time(ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        lefts = sorted(i for t, i in self.left.get() if t == timestamp)
        rights = sorted(i for t, i in self.right.get() if t == timestamp)
        self.left.update([e for e in self.left.get() if e[0] != timestamp])
        self.right.update([e for e in self.right.get() if e[0] != timestamp])
        yield (ctx.key, timestamp, lefts, rights)


# -- harness -------------------------------------------------------------------------------------


def test_both_inputs_share_state_and_timers_per_key() -> None:
    h = Harness(Buffer())
    assert h.event({"id": 1}, key="a", timestamp=10) == []
    assert h.event({"id": 2}, key="a", timestamp=10, input=2) == []
    assert h.event({"id": 3}, key="b", timestamp=12, input=2) == []
    assert h.state("seen", "a") == 2 and h.state("seen", "b") == 1
    assert h.pending_timers("a") == [("event", 10)]
    assert h.watermark(12) == [("a", 10, [1], [2]), ("b", 12, [], [3])]
    assert h.state("left", "a") is None and h.state("right", "b") is None  # emptied


def test_second_input_needs_a_co_process_function() -> None:
    class One(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            yield event

    with pytest.raises(ConfigError, match="has no keyed input 2"):
        Harness(One()).event("x", key="k", input=2)
    with pytest.raises(ConfigError, match="has no keyed input 3"):
        Harness(Buffer()).event("x", key="k", input=3)


def test_a_bad_key_on_the_second_input_is_refused_before_user_code() -> None:
    h = Harness(Buffer())
    with pytest.raises(KeyEncodingError):
        h.event({"id": 1}, key=[1, 2], timestamp=1, input=2)
    assert h.pending_timers() == []


# -- graph ---------------------------------------------------------------------------------------


def _job(left: list[dict[str, Any]], right: list[dict[str, Any]],
         **watermarks: Any) -> tuple[ed.Job, ed.sinks.CollectSink]:
    job = ed.Job("co")
    out = ed.sinks.collect()
    a = job.source(ed.sources.iterable(left, name="left"), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(BOUND, **watermarks)).key_by("k")
    b = job.source(ed.sources.iterable(right, name="right"), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(BOUND)).key_by("k")
    a.connect(b).process(Buffer(), name="buffer").sink(out)
    return job, out


def test_connect_needs_a_co_process_function_or_a_keyed_stream() -> None:
    job = ed.Job("co")
    a = job.source(ed.sources.iterable([])).key_by("k")
    b = job.source(ed.sources.iterable([]))

    class One(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            yield event

    with pytest.raises(ConfigError, match="KeyedCoProcessFunction"):
        a.connect(b.key_by("k")).process(One())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="another keyed stream"):
        a.connect(b)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same Job"):
        a.connect(ed.Job("other").source(ed.sources.iterable([])).key_by("k"))


def test_the_watermark_is_the_minimum_of_both_inputs() -> None:
    """The left input's watermark alone passes 1,000 after its second event; the timer at
    1,000 waits for the right input's to pass it too (its second event, read after)."""
    left = [{"k": "a", "id": i, "ts": 1_000 * i} for i in range(1, 6)]
    right = [{"k": "a", "id": 100, "ts": 1_000}, {"k": "a", "id": 101, "ts": 6_000}]
    job = ed.Job("co")
    out = ed.sinks.collect()
    a = job.source(ed.sources.iterable(left, name="left"), timestamp="ts").key_by("k")
    b = job.source(ed.sources.iterable(right, name="right"), timestamp="ts").key_by("k")
    seen: list[tuple[int, int]] = []  # (timer, events handled by then)

    class Watch(Buffer):
        def on_timer(self, timestamp, ctx):
            seen.append((timestamp, self.seen.get()))
            yield from super().on_timer(timestamp, ctx)

    a.connect(b).process(Watch(), name="watch").sink(out)
    result = ed.run_local(job, batch_size=1)
    # Read in turns: left 1,000, right 1,000, left 2,000, right 6,000, left 3,000, ...
    assert seen[0] == (1_000, 4)  # events handled when it fired
    assert out.items[0] == ("a", 1_000, [1], [100])
    assert [r[1] for r in out.items] == [1_000, 2_000, 3_000, 4_000, 5_000, 6_000]
    assert result.stats.late_events == 0


def test_late_events_on_either_input_are_counted() -> None:
    left = [{"k": "a", "id": 1, "ts": 10_000}, {"k": "a", "id": 2, "ts": 1_000}]
    right = [{"k": "a", "id": 3, "ts": 10_000}, {"k": "a", "id": 4, "ts": 2_000}]
    job, out = _job(left, right)
    result = ed.run_local(job, batch_size=1)
    # Both 10,000s took the operator's watermark to 9,499: 1,000 and 2,000 are behind it.
    assert result.stats.late_events == 2


def test_a_bad_key_on_either_input_goes_to_dead_letters() -> None:
    left = [{"k": [1], "id": 1, "ts": 1}, {"k": "a", "id": 2, "ts": 2}]
    right = [{"id": 3, "ts": 1}, {"k": "a", "id": 4, "ts": 2}]
    job, out = _job(left, right)
    result = ed.run_local(job)
    reasons = sorted(d["reason"] for d in result.dead_letters)
    assert len(reasons) == 2
    assert "cannot be stored" in reasons[0] or "convert" in reasons[0]
    assert any("no key for operator 'buffer'" in r for r in reasons)
    assert out.items == [("a", 2, [2], [4])]


# -- batch independence over files ---------------------------------------------------------------


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@st.composite
def two_inputs(draw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two sides over a few keys, out of order within the bound (no late events)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))  # (see test_batch_independence)
    keys = [f"k{i}" for i in range(draw(st.integers(1, 5)))]
    sides = []
    ids = 0
    for _ in range(2):
        t = 10_000
        side = []
        for _ in range(draw(st.integers(1, 300))):
            t += rng.randint(0, 60)
            side.append({"k": rng.choice(keys), "id": ids,
                         "ts": max(10_000, t - rng.randint(0, BOUND // 2))})
            ids += 1
        sides.append(side)
    return sides[0], sides[1]


@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(inputs=two_inputs(), sizes=st.lists(st.integers(1, 400), min_size=2, max_size=2))
def test_two_file_sources_give_the_same_results_at_every_batch_size(
    inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]], sizes: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    d = tmp_path_factory.mktemp("co")
    left = _write(d / "left.jsonl", inputs[0])
    right = _write(d / "right.jsonl", inputs[1])

    def run(state: str, batch_size: int) -> tuple[list[Any], tuple[int, ...]]:
        job = ed.Job("co-files")
        out = ed.sinks.collect()
        a = job.source(ed.sources.jsonl(left), timestamp="ts",
                       watermarks=ed.BoundedOutOfOrderness(BOUND)).key_by("k")
        b = job.source(ed.sources.jsonl(right), timestamp="ts",
                       watermarks=ed.BoundedOutOfOrderness(BOUND)).key_by("k")
        a.connect(b).process(Buffer(), name="buffer").sink(out)
        result = ed.run_local(job, state, batch_size=batch_size,
                              checkpoint_interval=max(batch_size, 50))
        s = result.stats
        return out.items, (s.events_in, s.late_events, s.dead_letters)

    expected, counts = run("memory", 1)
    # Every event comes out once, with its own timestamp's group.
    assert sorted(i for r in expected for i in r[2] + r[3]) == sorted(
        e["id"] for e in inputs[0] + inputs[1])
    assert counts == (len(inputs[0]) + len(inputs[1]), 0, 0)
    for i, size in enumerate(sizes):
        assert run("memory", size) == (expected, counts), size
        state = f"rocksdb:{d / f'state-{i}'}"
        assert run(state, size) == (expected, counts), size
