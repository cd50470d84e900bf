"""One timed run of one implementation, in a process of its own (``python -m benchmarks.one``).

``python -m benchmarks`` starts one of these per measurement, so that no run inherits the
heap, the garbage or the caches of another: the plain loop and eddies each start from a fresh
interpreter. It prints one JSON line: the elapsed seconds, the number of results and a digest
of the normalized results, which the parent compares between implementations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import eddies as ed
from benchmarks.jobs import DICTREADER, PLAIN, eddies_job, normalize

BATCH = 2_000


def digest(name: str, results: list) -> str:
    return hashlib.sha256(json.dumps(normalize(name, results)).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.one", description=__doc__)
    parser.add_argument("--job", required=True, choices=sorted(PLAIN))
    parser.add_argument("--impl", required=True, choices=["plain", "dictreader", "memory", "rocksdb"])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--sweep-lag-ms", type=int, default=None)
    args = parser.parse_args(argv)

    if args.impl in ("plain", "dictreader"):
        t = time.perf_counter()
        results = (PLAIN if args.impl == "plain" else DICTREADER)[args.job](args.input, BATCH)
        elapsed = time.perf_counter() - t
    else:
        job, out = eddies_job(args.job, args.input)
        state = "memory"
        if args.impl == "rocksdb":
            state_dir = args.workdir / f"state-{args.job}"
            shutil.rmtree(state_dir, ignore_errors=True)
            state = f"rocksdb:{state_dir}"
        t = time.perf_counter()
        ed.run_local(job, state, checkpoint_interval=args.checkpoint_interval, batch_size=BATCH,
                     ttl_config=ed.TtlConfig(sweep_lag_ms=args.sweep_lag_ms))
        elapsed = time.perf_counter() - t
        results = out.items
        if args.impl == "rocksdb":
            shutil.rmtree(args.workdir / f"state-{args.job}", ignore_errors=True)
    print(json.dumps({"elapsed_s": elapsed, "results": len(results),
                      "digest": digest(args.job, results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
