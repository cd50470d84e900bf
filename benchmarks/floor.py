"""The floors of jobs 1 and 3: the least any runtime keeping eddies' contracts must do, as
plain loops.

``python -m benchmarks.floor`` times, in rounds of fresh processes over the same events,
the lean plain loop of job 1 (running count+sum per key, see ``jobs.py``), then the same
loop with each contract of the runtime added in turn, written as plainly as Python allows,
and eddies itself on the memory backend:

- ``lean``: ``line.split(",")``, state in a dict (the yardstick of ``python -m benchmarks``).
- ``dict_rows``: the events as records (a dict per row, its fields converted, read in
  batches of about 2,000 lines), keyed by a field, with the watermark kept per record.
- ``write_back``: each write also stores the value's stored form (an 8-byte expiry stamp
  and its msgpack bytes) among the key's dirty entries, as a write-back cache must for a
  checkpoint to hold the value as it was then (user code mutates the cached object).
- ``checkpoints``: every ``--checkpoint-interval`` events (10,000, as the benchmark), the
  dirty entries go into a table keyed by their stored keys (key group + encoded key).
- ``timers``: the job's output as the job makes it: a timer per key, fired at the end of
  input in stored-key order.
- ``rocksdb``: ``timers`` with the table in RocksDB (rocksdict with its default options,
  no WAL sync): each checkpoint's entries go in as one write batch, in key order.

Each loop's results must equal the lean loop's (compared by digest). What separates eddies
from ``timers`` is the runtime itself (operators, handles, timers, metrics, dead letters);
what separates ``timers`` from ``lean`` is what the contracts cost any implementation.
``rocksdb`` is the same floor for the RocksDB backend, and ``eddies_rocksdb`` eddies on it.

Every loop but ``lean`` runs with the cyclic GC's young-generation threshold at 100,000, as
the local runner sets it while it runs (Python's default, 700, makes jobs that keep state
walk it every few thousand events).

``--job ttl`` does the same for job 3 (job 1 with a 10-minute TTL, each run of activity
reported when it expires), in two levels: ``contracts``, all of the above with the expiries
fired in time order as the watermark passes them (``contracts_ttl``), and ``rocksdb``, the
same with the table in RocksDB; eddies runs the job with ``on_expire``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import insort
from collections import deque
from collections.abc import Iterator
from heapq import heappop, heappush
from itertools import repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

import rocksdict

from benchmarks.data import generate
from benchmarks.jobs import DELAY, END, TTL_MS, plain_running, plain_ttl
from benchmarks.one import BATCH, digest
from eddies.runtime.local import _GC_YOUNG
from eddies.state import InMemoryStateBackend, KeyedStateStore
from eddies.state.values import NEVER_STAMP, pack, stamp

LEVELS = ["dict_rows", "write_back", "checkpoints", "timers", "rocksdb"]
VARIANTS = ["lean", *LEVELS]
EDDIES = ["eddies", "eddies_rocksdb"]
TTL_LEVELS = ["contracts", "rocksdb"]


def contracts(path: Path, level: str, interval: int = 10_000,
              workdir: Path | None = None) -> list[Any]:
    """Job 1 with the contracts up to ``level`` (one of ``LEVELS``); ``rocksdb`` keeps its
    table in a new RocksDB dir under ``workdir``."""
    n = LEVELS.index(level)
    write_back, checkpoints, timed = n >= 1, n >= 2, n >= 3
    prefix_of = KeyedStateStore(InMemoryStateBackend()).prefix  # as the local runner's
    cache: dict[str, list] = {}
    get = cache.get
    dirty: dict[str, bytes] = {}
    prefixes: dict[str, bytes] = {}
    table: Any = {}
    if level == "rocksdb":
        if workdir is None:
            raise ValueError("the rocksdb level keeps its table under workdir: pass one")
        table = _RocksTable(workdir / "floor-rocksdb")
    timers: dict[str, int] = {}
    max_ts = -(2**63)
    watermark = max_ts
    since = 0
    for rows, keys, stamps in _batches(path):
        for j in range(len(rows)):
            key = keys[j]
            ts = stamps[j]
            if ts > max_ts:
                max_ts = ts
                watermark = max_ts - DELAY - 1
            acc = get(key)
            if acc is None:
                acc = cache[key] = [1, rows[j]["amount"]]
                if checkpoints:
                    prefixes[key] = prefix_of(key)
                if timed:
                    timers[key] = END
            else:
                acc[0] += 1
                acc[1] += rows[j]["amount"]
            if write_back:
                dirty[key] = NEVER_STAMP + pack(acc)
        since += len(rows)
        if since >= interval:
            since = 0
            if checkpoints:
                table.update(zip(map(prefixes.__getitem__, dirty), dirty.values(), strict=True))
            dirty.clear()
    assert watermark < END
    if checkpoints:
        table.update(zip(map(prefixes.__getitem__, dirty), dirty.values(), strict=True))
    if isinstance(table, _RocksTable):
        table.close()
    if timed:
        order = sorted(timers, key=prefixes.__getitem__)
        return [(k, cache[k][0], round(cache[k][1], 2)) for k in order]
    return [(k, a[0], round(a[1], 2)) for k, a in cache.items()]


def contracts_ttl(path: Path, level: str, interval: int = 10_000,
                  workdir: Path | None = None) -> list[Any]:
    """Job 3 with the contracts (``TTL_LEVELS``): dict records; each write's stored form
    (the value's stamp and msgpack bytes) among the dirty entries; a checkpoint of them
    every ``interval`` events (puts, and deletes of expired values); each run of activity
    reported when its value expires, in expiry-time order before the watermark passes it.
    The expiries are kept as eddies keeps them, as plainly as that can be written (a
    heap of entries per key would cost more): one list per key holding its value, stamp,
    queued time and stored key, and entries in buckets of 1,024 ms, one per key at its
    first stamp, which moves on to the key's later stamp when its bucket opens
    (:class:`_Expiries`). ``rocksdb`` keeps the table in a new RocksDB dir under
    ``workdir``."""
    if level not in TTL_LEVELS:
        raise ValueError(f"unknown level {level!r} of job 3; choose from {TTL_LEVELS}")
    prefix_of = KeyedStateStore(InMemoryStateBackend()).prefix  # as the local runner's
    cache: dict[str, list] = {}  # key -> [[count, sum], stamp, queued time, stored key]
    get = cache.get
    dirty: dict[bytes, Any] = {}  # stored key -> stored bytes, or None: deleted
    table: Any = _MemoryTable()
    if level == "rocksdb":
        if workdir is None:
            raise ValueError("the rocksdb level keeps its table under workdir: pass one")
        table = _RocksTable(workdir / "floor-rocksdb")
    out: list[Any] = []
    queue = _Expiries(cache, dirty, out)
    push = queue.push
    max_ts = -(2**63)
    watermark = max_ts
    due = 2**63  # the time of the next entry (the queue's)
    since = 0
    for rows, keys, times in _batches(path):
        for j in range(len(rows)):
            if watermark >= due:
                due = queue.expire(watermark)
            key = keys[j]
            ts = times[j]
            at = ts + TTL_MS
            slot = get(key)
            if slot is None:
                acc = [1, rows[j]["amount"]]
                slot = cache[key] = [acc, at, 2**64, prefix_of(key)]
            else:
                acc = slot[0]
                acc[0] += 1
                acc[1] += rows[j]["amount"]
                slot[1] = at
            dirty[slot[3]] = stamp(at) + pack(acc)
            if slot[2] > at:  # no entry at or before the stamp: queue one
                slot[2] = at
                push((at, slot[3], key, slot))
                if at < due:
                    due = at
            if ts > max_ts:
                max_ts = ts
                watermark = max_ts - DELAY - 1
        since += len(rows)
        if since >= interval:
            since = 0
            table.apply(dirty)
            dirty.clear()
    queue.expire(END)  # the end of input: every stamp is passed
    table.apply(dirty)
    table.close()
    return out


def _batches(path: Path) -> Iterator[tuple[list[dict[str, Any]], list[str], list[int]]]:
    """The events of ``path`` as records (a dict per row, its fields converted), in batches
    of about ``BATCH`` lines, each with its keys and timestamps."""
    key_of = itemgetter("key")
    ts_of = itemgetter("ts")
    with open(path) as f:
        next(f)
        while lines := f.readlines(BATCH * 26):  # about BATCH lines; float() takes the "\n"
            rows = [{"key": k, "ts": int(t), "amount": float(a)}
                    for k, t, a in map(str.split, lines, repeat(","))]
            yield rows, list(map(key_of, rows)), list(map(ts_of, rows))


JOBS = {"running": (LEVELS, plain_running, contracts),
        "ttl": (TTL_LEVELS, plain_ttl, contracts_ttl)}
"""Per job: its levels, its lean loop and its loop with the contracts."""


class _Expiries:
    """Entries ``(time, stored key, key, slot)`` in buckets of 1,024 ms, taken in order:
    a bucket is sorted when it opens, after its entries whose key holds a later stamp
    moved on to it; an entry whose time is not its slot's queued time is stale."""

    SHIFT = 10

    def __init__(self, cache: dict[str, list], dirty: dict[bytes, Any], out: list[Any]):
        self.cache = cache
        self.dirty = dirty
        self.out = out
        self.buckets: dict[int, list] = {}
        self.order: list[int] = []  # heap of bucket numbers
        self.cur: list = []  # the open bucket, sorted, taken up to pos
        self.pos = 0
        self.open = -1

    def push(self, entry: tuple) -> None:
        b = entry[0] >> self.SHIFT
        if b <= self.open:
            insort(self.cur, entry, lo=self.pos)
            return
        later = self.buckets.get(b)
        if later is None:
            self.buckets[b] = [entry]
            heappush(self.order, b)
        else:
            later.append(entry)

    def expire(self, watermark: int) -> int:
        """Report and delete every value expired at the watermark, in time order; returns
        the time of the next entry (2**63: none)."""
        cur, pos, shift, push = self.cur, self.pos, self.SHIFT, self.push
        while True:
            if pos == len(cur):
                if not self.order or self.order[0] << shift > watermark:
                    self.cur, self.pos = cur, pos
                    return self.order[0] << shift if self.order else 2**63
                b = heappop(self.order)
                kept = []
                for entry in self.buckets.pop(b):
                    time, slot = entry[0], entry[3]
                    if slot[2] is not time:
                        continue  # stale (the int object queued, as in eddies)
                    if slot[1] > time:  # rewritten since: on to its stamp
                        slot[2] = time = slot[1]
                        entry = (time, entry[1], entry[2], slot)
                        if time >> shift != b:
                            push(entry)
                            continue
                    kept.append(entry)
                kept.sort()
                cur, pos, self.open = kept, 0, b
                self.cur = cur
                continue
            time, prefix, key, slot = cur[pos]
            if time > watermark:
                self.pos = pos
                return time
            pos += 1
            if slot[2] is not time:
                continue
            if slot[1] > time:
                slot[2] = slot[1]
                self.pos = pos
                push((slot[1], prefix, key, slot))
                continue
            del self.cache[key]
            slot[2] = None  # its other entries, if any, are stale
            acc = slot[0]
            self.out.append((key, acc[0], round(acc[1], 2)))
            self.dirty[prefix] = None


class _MemoryTable(dict):
    """The memory backend's table: a dict of stored keys, puts and deletes applied in
    C-level passes."""

    def apply(self, dirty: dict[bytes, Any]) -> None:
        self.update(dirty)
        gone = [k for k, v in dirty.items() if v is None]
        deque(map(self.pop, gone), 0)

    def close(self) -> None:
        self.clear()


class _RocksTable:
    """A RocksDB table with a dict's ``update``: one write batch, in key order (memtable
    inserts in order cost about half of random ones, as in the RocksDB backend)."""

    def __init__(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        self.path = path
        self.db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))

    def update(self, pairs: Any) -> None:
        wb = rocksdict.WriteBatch(raw_mode=True)
        deque(starmap(wb.put, sorted(pairs, key=itemgetter(0))), 0)
        self.db.write(wb)

    def apply(self, dirty: dict[bytes, Any]) -> None:
        """Puts, and deletes where the value is None, as one write batch in key order."""
        wb = rocksdict.WriteBatch(raw_mode=True)
        for key in sorted(dirty):
            value = dirty[key]
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        self.db.write(wb)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _one(variant: str, path: Path, workdir: Path, interval: int,
         name: str = "running") -> dict[str, Any]:
    """One timed run of job ``name`` in this process."""
    if variant in EDDIES:
        import eddies as ed
        from benchmarks.jobs import eddies_job

        job, out = eddies_job(name, path)
        state = "memory"
        if variant == "eddies_rocksdb":
            state_dir = workdir / "floor-eddies"
            shutil.rmtree(state_dir, ignore_errors=True)
            state = f"rocksdb:{state_dir}"
        t = time.perf_counter()
        ed.run_local(job, state, checkpoint_interval=interval, batch_size=BATCH)
        elapsed = time.perf_counter() - t
        results = out.items
        if variant == "eddies_rocksdb":
            shutil.rmtree(workdir / "floor-eddies", ignore_errors=True)
    else:
        _, lean, loop = JOBS[name]
        if variant != "lean":  # the collector's setting of the local runner, as it runs
            gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        t = time.perf_counter()
        results = (lean(path, BATCH) if variant == "lean"
                   else loop(path, variant, interval, workdir))
        elapsed = time.perf_counter() - t
    return {"elapsed_s": elapsed, "digest": digest(name, results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--job", choices=sorted(JOBS), default="running",
                        help="running: job 1 (default); ttl: job 3")
    parser.add_argument("--child", choices=[*VARIANTS, *EDDIES, *TTL_LEVELS],
                        help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.child, args.input, args.input.parent,
                              args.checkpoint_interval, args.job)))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="eddies-floor-"))
    path = generate(workdir / "events.csv", args.n, min(args.keys, args.n))
    names = ["lean", *JOBS[args.job][0], *EDDIES]
    times: dict[str, list[float]] = {name: [] for name in names}
    digests: set[str] = set()
    for _ in range(args.runs):
        for name in names:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.floor", "--child", name, "--input", str(path),
                 "--checkpoint-interval", str(args.checkpoint_interval), "--job", args.job],
                capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name].append(result["elapsed_s"])
            digests.add(result["digest"])
    lean = statistics.median(times["lean"])
    print(f"job {1 if args.job == 'running' else 3}, {args.n:,} events, {min(args.keys, args.n):,} keys, checkpoints every "
          f"{args.checkpoint_interval:,} events, {args.runs} run(s), events/s median (min), "
          "ratio to lean:")
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:12} {args.n / median:>10,.0f}/s ({args.n / max(times[name]):,.0f})"
              f"  ratio {lean / median:.2f}")
    equal = len(digests) == 1
    print(f"results equal: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
