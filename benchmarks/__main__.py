"""``python -m benchmarks``: events/s of eddies vs a plain-Python loop, min/median of runs."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import eddies as ed
from benchmarks.data import generate
from benchmarks.jobs import PLAIN, eddies_job, normalize

JOBS = {"running": "1 running count+sum", "tumbling": "2 tumbling 60 s", "ttl": "3 running + TTL"}
BATCH = 2_000


def run_eddies(name: str, path: Path, backend: str, workdir: Path, checkpoint: int):
    job, out = eddies_job(name, path)
    if backend == "rocksdb":
        state_dir = workdir / f"state-{name}"
        shutil.rmtree(state_dir, ignore_errors=True)
        state = f"rocksdb:{state_dir}"
    else:
        state = "memory"
    t = time.perf_counter()
    ed.run_local(job, state, checkpoint_interval=checkpoint, batch_size=BATCH)
    elapsed = time.perf_counter() - t
    return elapsed, out.items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="events (default 1M)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement")
    parser.add_argument("--jobs", default="running,tumbling,ttl")
    parser.add_argument("--backends", default="memory,rocksdb")
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eddies-bench-"))
    path = generate(workdir / f"events-{args.n}.csv", args.n, min(args.keys, args.n))
    rows = []
    ok = True
    for name in args.jobs.split(","):
        plain_times = []
        expected = None
        for _ in range(args.runs):
            t = time.perf_counter()
            expected = PLAIN[name](path, BATCH)
            plain_times.append(time.perf_counter() - t)
        for backend in args.backends.split(","):
            times = []
            equal = True
            for _ in range(args.runs):
                elapsed, results = run_eddies(name, path, backend, workdir,
                                              args.checkpoint_interval)
                times.append(elapsed)
                equal = equal and normalize(name, results) == normalize(name, expected)
            ok = ok and equal
            eps = [args.n / t for t in times]
            plain_eps = [args.n / t for t in plain_times]
            rows.append({
                "job": JOBS[name], "backend": backend, "events": args.n, "runs": args.runs,
                "eddies_eps_min": min(eps), "eddies_eps_median": statistics.median(eps),
                "plain_eps_min": min(plain_eps), "plain_eps_median": statistics.median(plain_eps),
                "ratio_median": statistics.median(eps) / statistics.median(plain_eps),
                "results_equal": equal,
            })
            r = rows[-1]
            print(f"{r['job']:<22} {backend:<8} eddies {r['eddies_eps_median']:>10,.0f}/s "
                  f"(min {r['eddies_eps_min']:,.0f})  plain {r['plain_eps_median']:>10,.0f}/s  "
                  f"ratio {r['ratio_median']:.2f}  equal={equal}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("results differ between eddies and the plain implementation", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
