"""Restart: time to the first processed event on RocksDB state of 1M keys, vs a raw scan.

The state comes from job 1 (running count+sum, with its end-of-input timer per key) stopped
right after a checkpoint once every key has been seen: one ValueState entry and one timer per
key, plus source positions and watermarks. A restart then opens the dir, reads the checkpoint
metadata (one round trip), reads its first batch of input, preloads the timers, an
emptiness probe of the state and that batch's keys' values in reads issued together (one
round trip, ``eddies/runtime/preload.py``), and processes one event. The yardstick, in the
same run, is a raw ``rocksdict`` full scan of every column family of the same dir (open,
iterate, close), the least any recovery that reads its timers could do.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import rocksdict

import eddies as ed
from benchmarks.jobs import DELAY, RunningTotals
from eddies.runtime.local import LocalRunner, RunStats

T0 = 1_700_000_000_000
BATCH = 2_000


class _Stop(Exception):
    """Ends a run from on_progress."""


def generate_distinct(path: Path, n: int, extra: int) -> Path:
    """``n + extra`` events, the first ``n`` of them each with a key of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("key,ts,amount\n")
        for i in range(n + extra):
            f.write(f"k{i % n},{T0 + i},{(i % 1000) / 100}\n")
    return path


def _job(path: Path) -> ed.Job:
    job = ed.Job("restart")
    (job.source(ed.sources.csv(path, types={"ts": int, "amount": float}), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(DELAY))
        .key_by("key").process(RunningTotals()).sink(ed.sinks.collect()))
    return job


def build_state(path: Path, state_dir: Path, keys: int) -> None:
    """Run job 1 over the first ``keys`` events and stop at the checkpoint after them."""
    shutil.rmtree(state_dir, ignore_errors=True)
    interval = 100_000 if keys % 100_000 == 0 else keys

    def stop(stats: RunStats) -> None:
        if stats.checkpoints * interval >= keys:
            raise _Stop

    with contextlib.suppress(_Stop):
        ed.run_local(_job(path), f"rocksdb:{state_dir}", checkpoint_interval=interval,
                     batch_size=BATCH, on_progress=stop)


def restart_once(path: Path, state_dir: Path) -> dict[str, Any]:
    """Resume on ``state_dir``, stop after the first round; returns the startup metrics."""
    runner = LocalRunner(_job(path), f"rocksdb:{state_dir}", checkpoint_interval=10**9,
                            batch_size=BATCH, on_progress=_raise)
    with contextlib.suppress(_Stop):
        runner.run()
    startup = dict(runner.stats.startup)
    startup["timers"] = sum(len(op.timers.event) for op in runner.operators.values())
    return startup


def _raise(stats: RunStats) -> None:
    raise _Stop


def raw_scan(state_dir: Path) -> tuple[float, int]:
    """Open the dir with rocksdict and read every entry of every column family."""
    t = time.perf_counter()
    names = [n for n in rocksdict.Rdict.list_cf(str(state_dir)) if n != "default"]
    opts = {n: rocksdict.Options(raw_mode=True) for n in names}
    db = rocksdict.Rdict(str(state_dir), options=rocksdict.Options(raw_mode=True),
                         column_families=opts)
    entries = 0
    for name in names:
        cf = db.get_column_family(name)
        for _ in cf.items():
            entries += 1
        cf.close()
    db.close()
    return time.perf_counter() - t, entries


def measure(workdir: Path, keys: int = 1_000_000, runs: int = 3) -> dict[str, Any]:
    path = generate_distinct(workdir / f"restart-{keys}.csv", keys, 10 * BATCH)
    state_dir = workdir / "state-restart"
    build_state(path, state_dir, keys)
    restarts, scans = [], []
    entries = 0
    for _ in range(runs):  # interleaved, so both see the same page cache and machine load
        scan_s, entries = raw_scan(state_dir)
        scans.append(scan_s)
        restarts.append(restart_once(path, state_dir))
    shutil.rmtree(state_dir, ignore_errors=True)
    first = [r["total_s"] for r in restarts]
    best = min(restarts, key=lambda r: r["total_s"])
    return {
        "keys": keys,
        "entries_scanned": entries,
        "timers_loaded": best["timers"],
        "first_event_s_min": min(first),
        "first_event_s_median": statistics.median(first),
        "raw_scan_s_min": min(scans),
        "raw_scan_s_median": statistics.median(scans),
        "ratio_median": statistics.median(first) / statistics.median(scans),
        "phases_of_best": {k: best[k] for k in ("open_s", "restore_s", "preload_s",
                                                "first_event_s", "round_trips")},
    }
