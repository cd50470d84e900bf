"""The floor of job 1: the least any runtime keeping eddies' contracts must do, as plain loops.

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
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from itertools import repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

import rocksdict

from benchmarks.data import generate
from benchmarks.jobs import DELAY, END, plain_running
from benchmarks.one import BATCH, digest
from eddies.state import InMemoryStateBackend, KeyedStateStore
from eddies.state.values import NEVER_STAMP, pack

LEVELS = ["dict_rows", "write_back", "checkpoints", "timers", "rocksdb"]
VARIANTS = ["lean", *LEVELS]
EDDIES = ["eddies", "eddies_rocksdb"]


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
    key_of = itemgetter("key")
    ts_of = itemgetter("ts")
    max_ts = -(2**63)
    watermark = max_ts
    since = 0
    with open(path) as f:
        next(f)
        while True:
            lines = f.readlines(BATCH * 26)  # about BATCH lines; float() takes the newline
            if not lines:
                break
            rows = [{"key": k, "ts": int(t), "amount": float(a)}
                    for k, t, a in map(str.split, lines, repeat(","))]
            keys = list(map(key_of, rows))
            stamps = list(map(ts_of, rows))
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

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _one(variant: str, path: Path, workdir: Path, interval: int) -> dict[str, Any]:
    """One timed run in this process."""
    if variant in EDDIES:
        import eddies as ed
        from benchmarks.jobs import eddies_job

        job, out = eddies_job("running", path)
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
        t = time.perf_counter()
        results = (plain_running(path, BATCH) if variant == "lean"
                   else contracts(path, variant, interval, workdir))
        elapsed = time.perf_counter() - t
    return {"elapsed_s": elapsed, "digest": digest("running", results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--child", choices=[*VARIANTS, *EDDIES], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.child, args.input, args.input.parent,
                              args.checkpoint_interval)))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="eddies-floor-"))
    path = generate(workdir / "events.csv", args.n, min(args.keys, args.n))
    names = [*VARIANTS, *EDDIES]
    times: dict[str, list[float]] = {name: [] for name in names}
    digests: set[str] = set()
    for _ in range(args.runs):
        for name in names:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.floor", "--child", name, "--input", str(path),
                 "--checkpoint-interval", str(args.checkpoint_interval)],
                capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            times[name].append(result["elapsed_s"])
            digests.add(result["digest"])
    lean = statistics.median(times["lean"])
    print(f"job 1, {args.n:,} events, {min(args.keys, args.n):,} keys, checkpoints every "
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
