"""Savepoint create and restore against raw rocksdict, on the same state.

A job writes one ValueState entry per key (``--n`` keys, default 1M) into a RocksDB dir.
Then, each in this process and timed with ``perf_counter``:

- **scan**: a bare rocksdict loop over that state's column family (``Rdict`` read-only,
  ``items()``), the least any savepoint must do to read it;
- **create**: ``create_savepoint(dir, out)``, a savepoint of the whole dir;
- **write**: a bare rocksdict loop writing the same entries into a new dir (``WriteBatch``
  of 50,000 puts each, through the WAL as a run's writes go; the restore skips the WAL);
- **restore**: the restore half of ``run_local(..., from_savepoint=)`` into a new dir
  with the same max_parallelism (stored keys kept as they are), nothing else run;
- **rescale**: the same into max_parallelism 256 (every key group recomputed).

It prints the median and the minimum of ``--runs`` runs (default 3) of each time and ratio
(ratios to the scan, and restore to the write, each taken within its run), and checks that
the restored dirs hold the same entries as the original.

    python -m benchmarks.savepoint_bench              # 1M keys
    python -m benchmarks.savepoint_bench --n 20000 --runs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from itertools import starmap
from pathlib import Path
from typing import Any

import rocksdict

import eddies as ed
from eddies.runtime.local import LocalRunner
from eddies.runtime.savepoint import create_savepoint
from eddies.state.rocksdb import RocksDbStateBackend


class Last(ed.KeyedProcessFunction):
    last = ed.ValueState("last")

    def on_event(self, event: Any, ctx: Any) -> None:
        self.last.set(event["v"])


def job(n: int) -> ed.Job:
    j = ed.Job("savepoint-bench")
    events = ({"k": f"key-{i}", "v": i} for i in range(n))
    (j.source(ed.sources.iterable(events)).key_by("k").process(Last(), name="last")
     .sink(ed.sinks.collect()))
    return j


def _raw_scan(path: Path, cf: str) -> tuple[int, list[tuple[bytes, bytes]]]:
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                         column_families={c: rocksdict.Options(raw_mode=True)
                                          for c in rocksdict.Rdict.list_cf(str(path))
                                          if c != "default"},
                         access_type=rocksdict.AccessType.read_only())
    try:
        items = list(db.get_column_family(cf).items())
    finally:
        db.close()
    return len(items), items


def _raw_write(path: Path, cf: str, items: list[tuple[bytes, bytes]]) -> None:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    db = rocksdict.Rdict(str(path), options=opts)
    try:
        db.create_column_family(cf, rocksdict.Options(raw_mode=True))
        handle = db.get_column_family_handle(cf)
        for start in range(0, len(items), 50_000):
            wb = rocksdict.WriteBatch(raw_mode=True)
            wb.set_default_column_family(handle)
            deque(starmap(wb.put, items[start:start + 50_000]), 0)
            db.write(wb)
    finally:
        db.close()


def run(n: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="eddies-sp-bench-"))
    try:
        ed.run_local(job(n), f"rocksdb:{tmp / 'src'}", checkpoint_interval=200_000)
        t = time.perf_counter()
        count, items = _raw_scan(tmp / "src", "last")
        scan_s = time.perf_counter() - t
        assert count == n, (count, n)
        t = time.perf_counter()
        create_savepoint(tmp / "src", tmp / "sp")
        create_s = time.perf_counter() - t
        t = time.perf_counter()
        _raw_write(tmp / "raw", "last", items)
        write_s = time.perf_counter() - t
        runner = LocalRunner(job(0), f"rocksdb:{tmp / 'dst'}", from_savepoint=tmp / "sp")
        t = time.perf_counter()
        runner._restore_savepoint(tmp / "sp")  # noqa: SLF001 - the restore alone, timed
        restore_s = time.perf_counter() - t
        runner.close()
        with RocksDbStateBackend(tmp / "dst", read_only=True) as dst:
            assert list(dst.iterate("last")) == items, "restored state differs"
        runner = LocalRunner(job(0), f"rocksdb:{tmp / 'dst2'}", from_savepoint=tmp / "sp",
                             max_parallelism=256)
        t = time.perf_counter()
        runner._restore_savepoint(tmp / "sp")  # noqa: SLF001 - the restore alone, timed
        rescale_s = time.perf_counter() - t
        runner.close()
        with RocksDbStateBackend(tmp / "dst2", read_only=True) as dst:
            assert sorted(k[2:] for k, _ in dst.iterate("last")) == sorted(
                k[2:] for k, _ in items), "rescaled state differs"
        return {"keys": n, "scan_s": scan_s, "create_s": create_s, "write_s": write_s,
                "restore_s": restore_s, "rescale_s": rescale_s,
                "create_vs_scan": create_s / scan_s, "restore_vs_scan": restore_s / scan_s,
                "rescale_vs_scan": rescale_s / scan_s, "restore_vs_write": restore_s / write_s}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="keys (default 1M)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs; medians and minimums are reported")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    runs = [run(args.n) for _ in range(args.runs)]
    result: dict[str, Any] = {name: statistics.median(r[name] for r in runs)
                              for name in runs[0]}
    low = {name: min(r[name] for r in runs) for name in runs[0]}
    if args.json:
        print(json.dumps({**result, "min": low}))
        return
    for what, r in ((f"median of {args.runs}", result), (f"min of {args.runs}", low)):
        print(f"{int(r['keys']):,} keys, {what}: raw rocksdict scan {r['scan_s']:.2f}s, raw "
              f"write {r['write_s']:.2f}s; savepoint create {r['create_s']:.2f}s "
              f"({r['create_vs_scan']:.2f}x the scan), restore {r['restore_s']:.2f}s "
              f"({r['restore_vs_scan']:.2f}x the scan, {r['restore_vs_write']:.2f}x the "
              f"write), restore into max_parallelism 256 {r['rescale_s']:.2f}s "
              f"({r['rescale_vs_scan']:.2f}x the scan)", file=sys.stdout)


if __name__ == "__main__":
    main()
