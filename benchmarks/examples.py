"""Events/s of the example jobs (``examples/*.py``, their ``build(...)``) on generated input.

Inputs come from ``examples/data/make_data.py`` at the asked size (the examples' own
generators, so the data has their shape: 200 users, 500 cards, malformed lines included).
One run each on the memory backend; there is no plain-Python twin to compare with, so these
are absolute figures, for spotting regressions.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import eddies as ed

ROOT = Path(__file__).resolve().parents[1]


def _make_data() -> Any:
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "examples/data/make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(workdir: Path, n: int = 1_000_000) -> list[dict[str, Any]]:
    data = _make_data()
    workdir.mkdir(parents=True, exist_ok=True)
    clicks = _write(workdir / "clicks.jsonl", data.clicks(n))
    payments = _write(workdir / "payments.jsonl", data.payments(n))
    rule_payments = _write(workdir / "rule_payments.jsonl", data.rule_payments(n))
    rules = _write(workdir / "rules.jsonl", data.rules())
    out = workdir / "out"
    jobs = {
        "user_counts": lambda m: m.build(clicks, out / "user_counts.jsonl"),
        "fraud": lambda m: m.build(payments, out / "fraud.jsonl"),
        "page_views": lambda m: m.build(clicks, out / "views.jsonl", out / "sessions.jsonl",
                                        out / "late.jsonl"),
        "broadcast_rules": lambda m: m.build(rule_payments, rules, out / "breaches.jsonl"),
    }
    rows = []
    for name, build in jobs.items():
        module = importlib.import_module(f"examples.{name}")
        job = build(module)
        t = time.perf_counter()
        result = ed.run_local(job, "memory")
        elapsed = time.perf_counter() - t
        rows.append({"example": name, "events": result.stats.events_in,
                     "events_per_s": result.stats.events_in / elapsed,
                     "outputs": result.stats.events_out,
                     "dead_letters": result.stats.dead_letters})
    return rows
