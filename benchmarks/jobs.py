"""The reference jobs, each as an eddies job and as a plain-Python dict loop.

1. running count+sum per key (ValueState); results emitted per key at the end of input.
2. tumbling 60 s windows, count+sum per key and window (output-heavy: every window emits).
3. job 1 with a 10-minute event-time TTL on the state.

The plain versions parse the same CSV and follow the same semantics (watermark = max ts -
5 s - 1, advanced every ``batch`` events as the runtime does), so results must be equal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import eddies as ed

DELAY = 5_000
TTL_MS = 600_000
END = 2**62  # an event-time timer that fires only at the end of input


class RunningTotals(ed.KeyedProcessFunction):
    totals = ed.ValueState("totals")

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
            ctx.timers.register_event_time(END)
        else:
            acc[0] += 1
            acc[1] += event["amount"]
            self.totals.set(acc)

    def on_timer(self, timestamp, ctx):
        acc = self.totals.get()
        if acc is not None:
            yield (ctx.key, acc[0], round(acc[1], 2))


class RunningTotalsTtl(RunningTotals):
    totals = ed.ValueState("totals", ttl=ed.Ttl(ms=TTL_MS))

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            acc = [0, 0.0]
            ctx.timers.register_event_time(END)
        acc[0] += 1
        acc[1] += event["amount"]
        self.totals.set(acc)


class SumAgg:
    def create(self):
        return [0, 0.0]

    def add(self, acc, event):
        acc[0] += 1
        acc[1] += event["amount"]
        return acc

    def merge(self, a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, acc):
        return [acc[0], round(acc[1], 2)]


def _source(job: ed.Job, path: Path) -> ed.KeyedStream:
    return (job.source(ed.sources.csv(path, types={"ts": int, "amount": float}),
                       timestamp="ts", watermarks=ed.BoundedOutOfOrderness(DELAY))
            .key_by("key"))


def eddies_job(name: str, path: Path) -> tuple[ed.Job, Any]:
    job = ed.Job(name)
    out = ed.sinks.collect()
    keyed = _source(job, path)
    if name == "running":
        keyed.process(RunningTotals()).sink(out)
    elif name == "ttl":
        keyed.process(RunningTotalsTtl()).sink(out)
    else:
        keyed.window(ed.Tumbling(60_000)).aggregate(SumAgg()).sink(out)
    return job, out


def normalize(name: str, results: list[Any]) -> Any:
    if name == "tumbling":
        return sorted((r["key"], r["start"], r["value"][0], r["value"][1]) for r in results)
    return sorted((k, c, s) for k, c, s in results)


# -- plain Python ------------------------------------------------------------------------------
def _lines(path: Path):
    with open(path) as f:
        next(f)
        yield from f


def plain_running(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    for line in _lines(path):
        key, ts, amount = line.split(",")
        int(ts)
        acc = get(key)
        if acc is None:
            totals[key] = [1, float(amount)]
        else:
            acc[0] += 1
            acc[1] += float(amount)
    return [(k, a[0], round(a[1], 2)) for k, a in totals.items()]


def plain_ttl(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    wm = -(2**63)
    max_ts = wm
    i = 0
    for line in _lines(path):
        key, ts, amount = line.split(",")
        ts = int(ts)
        acc = get(key)
        if acc is None or acc[2] <= wm:
            acc = totals[key] = [0, 0.0, 0]
        acc[0] += 1
        acc[1] += float(amount)
        acc[2] = ts + TTL_MS
        if ts > max_ts:
            max_ts = ts
        i += 1
        if i == batch:
            i = 0
            wm = max(wm, max_ts - DELAY - 1)
    return [(k, a[0], round(a[1], 2)) for k, a in totals.items() if a[2] > wm]


def plain_tumbling(path: Path, batch: int) -> list[Any]:
    windows: dict[int, dict[str, list]] = {}
    out = []
    wm = -(2**63)
    max_ts = wm
    i = 0
    for line in _lines(path):
        key, ts, amount = line.split(",")
        ts = int(ts)
        start = ts - ts % 60_000
        per_key = windows.get(start)
        if per_key is None:
            per_key = windows[start] = {}
        acc = per_key.get(key)
        if acc is None:
            per_key[key] = [1, float(amount)]
        else:
            acc[0] += 1
            acc[1] += float(amount)
        if ts > max_ts:
            max_ts = ts
        i += 1
        if i == batch:
            i = 0
            wm = max(wm, max_ts - DELAY - 1)
            for start in sorted(s for s in windows if s + 60_000 - 1 <= wm):
                for key, acc in windows.pop(start).items():
                    out.append({"key": key, "start": start, "end": start + 60_000,
                                "value": [acc[0], round(acc[1], 2)]})
    for start in sorted(windows):
        for key, acc in windows.pop(start).items():
            out.append({"key": key, "start": start, "end": start + 60_000,
                        "value": [acc[0], round(acc[1], 2)]})
    return out


PLAIN: dict[str, Callable[[Path, int], list[Any]]] = {
    "running": plain_running,
    "tumbling": plain_tumbling,
    "ttl": plain_ttl,
}
