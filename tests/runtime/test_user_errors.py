"""Exceptions in user code fail the job with operator, key and record; a fixed job resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import UserFunctionError
from eddies.runtime.failures import error_lines

N = 5_000
POISON = 3_217  # the id the buggy job chokes on


def write_input(path: Path) -> list[dict[str, Any]]:
    rng = random.Random(31)
    events = [{"id": i, "user": f"u{rng.randrange(60)}", "ts": 1_000_000 + i * 20 -
               rng.randint(0, 1_000), "amount": rng.randint(1, 500)} for i in range(N)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


class Scorer(ed.KeyedProcessFunction):
    """Running count and sum per user, plus a per-user summary when input ends."""

    count = ed.ValueState("count", default=0)
    total = ed.ValueState("total", default=0)
    buggy = False

    def on_event(self, event, ctx):
        if self.buggy and event["id"] == POISON:
            raise ZeroDivisionError("division by zero")
        self.count.set(self.count.get() + 1)
        self.total.set(self.total.get() + event["amount"])
        ctx.timers.register_event_time(10**12)
        yield {"user": ctx.key, "id": event["id"], "count": self.count.get(),
               "total": self.total.get()}

    def on_timer(self, timestamp, ctx):
        yield {"user": ctx.key, "final": [self.count.get(), self.total.get()]}


def build(source: Path, output: Path, buggy: bool, extra: ed.sinks.Sink | None = None) -> ed.Job:
    fn = Scorer()
    fn.buggy = buggy
    job = ed.Job("scores")
    results = (job.source(ed.sources.jsonl(source), timestamp="ts",
                          watermarks=ed.BoundedOutOfOrderness(1_000))
               .key_by("user").process(fn))
    results.sink(ed.sinks.jsonl(output))
    if extra is not None:
        results.sink(extra)
    return job


def reference(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    totals: dict[str, int] = {}
    out = []
    for e in events:
        u = e["user"]
        counts[u] = counts.get(u, 0) + 1
        totals[u] = totals.get(u, 0) + e["amount"]
        out.append({"user": u, "id": e["id"], "count": counts[u], "total": totals[u]})
    return out


def test_user_exception_fails_the_job_then_the_fixed_job_resumes(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    events = write_input(source)
    output = tmp_path / "out.jsonl"
    state = f"rocksdb:{tmp_path / 'state'}"
    poison = events[POISON]

    with pytest.raises(UserFunctionError) as info:
        ed.run_local(build(source, output, buggy=True), state, checkpoint_interval=400,
                     batch_size=100)
    message = str(info.value)
    assert "operator 'Scorer'" in message
    assert f"on key {poison['user']!r}" in message
    assert f"'id': {POISON}" in message  # the record
    assert "ZeroDivisionError: division by zero" in message
    assert "resume" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)

    extra = ed.sinks.collect("this-run")
    result = ed.run_local(build(source, output, buggy=False, extra=extra), state,
                          checkpoint_interval=400, batch_size=100)
    assert result.stats.resumed
    assert result.stats.events_in == N
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    expected = reference(events)
    finals = {o["user"]: o["final"] for o in lines if "final" in o}
    assert [o for o in lines if "final" not in o] == expected  # exactly once, in order
    assert finals == {u: [c, t] for u, c, t in _finals(expected)}
    # The resumed run started from the last checkpoint before the poison record: it produced
    # the records from there on, not everything.
    this_run = [o["id"] for o in result.collected(extra) if "id" in o]
    assert this_run == list(range(this_run[0], N))
    assert POISON - 400 - 100 <= this_run[0] <= POISON


def _finals(expected: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    last: dict[str, dict[str, Any]] = {}
    for o in expected:
        last[o["user"]] = o
    return [(u, o["count"], o["total"]) for u, o in last.items()]


def test_map_exception_names_the_operator_and_record() -> None:
    job = ed.Job("parse")
    (job.source(ed.sources.iterable([{"v": "1"}, {"v": "2"}, {"v": "x"}]))
        .map(lambda e: int(e["v"]), name="parse-int").sink(ed.sinks.collect()))
    with pytest.raises(UserFunctionError, match=r"operator 'parse-int' failed for record "
                       r"\{'v': 'x'\}.*ValueError: invalid literal"):
        ed.run_local(job)


@pytest.mark.parametrize("kind", ["filter", "flat_map"])
def test_stateless_operator_exceptions_fail_the_job(kind: str) -> None:
    job = ed.Job("stateless-fail")
    src = job.source(ed.sources.iterable([1, 2, 0]))
    getattr(src, kind)(lambda x: [10 // x], name=f"my-{kind}").sink(ed.sinks.collect())
    with pytest.raises(UserFunctionError, match=f"operator 'my-{kind}' failed for record 0"):
        ed.run_local(job)


def test_timer_exception_names_operator_and_key() -> None:
    class BadTimer(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            ctx.timers.register_event_time(ctx.timestamp + 10)

        def on_timer(self, timestamp, ctx):
            raise KeyError("missing-thing")

    job = ed.Job("bad-timer")
    (job.source(ed.sources.iterable([{"k": "alpha", "ts": 5}]), timestamp="ts")
        .key_by("k").process(BadTimer()).sink(ed.sinks.collect()))
    with pytest.raises(UserFunctionError, match=r"operator 'BadTimer' on key 'alpha' failed "
                       r"in on_timer at 15: KeyError: 'missing-thing'"):
        ed.run_local(job)


def test_open_exception_names_the_operator() -> None:
    class BadOpen(ed.KeyedProcessFunction):
        def open(self):
            raise OSError("model file missing")

        def on_event(self, event, ctx):
            yield event

    job = ed.Job("bad-open")
    job.source(ed.sources.iterable([{"k": 1}])).key_by("k").process(BadOpen()).sink(
        ed.sinks.collect())
    with pytest.raises(UserFunctionError, match=r"operator 'BadOpen' failed in open\(\): "
                       r"OSError: model file missing"):
        ed.run_local(job)


def test_error_lines_show_the_users_frames_not_the_runtimes() -> None:
    class BadTimer(ed.KeyedProcessFunction):
        def on_event(self, event, ctx):
            ctx.timers.register_event_time(ctx.timestamp + 10)

        def on_timer(self, timestamp, ctx):
            return self.lookup(ctx.key)

        def lookup(self, key):
            return {}[key]  # the failing line

    job = ed.Job("bad-timer")
    (job.source(ed.sources.iterable([{"k": "alpha", "ts": 5}]), timestamp="ts")
        .key_by("k").process(BadTimer()).sink(ed.sinks.collect()))
    with pytest.raises(UserFunctionError) as info:
        ed.run_local(job)
    lines = error_lines(info.value)
    assert lines is not None
    assert lines[0] == f"error: {info.value}"
    source = Path(__file__).read_text().splitlines()
    failing = source.index("            return {}[key]  # the failing line") + 1
    calling = source.index("            return self.lookup(ctx.key)") + 1
    where = [line for line in lines[1:] if line.strip(" ^~")]  # without 3.11's carets
    assert where == [
        "  in user code (most recent call last):",
        f'    File "{__file__}", line {calling}, in on_timer',
        "      return self.lookup(ctx.key)",
        f'    File "{__file__}", line {failing}, in lookup',
        "      return {}[key]  # the failing line",
        "  (--debug prints the whole traceback)",
    ]
    full = "\n".join(error_lines(info.value, debug=True) or [])
    assert "Traceback (most recent call last):" in full and "eddies/runtime/" in full


class _Echo(ed.KeyedProcessFunction):
    def on_event(self, event, ctx):
        yield ctx.key


def _divide_key(event):
    return event["k"] + str(1 // event["d"])  # the key function's failing line


def _divide_ts(event):
    return event["ts"] // event["d"]  # the timestamp function's failing line


@pytest.mark.parametrize("shape", ["fused", "mapped"])
@pytest.mark.parametrize("bug", ["key", "timestamp"])
def test_key_and_timestamp_function_bugs_fail_the_job_naming_the_function(
    bug: str, shape: str
) -> None:
    """A key_by or timestamp= function raising anything but a bad record's errors (those, as
    the records without a key or with a bad timestamp here, go to dead letters) stops the
    job with one ``error:`` line naming the function, where it runs and the record, then
    the user's frame."""
    events = [{"k": "a", "ts": 10, "d": 1}, {"ts": 20, "d": 1},  # no key: a dead letter
              {"k": "b", "ts": "late", "d": 1},  # a bad timestamp: a dead letter
              {"k": "c", "ts": 30, "d": 0}, {"k": "d", "ts": 40, "d": 1}]
    if bug == "key":
        events[2]["ts"] = 25
    job = ed.Job("buggy-fn")
    stream = job.source(ed.sources.iterable(events, name="events"),
                        timestamp=_divide_ts if bug == "timestamp" else "ts")
    if shape == "mapped":  # not the source's batch path into the keyed operator
        stream = stream.map(lambda e: e, name="same")
    (stream.key_by(_divide_key if bug == "key" else "k", name="by-k")
        .process(_Echo(), name="keyed").sink(ed.sinks.collect()))
    with pytest.raises(UserFunctionError) as info:
        ed.run_local(job, batch_size=100)
    message = str(info.value)
    if bug == "key":
        assert message.startswith("key_by 'by-k' (key function '_divide_key', feeding "
                                  "operator 'keyed') failed for record ")
    else:
        assert message.startswith("source 'events' (timestamp function '_divide_ts') "
                                  "failed for record ")
    assert "{'k': 'c', 'ts': 30, 'd': 0}" in message
    assert "ZeroDivisionError: integer division or modulo by zero" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    lines = error_lines(info.value)
    assert lines is not None
    assert lines[0] == f"error: {info.value}"
    assert sum(line.startswith("error:") for line in lines) == 1
    failing = ("return event[\"k\"] + str(1 // event[\"d\"])  # the key function's failing line"
               if bug == "key" else
               "return event[\"ts\"] // event[\"d\"]  # the timestamp function's failing line")
    where = [line.strip() for line in lines[1:] if line.strip(" ^~")]
    assert where[0] == "in user code (most recent call last):"
    assert where[-3:] == [
        f'File "{__file__}", line {_line_of(failing)}, in {_divide_key.__name__ if bug == "key" else _divide_ts.__name__}',
        failing,
        "(--debug prints the whole traceback)",
    ]


def _line_of(text: str) -> int:
    return Path(__file__).read_text().splitlines().index(f"    {text}") + 1
