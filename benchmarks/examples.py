"""Events/s of the example jobs (``examples/*.py``) against their plain-Python twins.

Inputs come from ``examples/data/make_data.py`` at the asked size (the examples' own
generators: 200 users, 500 cards, a malformed click line in every 997). Each example runs as
its ``build(...)`` defines it, with ``ed.run_local(job, "memory")`` and its defaults
(micro-batches of 2,000, a checkpoint every 100,000 events); its twin
(``benchmarks/plain_examples.py``) is a hand-written loop over the same files. Every timed
run is a process of its own (``python -m benchmarks.one_example``), twin and eddies
interleaved per round, and every run's outputs (every output file, sorted, plus dead letters
and dropped late events) must equal the twin's: a difference fails the benchmark, and
:func:`explain` says where it is.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import eddies as ed
from benchmarks.plain_examples import BATCH, PLAIN

ROOT = Path(__file__).resolve().parents[1]
COUNTS = "counts.json"  # what a child run leaves next to its outputs

# Per example: its input files (make_data generators) and output files, in build() order.
EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "user_counts": (("clicks",), ("user_counts.jsonl",)),
    "fraud": (("payments",), ("fraud_alerts.jsonl",)),
    "page_views": (("clicks",), ("page_views.jsonl", "sessions.jsonl", "late_clicks.jsonl")),
    "broadcast_rules": (("rule_payments", "rules"), ("limit_breaches.jsonl",)),
}


def _make_data() -> Any:
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "examples/data/make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(data_dir: Path, n: int) -> Path:
    """Write the examples' inputs with ``n`` events each (rules: the fixed four)."""
    data = _make_data()
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in [("clicks", data.clicks(n)), ("payments", data.payments(n)),
                        ("rule_payments", data.rule_payments(n)), ("rules", data.rules())]:
        (data_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return data_dir


def _paths(name: str, data_dir: Path, out_dir: Path) -> tuple[list[Path], list[Path]]:
    inputs, outputs = EXAMPLES[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    return [data_dir / f"{i}.jsonl" for i in inputs], [out_dir / o for o in outputs]


def run_eddies(name: str, data_dir: Path, out_dir: Path, batch: int = BATCH) -> dict[str, Any]:
    """Run the example's job as built by its ``build()``; returns the elapsed time and counts."""
    inputs, outputs = _paths(name, data_dir, out_dir)
    job = importlib.import_module(f"examples.{name}").build(*inputs, *outputs)
    # run_local's own default batch size unless told otherwise: the twins assume it is BATCH.
    options = {} if batch == BATCH else {"batch_size": batch}
    t = time.perf_counter()
    result = ed.run_local(job, "memory", **options)
    elapsed = time.perf_counter() - t
    # Dead letters by input file and line: their "source" is the file name for unparsable
    # lines but the job's source name for records without a key or timestamp.
    dead = [[Path(d["position"]["file"]).name, d["position"]["line"]]
            if isinstance(d["position"], dict) else [d["source"], d["position"]]
            for d in result.dead_letters]
    return {"elapsed_s": elapsed, "events": result.stats.events_in, "dead_letters": dead,
            "late_dropped": result.stats.late_dropped}


def run_plain(name: str, data_dir: Path, out_dir: Path, batch: int = BATCH) -> dict[str, Any]:
    """Run the example's plain-Python twin over the same files."""
    inputs, outputs = _paths(name, data_dir, out_dir)
    t = time.perf_counter()
    counts = PLAIN[name](*inputs, *outputs, batch=batch)
    elapsed = time.perf_counter() - t
    return {"elapsed_s": elapsed, **counts}


def normalized(name: str, out_dir: Path, counts: dict[str, Any]) -> dict[str, Any]:
    """A run's results in comparable form: each output file's records as sorted canonical
    JSON (outputs of different keys come in no particular order), the dead letters sorted,
    and the counts."""
    files = {}
    for o in EXAMPLES[name][1]:
        with open(out_dir / o, encoding="utf-8") as f:
            files[o] = sorted(json.dumps(json.loads(line), sort_keys=True) for line in f)
    return {"outputs": files, "events": counts["events"],
            "dead_letters": sorted(map(tuple, counts["dead_letters"])),
            "late_dropped": counts["late_dropped"]}


def digest(results: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()


def explain(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("eddies", "plain"),
            limit: int = 3) -> str:
    """Where two normalized results differ, in a few lines."""
    lines = []
    for field in ("events", "late_dropped"):
        if a[field] != b[field]:
            lines.append(f"{field}: {names[0]} {a[field]}, {names[1]} {b[field]}")
    if a["dead_letters"] != b["dead_letters"]:
        only_a = sorted(set(a["dead_letters"]) - set(b["dead_letters"]))[:limit]
        only_b = sorted(set(b["dead_letters"]) - set(a["dead_letters"]))[:limit]
        lines.append(f"dead letters: {len(a['dead_letters'])} vs {len(b['dead_letters'])}; "
                     f"only in {names[0]} {only_a}, only in {names[1]} {only_b}")
    for o, records in a["outputs"].items():
        other = b["outputs"][o]
        if records != other:
            sa, sb = set(records), set(other)
            lines.append(f"{o}: {len(records)} vs {len(other)} records; only in {names[0]} "
                         f"{sorted(sa - sb)[:limit]}, only in {names[1]} "
                         f"{sorted(sb - sa)[:limit]}")
    return "\n".join(lines) or "equal"


def compare(name: str, data_dir: Path, workdir: Path, batch: int = BATCH) -> None:
    """Run the example and its twin here, once each; AssertionError if results differ."""
    results = []
    for impl, run in (("eddies", run_eddies), ("plain", run_plain)):
        out_dir = workdir / impl / name
        shutil.rmtree(out_dir, ignore_errors=True)
        results.append(normalized(name, out_dir, run(name, data_dir, out_dir, batch)))
    if results[0] != results[1]:
        raise AssertionError(f"example {name}: eddies and the plain twin differ:\n"
                             + explain(results[0], results[1]))


def _child(name: str, impl: str, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.one_example", "--example", name, "--impl", impl,
            "--data", str(data_dir), "--out", str(out_dir)]
    done = subprocess.run(args, cwd=ROOT, text=True, capture_output=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"{' '.join(args[1:])} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(workdir: Path, n: int = 1_000_000, runs: int = 3,
            names: list[str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Timed runs of every example and its twin, interleaved; returns the rows and whether
    every run's results equalled the twin's. Mismatches are explained on stderr."""
    data_dir = generate(workdir / "data", n)
    rows = []
    ok = True
    for name in names or list(EXAMPLES):
        by_impl: dict[str, list[dict[str, Any]]] = {"plain": [], "eddies": []}
        for _ in range(runs):
            for impl, done in by_impl.items():
                out_dir = workdir / "out" / impl / name
                shutil.rmtree(out_dir, ignore_errors=True)
                done.append(_child(name, impl, data_dir, out_dir))
        digests = {r["digest"] for runs_ in by_impl.values() for r in runs_}
        equal = len(digests) == 1
        if not equal:
            ok = False
            dirs = [workdir / "out" / impl / name for impl in ("eddies", "plain")]
            a, b = (normalized(name, d, json.loads((d / COUNTS).read_text())) for d in dirs)
            print(f"example {name}: eddies and the plain twin differ:\n{explain(a, b)}",
                  file=sys.stderr, flush=True)
        eps = {impl: [r["events"] / r["elapsed_s"] for r in rs] for impl, rs in by_impl.items()}
        last = by_impl["eddies"][-1]
        rows.append({
            "example": name, "events": last["events"], "runs": runs, "backend": "memory",
            "batch_size": BATCH,
            "eddies_eps_min": min(eps["eddies"]),
            "eddies_eps_median": statistics.median(eps["eddies"]),
            "plain_eps_min": min(eps["plain"]),
            "plain_eps_median": statistics.median(eps["plain"]),
            "ratio_median": statistics.median(eps["eddies"]) / statistics.median(eps["plain"]),
            "ratio_min": min(eps["eddies"]) / min(eps["plain"]),
            "outputs": last["outputs"], "dead_letters": last["dead_letters"],
            "late_dropped": last["late_dropped"], "results_equal": equal,
        })
    return rows, ok


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table: events/s median (min), ratio of the medians."""
    head = (f"{'example':<16} {'events':>10}  {'eddies/s median (min)':>24}  "
            f"{'plain/s median (min)':>24}  {'ratio':>5}  equal")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['example']:<16} {r['events']:>10,}  "
            f"{r['eddies_eps_median']:>10,.0f} ({r['eddies_eps_min']:>10,.0f})  "
            f"{r['plain_eps_median']:>10,.0f} ({r['plain_eps_min']:>10,.0f})  "
            f"{r['ratio_median']:>5.2f}  {r['results_equal']}")
    return "\n".join(lines)
