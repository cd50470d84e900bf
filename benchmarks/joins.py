"""Join benchmarks: an interval join and an as-of join, each against a plain-Python twin.

4. interval join: impressions and clicks (``key,ts,amount`` CSV, one click per impression
   within +-6 s, plus chance matches), every pair with ``click.ts`` within +-5 s of the
   impression's.
5. as-of join: orders and profile updates (independent, same keys), each order with the
   latest update at or before it (``how="left"``: orders with none too).

Both inputs of a job are read as the local runner reads them and follow the same semantics
(watermark = min of the two sides' ``max ts - 5 s - 1``; no event is late by construction),
so the results must be equal; they are compared by digest. The plain twins are the lean
streaming loops a user would write: rows as dicts from ``csv.DictReader``, buffers in dicts
of lists, pruned as the watermark passes, a heap of pending orders for the as-of join.

``python -m benchmarks --joins`` runs them (every run a process of its own, see
``benchmarks/one.py``); ``python -m benchmarks.joins --job interval --impl memory ...`` is one
timed run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import heapq
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from bisect import bisect_right, insort
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import eddies as ed

T0 = 1_700_000_000_000
DELAY = 5_000  # each side's out-of-orderness bound, and the watermarks'
LOWER, UPPER = -5_000, 5_000  # the interval join's bounds
BATCH = 2_000
JOBS = {"interval": "4 interval join +-5 s", "asof": "5 as-of join (left)"}
ROOT = Path(__file__).resolve().parents[1]


# -- input ---------------------------------------------------------------------------------
def _write(path: Path, rows: list[tuple[int, str, int]], rng: random.Random) -> None:
    """Rows ``(base ts, key, cents)`` sorted by base ts, each ts shifted back by up to
    ``DELAY``: no event trails the highest timestamp before it by more than the bound."""
    rows.sort()
    with open(path, "w") as f:
        f.write("key,ts,amount\n")
        for base, key, cents in rows:
            f.write(f"{key},{base - rng.randint(0, DELAY)},{cents / 100}\n")


def generate(workdir: Path, n: int, keys: int, seed: int = 42) -> dict[str, tuple[Path, Path]]:
    """Both jobs' inputs, ``n`` events a side over ``keys`` keys, one event per ms of base
    time (so ~10 events per key and side at 1M events and 100k keys)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    keys = min(keys, n) or 1
    impressions, clicks, orders, updates = [], [], [], []
    for i in range(n):
        key = f"user{rng.randrange(keys)}"
        base = T0 + i
        impressions.append((base, key, rng.randint(1, 10_000)))
        clicks.append((base + rng.randint(-6_000, 6_000), key, rng.randint(1, 10_000)))
        orders.append((base, f"user{rng.randrange(keys)}", rng.randint(1, 10_000)))
        updates.append((base, f"user{rng.randrange(keys)}", rng.randint(1, 10_000)))
    paths = {"interval": (workdir / f"impressions-{n}.csv", workdir / f"clicks-{n}.csv"),
             "asof": (workdir / f"orders-{n}.csv", workdir / f"updates-{n}.csv")}
    for path, rows in zip([*paths["interval"], *paths["asof"]],
                          [impressions, clicks, orders, updates], strict=True):
        _write(path, rows, rng)
    return paths


# -- eddies --------------------------------------------------------------------------------
def _pair(a: dict[str, Any], b: dict[str, Any] | None) -> tuple[Any, ...]:
    if b is None:
        return (a["key"], a["ts"], a["amount"], None, None)
    return (a["key"], a["ts"], a["amount"], b["ts"], b["amount"])


def eddies_job(name: str, left: Path, right: Path) -> tuple[ed.Job, Any]:
    job = ed.Job(f"join-{name}")
    out = ed.sinks.collect()
    wm = ed.BoundedOutOfOrderness(DELAY)
    types = {"ts": int, "amount": float}
    a = job.source(ed.sources.csv(left, types=types), timestamp="ts", watermarks=wm,
                   name="left").key_by("key")
    b = job.source(ed.sources.csv(right, types=types), timestamp="ts", watermarks=wm,
                   name="right").key_by("key")
    if name == "interval":
        a.interval_join(b, lower=LOWER, upper=UPPER, fn=_pair, name="join").sink(out)
    else:
        a.join_asof(b, how="left", fn=_pair, name="join").sink(out)
    return job, out


# -- plain Python --------------------------------------------------------------------------
def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row["ts"] = int(row["ts"])
            row["amount"] = float(row["amount"])
            yield row


def _batches(left: Path, right: Path, batch: int) -> Iterator[tuple[int, list[dict]]]:
    """``(side, rows)`` batches, alternating between the sides as the local runner reads."""
    readers = [_rows(left), _rows(right)]
    live = [0, 1]
    while live:
        for side in list(live):
            rows = list(islice(readers[side], batch))
            if len(rows) < batch:
                live.remove(side)
            if rows:
                yield side, rows


def plain_interval(left: Path, right: Path, batch: int) -> list[Any]:
    buffers: tuple[dict[str, list], dict[str, list]] = ({}, {})
    out = []
    append = out.append
    high = [-(2**63), -(2**63)]
    wm = -(2**63)
    lower, upper = LOWER, UPPER
    for side, rows in _batches(left, right, batch):
        mine, other = buffers[side], buffers[1 - side]
        # An entry of the other side no event of this one can match any more: a right one
        # at t once the watermark reaches t - lower, a left one at t + upper.
        stale = -lower if side == 0 else upper
        top = high[side]
        for row in rows:
            key = row["key"]
            ts = row["ts"]
            if ts > top:
                top = high[side] = ts
                wm = min(high) - DELAY - 1
            entry = (ts, row)
            lst = mine.get(key)
            if lst is None:
                mine[key] = [entry]
            else:
                lst.append(entry)
            theirs = other.get(key)
            if theirs:
                if theirs[0][0] + stale <= wm:
                    theirs = other[key] = [e for e in theirs if e[0] + stale > wm]
                if side == 0:
                    lo, hi = ts + lower, ts + upper
                    for t, r in theirs:
                        if lo <= t <= hi:
                            append((key, ts, row["amount"], t, r["amount"]))
                else:
                    lo, hi = ts - upper, ts - lower
                    for t, a in theirs:
                        if lo <= t <= hi:
                            append((key, t, a["amount"], ts, row["amount"]))
    return out


def plain_asof(left: Path, right: Path, batch: int) -> list[Any]:
    versions: dict[str, list] = {}  # key -> sorted [(ts, seq, row)]
    pending: list[tuple[int, int, dict]] = []  # heap of orders (ts, seq, row)
    out = []
    append = out.append
    high = [-(2**63), -(2**63)]
    wm = -(2**63)
    seq = 0
    get = versions.get

    def fire(upto: int) -> None:
        while pending and pending[0][0] <= upto:
            ts, _, row = heapq.heappop(pending)
            key = row["key"]
            vs = get(key)
            i = bisect_right(vs, (ts, seq + 1)) if vs else 0
            if i:
                t, _, r = vs[i - 1]
                if i > 1:
                    del vs[:i - 1]  # no later order can use an older version
                append((key, ts, row["amount"], t, r["amount"]))
            else:
                append((key, ts, row["amount"], None, None))

    for side, rows in _batches(left, right, batch):
        top = high[side]
        for row in rows:
            ts = row["ts"]
            seq += 1
            if side == 0:
                heapq.heappush(pending, (ts, seq, row))
            else:
                vs = get(row["key"])
                if vs is None:
                    versions[row["key"]] = [(ts, seq, row)]
                else:
                    insort(vs, (ts, seq, row))
            if ts > top:
                top = high[side] = ts
                new = min(high) - DELAY - 1
                if new > wm:
                    wm = new
                    fire(wm)
    fire(2**63)
    return out


PLAIN: dict[str, Callable[[Path, Path, int], list[Any]]] = {
    "interval": plain_interval, "asof": plain_asof}


def digest(results: list[Any]) -> str:
    return hashlib.sha256(json.dumps(sorted(results, key=repr)).encode()).hexdigest()


# -- runs ----------------------------------------------------------------------------------
def one(name: str, impl: str, left: Path, right: Path, workdir: Path,
        checkpoint_interval: int = 10_000) -> dict[str, Any]:
    """One timed run: elapsed seconds, results and their digest."""
    if impl == "plain":
        t = time.perf_counter()
        results = PLAIN[name](left, right, BATCH)
        elapsed = time.perf_counter() - t
    else:
        job, out = eddies_job(name, left, right)
        state: Any = "memory"
        state_dir = workdir / f"state-join-{name}"
        if impl == "rocksdb":
            shutil.rmtree(state_dir, ignore_errors=True)
            state = f"rocksdb:{state_dir}"
        t = time.perf_counter()
        ed.run_local(job, state, checkpoint_interval=checkpoint_interval, batch_size=BATCH)
        elapsed = time.perf_counter() - t
        results = [list(r) for r in out.items]
        shutil.rmtree(state_dir, ignore_errors=True)
    results = [list(r) for r in results]
    return {"elapsed_s": elapsed, "results": len(results), "digest": digest(results)}


def measure(workdir: Path, n: int, keys: int, runs: int, backends: list[str],
            checkpoint_interval: int = 10_000) -> tuple[list[dict[str, Any]], bool]:
    """Every job, ``runs`` rounds of (plain, each backend), each run a process of its own;
    returns the rows and whether every run's results equalled the plain twin's."""
    paths = generate(workdir / "joins", n, keys)
    rows, ok = [], True
    for name, (left, right) in paths.items():
        by_impl: dict[str, list[dict[str, Any]]] = {impl: [] for impl in ["plain", *backends]}
        for _ in range(runs):
            for impl, done in by_impl.items():
                args = [sys.executable, "-m", "benchmarks.joins", "--job", name, "--impl",
                        impl, "--left", str(left), "--right", str(right), "--workdir",
                        str(workdir), "--checkpoint-interval", str(checkpoint_interval)]
                child = subprocess.run(args, cwd=ROOT, text=True, capture_output=True)
                if child.returncode != 0 or not child.stdout.strip():
                    raise SystemExit(f"{' '.join(args[1:])} failed:\n{child.stderr}")
                done.append(json.loads(child.stdout.strip().splitlines()[-1]))
        events = 2 * n
        plain_eps = [events / r["elapsed_s"] for r in by_impl["plain"]]
        expected = {r["digest"] for r in by_impl["plain"]}
        for backend in backends:
            eps = [events / r["elapsed_s"] for r in by_impl[backend]]
            equal = len(expected) == 1 and {r["digest"] for r in by_impl[backend]} == expected
            ok = ok and equal
            rows.append({
                "job": JOBS[name], "backend": backend, "events": events, "runs": runs,
                "eddies_eps_min": min(eps), "eddies_eps_median": statistics.median(eps),
                "plain_eps_min": min(plain_eps),
                "plain_eps_median": statistics.median(plain_eps),
                "ratio_median": statistics.median(eps) / statistics.median(plain_eps),
                "ratio_min": min(eps) / min(plain_eps),
                "results": by_impl[backend][0]["results"], "results_equal": equal,
            })
            r = rows[-1]
            print(f"{r['job']:<22} {backend:<8} eddies {r['eddies_eps_median']:>10,.0f}/s "
                  f"(min {r['eddies_eps_min']:,.0f})  plain {r['plain_eps_median']:>10,.0f}/s "
                  f"(min {r['plain_eps_min']:,.0f})  ratio {r['ratio_median']:.2f}  "
                  f"results {r['results']:,}  equal={equal}", flush=True)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.joins", description=__doc__)
    parser.add_argument("--job", required=True, choices=sorted(PLAIN))
    parser.add_argument("--impl", required=True, choices=["plain", "memory", "rocksdb"])
    parser.add_argument("--left", type=Path, required=True)
    parser.add_argument("--right", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(json.dumps(one(args.job, args.impl, args.left, args.right, args.workdir,
                         args.checkpoint_interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
