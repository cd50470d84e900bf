"""Memory: peak RSS of job 1 over 10M distinct keys on RocksDB with the default cache.

Run in a subprocess of its own (``python -m benchmarks.memory``), so that its peak RSS
(``resource.getrusage``) counts this job alone. The job is job 1 without the end-of-input
timer per key, so it measures what the state cache bounds; ``benchmarks.timers_memory`` adds
a pending timer per key. It emits nothing; the run checks that RocksDB ends up holding one
entry per key.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import eddies as ed
from eddies.state.rocksdb import RocksDbStateBackend

T0 = 1_700_000_000_000


class RunningTotalsNoTimer(ed.KeyedProcessFunction):
    """Job 1's state and updates, without the per-key end timer."""

    totals = ed.ValueState("totals")

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
        else:
            acc[0] += 1
            acc[1] += event["amount"]
            self.totals.set(acc)


def events(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"key": f"k{i}", "ts": T0 + i, "amount": (i % 1000) / 100}


def run(keys: int, state_dir: Path, checkpoint_interval: int) -> dict[str, Any]:
    shutil.rmtree(state_dir, ignore_errors=True)
    job = ed.Job("memory")
    (job.source(ed.sources.iterable(events(keys)), timestamp="ts")
        .key_by("key").process(RunningTotalsNoTimer()).sink(ed.sinks.collect()))
    t = time.perf_counter()
    result = ed.run_local(job, f"rocksdb:{state_dir}", checkpoint_interval=checkpoint_interval)
    elapsed = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with RocksDbStateBackend(state_dir) as db:
        stored = db.count("totals")
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "keys": keys,
        "events_per_s": result.stats.events_in / elapsed,
        "checkpoints": result.stats.checkpoints,
        "stored_keys": stored,
        "peak_rss_mib": peak_kib / 1024,
        "under_1_gib": peak_kib < 1024 * 1024,
        "cache_entries": "default (200,000 per state)",
    }


def parse_args(prog: str, description: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The options of a memory benchmark: ``--keys``, ``--state``, ``--checkpoint-interval``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m benchmarks.memory", __doc__, argv)
    out = run(args.keys, args.state, args.checkpoint_interval)
    print(json.dumps(out))
    return 0 if out["stored_keys"] == args.keys else 1


if __name__ == "__main__":
    sys.exit(main())
