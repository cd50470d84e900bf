"""The reference jobs, each as an eddies job and as a plain-Python dict loop.

1. running count+sum per key (ValueState); results emitted per key at the end of input.
2. tumbling 60 s windows, count+sum per key and window (output-heavy: every window emits).
3. job 1 with a 10-minute event-time TTL: a key idle for 10 min starts over (emitted).

The plain versions read the same CSV with ``csv.DictReader`` and the same conversions (the
"plain-Python dict loop" yardstick: rows as dicts, state in dicts) and follow the same
semantics (watermark = max ts - 5 s - 1, advanced after every event as the runtime does,
whatever its batch size), so results must be equal.
"""

from __future__ import annotations

import csv
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


class RunningTotalsTtl(ed.KeyedProcessFunction):
    """Job 1 with a 10-minute TTL: a key idle for 10 min of event time starts over, and each
    start is emitted (a TTL dedup), so results pin down exactly when state expired."""

    totals = ed.ValueState("totals", ttl=ed.Ttl(ms=TTL_MS))

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
            return [(ctx.key, ctx.timestamp)]
        acc[0] += 1
        acc[1] += event["amount"]
        self.totals.set(acc)
        return None


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
    if name == "ttl":
        return sorted(results)
    return sorted((k, c, s) for k, c, s in results)


# -- plain Python ------------------------------------------------------------------------------
def _rows(path: Path):
    """Rows as dicts with ts and amount converted: the events a user's code sees."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["ts"] = int(row["ts"])
            row["amount"] = float(row["amount"])
            yield row


def plain_running(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    for row in _rows(path):
        key = row["key"]
        acc = get(key)
        if acc is None:
            totals[key] = [1, row["amount"]]
        else:
            acc[0] += 1
            acc[1] += row["amount"]
    return [(k, a[0], round(a[1], 2)) for k, a in totals.items()]


def plain_ttl(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    starts = []
    wm = -(2**63)
    max_ts = wm
    for row in _rows(path):
        key = row["key"]
        ts = row["ts"]
        acc = get(key)
        if acc is None or acc[2] <= wm:
            totals[key] = [1, row["amount"], ts + TTL_MS]
            starts.append((key, ts))
        else:
            acc[0] += 1
            acc[1] += row["amount"]
            acc[2] = ts + TTL_MS
        if ts > max_ts:
            max_ts = ts
            wm = max_ts - DELAY - 1
    return starts


def plain_tumbling(path: Path, batch: int) -> list[Any]:
    windows: dict[int, dict[str, list]] = {}
    out = []
    max_ts = -(2**63)
    first_end = END  # the last ms of the earliest open window
    for row in _rows(path):
        key = row["key"]
        ts = row["ts"]
        start = ts - ts % 60_000
        per_key = windows.get(start)
        if per_key is None:
            per_key = windows[start] = {}
            first_end = min(first_end, start + 60_000 - 1)
        acc = per_key.get(key)
        if acc is None:
            per_key[key] = [1, row["amount"]]
        else:
            acc[0] += 1
            acc[1] += row["amount"]
        if ts > max_ts:
            max_ts = ts
            wm = max_ts - DELAY - 1
            if wm < first_end:
                continue
            for start in sorted(s for s in windows if s + 60_000 - 1 <= wm):
                for key, acc in windows.pop(start).items():
                    out.append({"key": key, "start": start, "end": start + 60_000,
                                "value": [acc[0], round(acc[1], 2)]})
            first_end = min(windows) + 60_000 - 1 if windows else END
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
