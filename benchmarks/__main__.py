"""``python -m benchmarks``: events/s of eddies vs a plain-Python loop, min/median of runs.

Every timed run is a process of its own (``benchmarks/one.py``), interleaved per round
(plain, memory, RocksDB), so no run inherits another's heap or caches, and the plain loop
sees the same machine load as eddies. Results are compared by digest of their normalized
form. ``--restart``, ``--memory`` and ``--timers-memory`` add the startup and
bounded-memory measurements (without and with a pending timer per key),
``--examples`` the example jobs' events/s against their plain twins
(``benchmarks/examples.py``), ``--joins`` an interval and an as-of join against theirs
(``benchmarks/joins.py``). See README "Performance".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.data import generate

JOBS = {"running": "1 running count+sum", "tumbling": "2 tumbling 60 s", "ttl": "3 running + TTL"}
ROOT = Path(__file__).resolve().parents[1]


def _child(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                          capture_output=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _names(allowed: tuple[str, ...]) -> Any:
    """An argparse type for a comma-separated subset of ``allowed``."""
    def parse(text: str) -> str:
        unknown = [name for name in text.split(",") if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return text
    return parse


def _eps(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[float]:
    return [args.n / r["elapsed_s"] for r in runs]


def throughput(args: argparse.Namespace, path: Path, workdir: Path) -> tuple[list, bool]:
    """Per job, rounds of fresh processes: the lean plain loop, its DictReader twin, each
    backend, and for job 3 each backend again with the hand-written TTL check
    (``ttl_manual``), which gives the TTL-overhead row."""
    rows = []
    ok = True
    backends = args.backends.split(",")
    for name in args.jobs.split(","):
        cells = [(name, impl) for impl in ["plain", "dictreader", *backends]]
        if name == "ttl":
            cells += [("ttl_manual", backend) for backend in backends]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {cell: [] for cell in cells}
        for _ in range(args.runs):
            for job, impl in cells:
                runs[(job, impl)].append(_child(
                    "benchmarks.one", "--job", job, "--impl", impl, "--input", str(path),
                    "--workdir", str(workdir),
                    "--checkpoint-interval", str(args.checkpoint_interval),
                    *(() if args.sweep_lag_ms is None
                      else ("--sweep-lag-ms", str(args.sweep_lag_ms)))))
        plain_eps = _eps(args, runs[(name, "plain")])
        dict_eps = _eps(args, runs[(name, "dictreader")])
        expected = {r["digest"] for r in runs[(name, "plain")]}
        ok = ok and {r["digest"] for r in runs[(name, "dictreader")]} == expected
        for job, impl in cells[2:]:
            eps = _eps(args, runs[(job, impl)])
            equal = len(expected) == 1 and {r["digest"] for r in runs[(job, impl)]} == expected
            ok = ok and equal
            label = JOBS[name] + (", hand-written check" if job == "ttl_manual" else "")
            rows.append({
                "job": label, "backend": impl, "events": args.n, "runs": args.runs,
                "eddies_eps_min": min(eps), "eddies_eps_median": statistics.median(eps),
                "plain_eps_min": min(plain_eps), "plain_eps_median": statistics.median(plain_eps),
                "dictreader_eps_median": statistics.median(dict_eps),
                "ratio_median": statistics.median(eps) / statistics.median(plain_eps),
                "ratio_min": min(eps) / min(plain_eps),
                "ratio_dictreader": statistics.median(eps) / statistics.median(dict_eps),
                "results": runs[(job, impl)][0]["results"],
                "results_equal": equal,
            })
            r = rows[-1]
            print(f"{r['job']:<42} {impl:<8} eddies {r['eddies_eps_median']:>9,.0f}/s "
                  f"(min {r['eddies_eps_min']:,.0f})  lean {r['plain_eps_median']:>9,.0f}/s "
                  f"(min {r['plain_eps_min']:,.0f})  ratio {r['ratio_median']:.2f}  "
                  f"DictReader {r['dictreader_eps_median']:,.0f}/s ratio "
                  f"{r['ratio_dictreader']:.2f}  equal={equal}", flush=True)
        if name == "ttl":
            for backend in backends:
                built = _eps(args, runs[("ttl", backend)])
                manual = _eps(args, runs[("ttl_manual", backend)])
                rows.append({
                    "job": "TTL overhead: job 3 built-in / hand-written", "backend": backend,
                    "ratio_median": statistics.median(built) / statistics.median(manual),
                    "ratio_min": min(built) / min(manual),
                })
                r = rows[-1]
                print(f"{r['job']:<42} {backend:<8} ratio {r['ratio_median']:.2f} "
                      f"(of mins {r['ratio_min']:.2f})", flush=True)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000, help="events (default 1M)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement")
    parser.add_argument("--jobs", type=_names(("running", "tumbling", "ttl")),
                        default="running,tumbling,ttl",
                        help="comma-separated: running (job 1), tumbling (job 2), ttl (job 3)")
    parser.add_argument("--backends", type=_names(("memory", "rocksdb")),
                        default="memory,rocksdb")
    parser.add_argument("--checkpoint-interval", type=int, default=10_000)
    parser.add_argument("--sweep-lag-ms", type=int, default=None,
                        help="TtlConfig.sweep_lag_ms for the eddies runs (default: its "
                        "default, one TTL)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--restart", action="store_true",
                        help="time to first event after 1M keys of RocksDB state vs a raw scan")
    parser.add_argument("--restart-keys", type=int, default=1_000_000)
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS of 10M distinct keys through job 1 on RocksDB")
    parser.add_argument("--memory-keys", type=int, default=10_000_000)
    parser.add_argument("--timers-memory", action="store_true",
                        help="peak RSS of 10M distinct keys, each with a pending event-time "
                             "timer, on RocksDB")
    parser.add_argument("--timers-memory-keys", type=int, default=10_000_000)
    parser.add_argument("--examples", action="store_true",
                        help="events/s of the example jobs and their plain-Python twins on "
                             "--examples-n generated events, --runs runs each")
    parser.add_argument("--examples-n", type=int, default=1_000_000)
    parser.add_argument("--joins", action="store_true",
                        help="events/s of an interval join and an as-of join (--joins-n "
                             "events a side, --keys keys) against their plain-Python twins, "
                             "on --backends (benchmarks/joins.py)")
    parser.add_argument("--joins-n", type=int, default=50_000,
                        help="events a side for --joins (1M for the reference figures)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eddies-bench-"))
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "config": {"events": args.n, "keys": args.keys, "runs": args.runs,
                   "checkpoint_interval": args.checkpoint_interval, "batch_size": 2_000,
                   "sweep_lag_ms": "auto" if args.sweep_lag_ms is None else args.sweep_lag_ms},
    }
    ok = True
    if not args.skip_throughput:
        path = generate(workdir / f"events-{args.n}.csv", args.n, min(args.keys, args.n))
        report["rows"], ok = throughput(args, path, workdir)
    if args.restart:
        from benchmarks import restart

        r = report["restart"] = restart.measure(workdir, keys=args.restart_keys, runs=args.runs)
        print(f"restart after {r['keys']:,} keys: first event {r['first_event_s_median']:.2f}s "
              f"(min {r['first_event_s_min']:.2f}s), raw rocksdict scan of "
              f"{r['entries_scanned']:,} entries {r['raw_scan_s_median']:.2f}s, "
              f"ratio {r['ratio_median']:.2f}", flush=True)
    if args.memory:
        m = report["memory"] = _child("benchmarks.memory", "--keys", str(args.memory_keys),
                                      "--state", str(workdir / "state-memory"))
        ok = ok and m["stored_keys"] == args.memory_keys
        print(f"memory: {m['keys']:,} distinct keys on RocksDB, peak RSS "
              f"{m['peak_rss_mib']:,.0f} MiB ({m['events_per_s']:,.0f} events/s)", flush=True)
    if args.timers_memory:
        m = report["timers_memory"] = _child(
            "benchmarks.timers_memory", "--keys", str(args.timers_memory_keys),
            "--state", str(workdir / "state-timers-memory"))
        ok = ok and m["timers_fired"] == args.timers_memory_keys
        print(f"timers memory: {m['keys']:,} keys with a pending timer each on RocksDB, peak "
              f"RSS {m['peak_rss_mib']:,.0f} MiB, at most {m['timers_in_memory_max']:,} "
              f"timers in memory ({m['events_per_s']:,.0f} events/s)", flush=True)
    if args.examples:
        from benchmarks import examples

        rows, equal = examples.measure(workdir / "examples", args.examples_n, args.runs)
        report["examples"] = rows
        print(f"examples, {args.runs} run(s) each, memory backend, events/s:", flush=True)
        print(examples.table(rows), flush=True)
        ok = ok and equal
    if args.joins:
        from benchmarks import joins

        print(f"joins, {args.joins_n:,} events a side, {min(args.keys, args.joins_n):,} keys, "
              f"{args.runs} run(s) each:", flush=True)
        rows, equal = joins.measure(workdir, args.joins_n, args.keys, args.runs,
                                    args.backends.split(","), args.checkpoint_interval)
        report["joins"] = rows
        ok = ok and equal
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("results differ between eddies and the plain implementation", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
