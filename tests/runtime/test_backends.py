"""The same job gives the same results on the memory and the RocksDB backend."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.local import LocalRunner
from eddies.state import RocksDbStateBackend

THRESHOLDS = ed.OutputTag("over-threshold")


class Profile(ed.KeyedBroadcastProcessFunction):
    """Every kind of state: value, list, map (with range reads), reducing, broadcast."""

    count = ed.ValueState("count", default=0)
    last3 = ed.ListState("last3")
    per_region = ed.MapState("per_region")  # (region, day) -> total
    biggest = ed.ReducingState("biggest", max)
    limits = ed.BroadcastState("limits")

    def on_broadcast(self, rule, ctx):
        self.limits.put(rule["region"], rule["limit"])

    def on_event(self, event, ctx):
        self.count.set(self.count.get() + 1)
        self.last3.update((self.last3.get() + [event["amount"]])[-3:])
        day = event["ts"] // 86_400_000
        key = (event["region"], day)
        self.per_region.put(key, self.per_region.get(key, 0) + event["amount"])
        self.biggest.add(event["amount"])
        limit = self.limits.get(event["region"])
        if limit is not None and event["amount"] > limit:
            ctx.output(THRESHOLDS, {"user": ctx.key, "id": event["id"]})
        ctx.timers.register_event_time(10**13)  # one summary per user at the end of input
        yield {"user": ctx.key, "id": event["id"], "count": self.count.get(),
               "last3": self.last3.get(), "biggest": self.biggest.get(),
               "region_total": sum(v for _, v in self.per_region.entries(
                   prefix=(event["region"],)))}

    def on_timer(self, timestamp, ctx):
        yield {"user": ctx.key, "summary": sorted(
            [list(k), v] for k, v in self.per_region.entries())}


def generate(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    events = [{"id": i, "user": f"u{rng.randrange(30)}", "region": rng.choice("nsew"),
               "ts": 1_700_000_000_000 + i * 60_000 - rng.randint(0, 30_000),
               "amount": rng.randint(1, 1_000)} for i in range(2_500)]
    rules = [{"region": r, "limit": 900, "ts": 0} for r in "nsew"]
    return events, rules


def reference(events: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    count: dict[str, int] = defaultdict(int)
    last3: dict[str, list[int]] = defaultdict(list)
    regions: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)
    biggest: dict[str, int] = {}
    main, over = [], []
    for e in events:
        u = e["user"]
        count[u] += 1
        last3[u] = (last3[u] + [e["amount"]])[-3:]
        key = (e["region"], e["ts"] // 86_400_000)
        regions[u][key] = regions[u].get(key, 0) + e["amount"]
        biggest[u] = max(biggest.get(u, e["amount"]), e["amount"])
        if e["amount"] > 900:
            over.append({"user": u, "id": e["id"]})
        main.append({"user": u, "id": e["id"], "count": count[u], "last3": last3[u],
                     "biggest": biggest[u],
                     "region_total": sum(v for k, v in regions[u].items() if k[0] == e["region"])})
    summaries = [{"user": u, "summary": sorted([list(k), v] for k, v in r.items())}
                 for u, r in regions.items()]
    return main, over, summaries


def build(events, rules) -> tuple[ed.Job, ed.sinks.CollectSink, ed.sinks.CollectSink]:
    job = ed.Job("profiles")
    main, over = ed.sinks.collect("main"), ed.sinks.collect("over")
    # The rules source is read in the same first round as the first events, before them.
    rule_stream = job.source(ed.sources.iterable(rules), timestamp="ts", name="rules")
    out = (job.source(ed.sources.iterable(events), timestamp="ts", name="events",
                      watermarks=ed.BoundedOutOfOrderness(60_000))
           .key_by("user").connect(rule_stream.broadcast()).process(Profile()))
    out.sink(main)
    out.side_output(THRESHOLDS).sink(over)
    return job, main, over


@pytest.fixture(params=["memory", "rocksdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory" if request.param == "memory" else f"rocksdb:{tmp_path / 'state'}"


@pytest.mark.parametrize("checkpoint_interval", [100_000, 300])
def test_same_results_on_every_backend(backend: str, checkpoint_interval: int) -> None:
    events, rules = generate(41)
    job, main, over = build(events, rules)
    result = ed.run_local(job, backend, checkpoint_interval=checkpoint_interval)
    exp_main, exp_over, exp_summaries = reference(events)
    got = result.collected(main)
    assert [o for o in got if "summary" not in o] == exp_main
    assert sorted((o for o in got if "summary" in o), key=lambda o: o["user"]) == sorted(
        exp_summaries, key=lambda o: o["user"])
    assert result.collected(over) == exp_over
    assert len(exp_over) > 10


def test_rocksdb_state_survives_reopen_and_only_new_input_is_processed(tmp_path: Path) -> None:
    """Run over half the input (a failure stops it), reopen, and finish: the same results as
    one uninterrupted run, with the state read back from RocksDB."""
    events, rules = generate(43)

    class Stop(Exception):
        pass

    def stop_at(limit: int):
        def check(e):
            if e["id"] == limit:
                raise Stop()
            return True
        return check

    job = ed.Job("profiles")
    main = ed.sinks.collect("main")
    rule_stream = job.source(ed.sources.iterable(rules), timestamp="ts", name="rules")
    (job.source(ed.sources.iterable(events), timestamp="ts", name="events",
                watermarks=ed.BoundedOutOfOrderness(60_000))
        .filter(stop_at(1_234), name="stopper")
        .key_by("user").connect(rule_stream.broadcast()).process(Profile()).sink(main))
    spec = f"rocksdb:{tmp_path / 'state'}"
    with pytest.raises(ed.errors.UserFunctionError):
        ed.run_local(job, spec, checkpoint_interval=200)
    first = list(main.items)

    job2, main2, over2 = build(events, rules)
    result = ed.run_local(job2, spec, checkpoint_interval=200)
    exp_main, exp_over, _ = reference(events)
    got = [o for o in result.collected(main2) if "summary" not in o]
    assert result.stats.resumed
    assert got == exp_main[len(exp_main) - len(got):]  # picks up where the checkpoint was
    assert 0 < len(exp_main) - len(got) <= len(first)
    # The rules were read before the checkpoint and are not read again: the limits come back
    # from the checkpointed BroadcastState.
    resumed_from = got[0]["id"]
    assert result.collected(over2) == [o for o in exp_over if o["id"] >= resumed_from]
    assert result.collected(over2)


def test_a_config_error_leaves_the_rocksdb_dir_unlocked(tmp_path: Path) -> None:
    job = ed.Job("no-sink")
    job.source(ed.sources.iterable([1]))
    with pytest.raises(ConfigError, match="no sink") as info:
        LocalRunner(job, f"rocksdb:{tmp_path / 'st'}")
    assert info.value is not None  # the traceback (and the runner) are still alive here
    RocksDbStateBackend(tmp_path / "st").close()  # and yet the dir opens
