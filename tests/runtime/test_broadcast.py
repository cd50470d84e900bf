"""Broadcast state in a job: written by on_broadcast, read-only (with a clear error) elsewhere."""

from __future__ import annotations

import pytest

import eddies as ed
from eddies.errors import ReadOnlyStateError


def connected_job(fn: ed.KeyedBroadcastProcessFunction, events: list[dict],
                  rules: list[dict]) -> tuple[ed.Job, ed.sinks.CollectSink]:
    job = ed.Job("bc")
    out = ed.sinks.collect()
    rule_stream = job.source(ed.sources.iterable(rules), timestamp="ts", name="rules")
    (job.source(ed.sources.iterable(events), timestamp="ts", name="events")
        .key_by("k").connect(rule_stream.broadcast()).process(fn).sink(out))
    return job, out


class Writer(ed.KeyedBroadcastProcessFunction):
    table = ed.BroadcastState("table")

    def on_broadcast(self, rule, ctx):
        assert ctx.key is None  # no current key on the broadcast side
        self.table.put(rule["name"], rule["value"])
        yield ("rule", rule["name"])

    def on_event(self, event, ctx):
        yield ("event", ctx.key, self.table.get("x"), sorted(self.table.entries()))


def test_broadcast_state_written_in_on_broadcast_is_seen_by_every_key() -> None:
    rules = [{"name": "x", "value": 1, "ts": 0}, {"name": "y", "value": 2, "ts": 0}]
    events = [{"k": f"k{i % 5}", "ts": i} for i in range(20)]
    job, out = connected_job(Writer(), events, rules)
    got = ed.run_local(job, batch_size=100).collected(out)
    assert got[:2] == [("rule", "x"), ("rule", "y")]  # rules come first within the round
    assert got[2:] == [("event", e["k"], 1, [("x", 1), ("y", 2)]) for e in events]


class WritesInOnEvent(ed.KeyedBroadcastProcessFunction):
    table = ed.BroadcastState("table")

    def on_broadcast(self, rule, ctx):
        self.table.put("x", 1)

    def on_event(self, event, ctx):
        self.table.put("y", event["ts"])  # not allowed: broadcast state is read-only here


class WritesInOnTimer(Writer):
    def on_event(self, event, ctx):
        ctx.timers.register_event_time(ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        self.table.remove("x")


@pytest.mark.parametrize("fn, where", [(WritesInOnEvent(), "for record"),
                                       (WritesInOnTimer(), "in on_timer")])
def test_writing_broadcast_state_outside_on_broadcast_is_a_clear_error(fn, where) -> None:
    rules = [{"name": "x", "value": 1, "ts": 0}]
    job, _ = connected_job(fn, [{"k": "alpha", "ts": 5}], rules)
    with pytest.raises(ReadOnlyStateError) as info:
        ed.run_local(job)
    message = str(info.value)
    assert "BroadcastState 'table' is read-only" in message
    assert "on_broadcast" in message  # says where writes belong
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert f"in operator '{type(fn).__name__}' on key 'alpha'" in notes and where in notes
