"""Each stream operator against a plain-Python reference over generated, out-of-order input."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError


def generate(seed: int, n: int = 3_000) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"id": i, "user": f"u{rng.randrange(40)}", "region": rng.choice("nsew"),
             "ts": 1_000_000 + i * 50 - rng.randint(0, 3_000),
             "amount": round(rng.uniform(0, 100), 2),
             "tags": rng.sample(["a", "b", "c", "d"], rng.randint(0, 3))} for i in range(n)]


def run(job: ed.Job, **options: Any) -> ed.RunResult:
    return ed.run_local(job, **options)


def test_map_filter_flat_map_match_reference() -> None:
    events = generate(1)
    job = ed.Job("stateless")
    mapped, filtered, flat = ed.sinks.collect(), ed.sinks.collect(), ed.sinks.collect()
    src = job.source(ed.sources.iterable(events), timestamp="ts",
                     watermarks=ed.BoundedOutOfOrderness(3_000))
    src.map(lambda e: {"id": e["id"], "cents": round(e["amount"] * 100)}).sink(mapped)
    src.filter(lambda e: e["amount"] > 50 and e["region"] != "n").sink(filtered)
    src.flat_map(lambda e: [(e["id"], t) for t in e["tags"]]).sink(flat)
    # A generator function works as a flat_map too.
    gen = ed.sinks.collect("gen")

    def explode(e):
        yield from range(len(e["tags"]))

    src.flat_map(explode).sink(gen)
    result = run(job, batch_size=128)
    assert result.collected(mapped) == [
        {"id": e["id"], "cents": round(e["amount"] * 100)} for e in events]
    assert result.collected(filtered) == [
        e for e in events if e["amount"] > 50 and e["region"] != "n"]
    assert result.collected(flat) == [(e["id"], t) for e in events for t in e["tags"]]
    assert result.collected(gen) == [i for e in events for i in range(len(e["tags"]))]
    assert result.collected("gen") == result.collected(gen)  # by name, too
    n_out = (len(events) + len(result.collected(filtered)) + len(result.collected(flat))
             + len(result.collected(gen)))
    assert result.stats.events_in == len(events)
    assert result.stats.events_out == n_out


class RunningTotal(ed.KeyedProcessFunction):
    count = ed.ValueState("count", default=0)
    total = ed.ReducingState("total", lambda a, b: a + b)
    seen = ed.ListState("seen")

    def on_event(self, event, ctx):
        self.count.set(self.count.get() + 1)
        self.total.add(event["amount"])
        self.seen.add(event["id"])
        yield {"key": ctx.key, "count": self.count.get(), "total": self.total.get(),
               "n_seen": self.seen.length(), "ts": ctx.timestamp}


@pytest.mark.parametrize("key", ["user", "callable", "tuple"])
def test_key_by_and_process_keep_state_per_key(key: str) -> None:
    events = generate(2)
    keyfn: Any = {"user": "user", "callable": lambda e: e["user"].upper(),
                  "tuple": lambda e: (e["region"], int(e["user"][1:]) % 3)}[key]
    ref_key = {"user": lambda e: e["user"], "callable": lambda e: e["user"].upper(),
               "tuple": lambda e: (e["region"], int(e["user"][1:]) % 3)}[key]
    job = ed.Job("keyed")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(3_000))
        .key_by(keyfn).process(RunningTotal()).sink(out))
    got = run(job, batch_size=500).collected(out)

    expected = []
    counts: Counter[Any] = Counter()
    totals: dict[Any, float] = defaultdict(float)
    for e in events:
        k = ref_key(e)
        counts[k] += 1
        totals[k] = e["amount"] if counts[k] == 1 else totals[k] + e["amount"]
        expected.append({"key": k, "count": counts[k], "total": totals[k],
                         "n_seen": counts[k], "ts": e["ts"]})
    assert got == expected
    assert len(counts) > 3


def test_union_merges_every_record_of_every_input() -> None:
    events = generate(3)
    left, right = events[::2], events[1::2]
    extra = [{"id": -i, "user": "x", "region": "n", "ts": 1_000_000 + i, "amount": 1.0,
              "tags": []} for i in range(1, 50)]
    job = ed.Job("union")
    out = ed.sinks.collect()
    a = job.source(ed.sources.iterable(left), timestamp="ts")
    b = job.source(ed.sources.iterable(right), timestamp="ts")  # same default name: unique
    c = job.source(ed.sources.iterable(extra), timestamp="ts")
    a.union(b, c).key_by("user").process(RunningTotal()).sink(out)
    got = run(job, batch_size=100).collected(out)
    # Per key, counts run 1..n over the union: nothing lost or doubled.
    per_key: dict[str, list[int]] = defaultdict(list)
    for o in got:
        per_key[o["key"]].append(o["count"])
    expected_n = Counter(e["user"] for e in left + right + extra)
    assert {k: v for k, v in per_key.items()} == {
        k: list(range(1, n + 1)) for k, n in expected_n.items()}
    assert sorted(o["ts"] for o in got) == sorted(e["ts"] for e in left + right + extra)
    with pytest.raises(ConfigError, match="same Job"):
        a.union(ed.Job("other").source(ed.sources.iterable([])))


LARGE = ed.OutputTag("large")
ODD = ed.OutputTag("odd")
NOBODY = ed.OutputTag("nobody-reads-this")


class Splitter(ed.KeyedProcessFunction):
    def on_event(self, event, ctx):
        if event["amount"] > 90:
            ctx.output(LARGE, {"id": event["id"], "ts": ctx.timestamp})
        if event["id"] % 2:
            ctx.output(ODD, event["id"])
        ctx.output(NOBODY, 1)
        ctx.timers.register_event_time(ctx.timestamp + 1)
        yield event["id"]

    def on_timer(self, timestamp, ctx):
        ctx.output(LARGE, {"timer": timestamp})  # side outputs from timers too


def test_side_outputs_reach_each_reader_of_their_tag() -> None:
    events = generate(4)
    job = ed.Job("sides")
    main, large, odd, odd_again = (ed.sinks.collect(n) for n in ("main", "large", "odd", "odd2"))
    processed = (job.source(ed.sources.iterable(events), timestamp="ts",
                            watermarks=ed.BoundedOutOfOrderness(3_000))
                 .key_by("user").process(Splitter()))
    processed.sink(main)
    processed.side_output(LARGE).sink(large)
    processed.side_output(ODD).sink(odd)
    processed.side_output(ODD).map(lambda i: i).sink(odd_again)  # a second reader of ODD
    result = run(job, batch_size=250)
    assert result.collected(main) == [e["id"] for e in events]
    got_large = result.collected(large)
    assert [o for o in got_large if "id" in o] == [
        {"id": e["id"], "ts": e["ts"]} for e in events if e["amount"] > 90]
    timer_times = Counter(o["timer"] for o in got_large if "timer" in o)
    assert timer_times == Counter(t for _, t in {(e["user"], e["ts"] + 1) for e in events})
    assert result.collected(odd) == [e["id"] for e in events if e["id"] % 2]
    assert result.collected(odd_again) == result.collected(odd)
    assert result.stats.unrouted_side_outputs == len(events)  # counted, not an error


def test_side_output_only_on_process_results() -> None:
    job = ed.Job("bad-side")
    with pytest.raises(ConfigError, match="process"):
        job.source(ed.sources.iterable([1])).map(str).side_output(LARGE)


def test_sinks_receive_every_result_and_names_stay_unique() -> None:
    events = generate(5, 500)
    job = ed.Job("sinks")
    first, second = ed.sinks.collect(), ed.sinks.collect()  # both named "collect"
    src = job.source(ed.sources.iterable(events))
    src.map(lambda e: e["id"]).sink(first)
    src.map(lambda e: -e["id"]).sink(second)
    result = run(job)
    assert result.collected(first) == [e["id"] for e in events]
    assert result.collected(second) == [-e["id"] for e in events]
    assert result.collected("collect") == result.collected(first)
    assert result.collected("collect-2") == result.collected(second)
    with pytest.raises(ConfigError, match="two operators named"):
        src.sink(ed.sinks.collect(), name="collect")  # an explicit duplicate name is an error
    with pytest.raises(ConfigError, match="no sink"):
        ed.run_local(_no_sink_job())


def _no_sink_job() -> ed.Job:
    job = ed.Job("no-sink")
    job.source(ed.sources.iterable([1])).map(str)
    return job
