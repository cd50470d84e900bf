"""The reference jobs, each as an eddies job and as plain-Python loops.

1. running count+sum per key (ValueState); results emitted per key at the end of input.
2. tumbling 60 s windows, count+sum per key and window (output-heavy: every window emits).
3. job 1 with a 10-minute event-time TTL: a key idle for 10 min starts over, and each run of
   activity is reported (key, count, sum) when its state expires (``on_expire``), the last
   ones at the end of input. ``ttl_manual`` is the same job with no TTL: a timestamp in the
   value checked by hand against the watermark, and an end-of-input timer per key.

The plain loops are the leanest straightforward Python (``line.split(",")`` with the number
conversions, state in dicts); ``DICTREADER`` holds the same loops over ``csv.DictReader``
rows. They follow the runtime's semantics (watermark = max ts - 5 s - 1, advanced after every
event as the runtime does, whatever its batch size), so results must be equal.
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
    run of activity is reported when it expires (``on_expire``), the last ones when the
    input ends and the watermark passes every stamp."""

    totals = ed.ValueState("totals", ttl=ed.Ttl(ms=TTL_MS), on_expire=True)

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
        else:
            acc[0] += 1
            acc[1] += event["amount"]
            self.totals.set(acc)

    def on_expire(self, state, acc, ctx):
        return [(ctx.key, acc[0], round(acc[1], 2))]


class RunningTotalsManualTtl(ed.KeyedProcessFunction):
    """Job 3 with no TTL: the expiry is a timestamp kept in the value and checked by hand
    against the watermark, and an end-of-input timer per key reports the last run."""

    totals = ed.ValueState("totals")

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"], ctx.timestamp + TTL_MS])
            ctx.timers.register_event_time(END)
            return None
        if acc[2] <= ctx.watermark:
            out = [(ctx.key, acc[0], round(acc[1], 2))]
            self.totals.set([1, event["amount"], ctx.timestamp + TTL_MS])
            return out
        acc[0] += 1
        acc[1] += event["amount"]
        acc[2] = ctx.timestamp + TTL_MS
        self.totals.set(acc)
        return None

    def on_timer(self, timestamp, ctx):
        acc = self.totals.get()
        if acc is not None:
            yield (ctx.key, acc[0], round(acc[1], 2))


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
    elif name == "ttl_manual":
        keyed.process(RunningTotalsManualTtl()).sink(out)
    else:
        keyed.window(ed.Tumbling(60_000)).aggregate(SumAgg()).sink(out)
    return job, out


def normalize(name: str, results: list[Any]) -> Any:
    if name == "tumbling":
        return sorted((r["key"], r["start"], r["value"][0], r["value"][1]) for r in results)
    return sorted((k, c, s) for k, c, s in results)


# -- plain Python ------------------------------------------------------------------------------
# The lean loops: what a user would write for speed, each line split by hand (the input has no
# quoting) and state in a dict. The DictReader twins below read the same rows as dicts.


def plain_running(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    with open(path) as f:
        next(f)
        for line in f:
            key, _, amount = line.split(",")
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
    out = []
    wm = max_ts = -(2**63)
    with open(path) as f:
        next(f)
        for line in f:
            key, ts, amount = line.split(",")
            ts = int(ts)
            acc = get(key)
            if acc is None:
                totals[key] = [1, float(amount), ts + TTL_MS]
            elif acc[2] <= wm:
                out.append((key, acc[0], round(acc[1], 2)))
                totals[key] = [1, float(amount), ts + TTL_MS]
            else:
                acc[0] += 1
                acc[1] += float(amount)
                acc[2] = ts + TTL_MS
            if ts > max_ts:
                max_ts = ts
                wm = max_ts - DELAY - 1
    out.extend((k, a[0], round(a[1], 2)) for k, a in totals.items())
    return out


def plain_tumbling(path: Path, batch: int) -> list[Any]:
    with open(path) as f:
        next(f)
        return _tumbling(line.split(",") for line in f)


def _tumbling(rows: Any) -> list[Any]:
    windows: dict[int, dict[str, list]] = {}
    out = []
    max_ts = -(2**63)
    first_end = END  # the last ms of the earliest open window
    for key, ts, amount in rows:
        ts = int(ts)
        start = ts - ts % 60_000
        per_key = windows.get(start)
        if per_key is None:
            per_key = windows[start] = {}
            first_end = min(first_end, start + 60_000 - 1)
        acc = per_key.get(key)
        if acc is None:
            per_key[key] = [1, float(amount)]
        else:
            acc[0] += 1
            acc[1] += float(amount)
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


def _rows(path: Path):
    """Rows as dicts with ts and amount converted: the events a user's code sees."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["ts"] = int(row["ts"])
            row["amount"] = float(row["amount"])
            yield row


def dictreader_running(path: Path, batch: int) -> list[Any]:
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


def dictreader_ttl(path: Path, batch: int) -> list[Any]:
    totals: dict[str, list] = {}
    get = totals.get
    out = []
    wm = max_ts = -(2**63)
    for row in _rows(path):
        key = row["key"]
        ts = row["ts"]
        acc = get(key)
        if acc is None:
            totals[key] = [1, row["amount"], ts + TTL_MS]
        elif acc[2] <= wm:
            out.append((key, acc[0], round(acc[1], 2)))
            totals[key] = [1, row["amount"], ts + TTL_MS]
        else:
            acc[0] += 1
            acc[1] += row["amount"]
            acc[2] = ts + TTL_MS
        if ts > max_ts:
            max_ts = ts
            wm = max_ts - DELAY - 1
    out.extend((k, a[0], round(a[1], 2)) for k, a in totals.items())
    return out


def dictreader_tumbling(path: Path, batch: int) -> list[Any]:
    return _tumbling((r["key"], r["ts"], r["amount"]) for r in _rows(path))


PLAIN: dict[str, Callable[[Path, int], list[Any]]] = {
    "running": plain_running,
    "tumbling": plain_tumbling,
    "ttl": plain_ttl,
    "ttl_manual": plain_ttl,
}
"""The lean plain loop of each job (``ttl_manual`` computes what ``ttl`` does)."""
DICTREADER: dict[str, Callable[[Path, int], list[Any]]] = {
    "running": dictreader_running,
    "tumbling": dictreader_tumbling,
    "ttl": dictreader_ttl,
    "ttl_manual": dictreader_ttl,
}
"""The same loops over ``csv.DictReader`` rows (the second column)."""
