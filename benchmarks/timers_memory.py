"""Memory with timers: peak RSS of 10M distinct keys, each with a pending event-time timer,
on RocksDB with the default cache.

Run in a subprocess of its own (``python -m benchmarks.timers_memory``), so that its peak RSS
(``resource.getrusage``) counts this job alone. Each key's first event sets a ValueState and
registers a timer far beyond the input, so at the end of the input every key has one pending
(10M with the default ``--keys``); the end of input then fires them all, in time order. Memory
holds the nearest timers only (as many as ``cache_entries``), the rest stay in RocksDB. The
run checks that every timer fired once.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import eddies as ed
from benchmarks.memory import events, parse_args
from eddies.runtime.local import LocalRunner

LATER = 10**12  # timers due this far after their event: pending until the input ends


class TotalsWithTimer(ed.KeyedProcessFunction):
    """Job 1's state, plus an event-time timer per key that fires after the input."""

    totals = ed.ValueState("totals")

    def __init__(self) -> None:
        self.fired = 0
        self.pending_max = 0
        self.in_memory_max = 0
        self.operator: Any = None

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
            ctx.timers.register_event_time(ctx.timestamp + LATER)
        else:
            acc[0] += 1
            acc[1] += event["amount"]
            self.totals.set(acc)

    def on_timer(self, timestamp, ctx):
        self.fired += 1
        if self.fired % 100_000 == 1:
            self.in_memory_max = max(self.in_memory_max, self.operator.timers.in_memory())


def run(keys: int, state_dir: Path, checkpoint_interval: int) -> dict[str, Any]:
    shutil.rmtree(state_dir, ignore_errors=True)
    fn = TotalsWithTimer()
    job = ed.Job("timers-memory")
    (job.source(ed.sources.iterable(events(keys)), timestamp="ts")
        .key_by("key").process(fn).sink(ed.sinks.collect()))
    runner = LocalRunner(job, f"rocksdb:{state_dir}", checkpoint_interval=checkpoint_interval)
    op = fn.operator = next(iter(runner.operators.values()))

    def progress(stats: Any) -> None:
        fn.in_memory_max = max(fn.in_memory_max, op.timers.in_memory())

    runner.on_progress = progress
    t = time.perf_counter()
    result = runner.run()
    elapsed = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "keys": keys,
        "timers_pending_at_end_of_input": keys,
        "timers_fired": fn.fired,
        "timers_in_memory_max": fn.in_memory_max,
        "events_per_s": result.stats.events_in / elapsed,
        "elapsed_s": elapsed,
        "checkpoints": result.stats.checkpoints,
        "peak_rss_mib": peak_kib / 1024,
        "under_1_gib": peak_kib < 1024 * 1024,
        "cache_entries": "default (200,000 per state, and timers per domain)",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m benchmarks.timers_memory", __doc__, argv)
    out = run(args.keys, args.state, args.checkpoint_interval)
    print(json.dumps(out))
    return 0 if out["timers_fired"] == args.keys else 1


if __name__ == "__main__":
    sys.exit(main())
