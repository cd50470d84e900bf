"""RocksDB machine profiles: throughput and peak RSS of job 1 under each profile.

``python -m benchmarks.profiles`` runs job 1 (running count+sum per key, see ``jobs.py``) on
RocksDB once with the default options and once per profile (``small``, ``medium``,
``large``), each in a fresh interpreter so that its peak RSS (``ru_maxrss``) is its own, and
the plain-Python loop once as the yardstick. ``--cache-entries`` bounds the keys eddies keeps
cached per state: below the number of keys, reads go to RocksDB and its block cache matters.
Every run must give the plain loop's results (compared by digest).

Options: ``--n`` events (default 200,000), ``--keys`` (default 20,000), ``--cache-entries``
(default: eddies' default), ``--runs`` (best of, in rounds over every config; default 1),
``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import eddies as ed
from benchmarks.data import generate
from benchmarks.jobs import PLAIN, eddies_job
from benchmarks.one import BATCH, digest

CONFIGS = ["default", "small", "medium", "large"]


def one(config: str, path: Path, workdir: Path, cache_entries: int | None) -> dict[str, Any]:
    """One run in this process (the child): job 1 under ``config``."""
    if config == "plain":
        t = time.perf_counter()
        results = PLAIN["running"](path, BATCH)
        elapsed = time.perf_counter() - t
    else:
        state = workdir / f"state-{config}"
        shutil.rmtree(state, ignore_errors=True)
        job, out = eddies_job("running", path)
        options: dict[str, Any] = {"checkpoint_interval": 10_000, "batch_size": BATCH}
        if cache_entries is not None:
            options["cache_entries"] = cache_entries
        if config != "default":
            options["rocksdb_profile"] = config
        t = time.perf_counter()
        ed.run_local(job, f"rocksdb:{state}", **options)
        elapsed = time.perf_counter() - t
        results = out.items
        shutil.rmtree(state, ignore_errors=True)
    return {"config": config, "seconds": elapsed, "digest": digest("running", results),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(config: str, path: Path, workdir: Path, cache_entries: int | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.profiles", "--one", config, "--input", str(path),
            "--workdir", str(workdir)]
    if cache_entries is not None:
        argv += ["--cache-entries", str(cache_entries)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, Any]], n: int) -> str:
    plain = next(r for r in rows if r["config"] == "plain")
    lines = ["| RocksDB options | events/s | vs plain loop | peak RSS (MiB) |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        rate = n / r["seconds"]
        ratio = plain["seconds"] / r["seconds"]
        lines.append(f"| {r['config']} | {rate:,.0f} | {ratio:.2f} | {r['peak_rss_mib']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--cache-entries", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", choices=["plain", *CONFIGS], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.input, args.workdir, args.cache_entries)))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eddies-profiles-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = generate(workdir / f"events-{args.n}.csv", args.n, min(args.keys, args.n))
    # Rounds over every config, rather than every run of one config in a row: load from
    # other processes then slows every config alike instead of whichever ran during it.
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in ["plain", *CONFIGS]}
    for round_ in range(args.runs):
        for config, done in runs.items():
            done.append(_child(config, path, workdir, args.cache_entries))
            print(f"round {round_ + 1}, {config}: {args.n / done[-1]['seconds']:,.0f} "
                  f"events/s, peak RSS {done[-1]['peak_rss_mib']:,.0f} MiB", file=sys.stderr)
    rows = [min(done, key=lambda r: r["seconds"]) for done in runs.values()]
    digests = {r["digest"] for r in rows}
    cache = ("default" if args.cache_entries is None else f"{args.cache_entries:,}")
    print(f"job 1, {args.n:,} events, {args.keys:,} keys, cache_entries {cache}, "
          f"best of {args.runs}\n")
    print(table(rows, args.n))
    if len(digests) != 1:
        print("results differ between runs: " + ", ".join(
            f"{r['config']}={r['digest'][:12]}" for r in rows), file=sys.stderr)
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
