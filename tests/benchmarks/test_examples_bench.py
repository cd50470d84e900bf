"""The plain-Python twins of the example jobs give exactly what the examples give.

``python -m benchmarks --examples`` times each example against its twin
(``benchmarks/plain_examples.py``) and fails when their results differ; these tests run the
same comparison on small inputs: the examples' generated data, and inputs built to sit on
the edges the twins must get right to the millisecond (watermark and TTL boundaries, late
and very late events, sessions that touch, rules that trickle in behind the payments,
malformed and blank lines), at several micro-batch sizes.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import examples

ROOT = Path(examples.__file__).resolve().parents[1]
T0 = 1_700_000_040_000  # a whole minute
NAMES = list(examples.EXAMPLES)


def write(path: Path, records: list[Any]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))


def edgy_clicks(n: int = 4_000, seed: int = 1) -> list[Any]:
    """Clicks one a second, some sent again 30 s to 75 s behind (around the session gap, the
    minute end and the 10 s lateness), a rare page seen only late, users seen once, amounts
    whose float sums depend on their order, and bad records of every kind."""
    rng = random.Random(seed)
    out: list[Any] = []
    for i in range(n):
        ts = T0 + i * 1_000 - rng.choice([0, 0, 0, 1_000, 2_000, 3_000, 1])
        user = f"u{rng.randrange(6)}" if rng.random() > 0.03 else f"once{i}"
        c = {"user": user, "ts": ts, "page": rng.choice(["/", "/cart"]),
             "amount": rng.choice([0.1, 0.2, 0.3, 12.345, 33.3, 1e15, -1e15])}
        r = rng.random()
        if r < 0.01:
            c["ts"] = float(ts) + 0.5
        elif r < 0.015:
            c["ts"] = "soon"
        elif r < 0.02:
            c["ts"] = True
        elif r < 0.025:
            c["ts"] = 2**63
        elif r < 0.03:
            del c["user"]
        elif r < 0.035:
            c["user"] = ["not", "a", "key"]
        elif r < 0.04:
            c["user"] = 7
        out.append(c)
        if rng.random() < 0.08:
            late = rng.choice([30_000, 31_000, 32_000, 33_000, 60_000, 62_000, 69_000, 70_000,
                               71_000, 72_000, 73_000, 75_000])
            out.append(dict(c, ts=ts - late, page=rng.choice(["/", "/rare"])))
        r = rng.random()
        if r < 0.005:
            out.append('{"user": "broken", "ts": ')
        elif r < 0.01:
            out.append("  ")
        elif r < 0.012:
            out.append("[1, 2]")
    return out


def edgy_payments(n: int = 5_000, seed: int = 2) -> list[Any]:
    """Payments of three cards one a second (over an hour: the ``recent`` TTL matters), out of
    order by up to 6 s, with timestamps a millisecond off the second; then flags that expire
    exactly at the watermark (read one record a round)."""
    rng = random.Random(seed)
    out: list[Any] = []
    for i in range(n):
        ts = T0 + i * 1_000 - rng.choice([0, 0, 1, 999, 1_000, 4_000, 5_001, 6_000])
        r = rng.random()
        amount = (rng.choice([0.5, 0.99]) if r < 0.3 else
                  rng.choice([500.01, 900]) if r < 0.6 else 100)
        out.append({"card": f"c{rng.randrange(3)}", "ts": ts, "amount": amount})
        r = rng.random()
        if r < 0.01:
            out.append("{bad")
        elif r < 0.02:
            out.append("")
        elif r < 0.025:
            out.append({"ts": ts, "amount": 1})
    # A flag set at s, the watermark moved to s + 60 s (expired) or one ms short of it (an
    # alert), then a large payment 59 s after the flag.
    for k, push in enumerate([65_001, 65_000]):
        s = T0 + n * 1_000 + 100_000 * (k + 1)
        out += [{"card": f"edge{k}", "ts": s, "amount": 0.5},
                {"card": "push", "ts": s + push, "amount": 100},
                {"card": f"edge{k}", "ts": s + 59_000, "amount": 900}]
    return out


def edgy_rules(n: int = 3_000, seed: int = 3) -> tuple[list[Any], list[Any]]:
    """Payments 100 ms apart; rules two at a time for one category and time, 100 ms apart, so
    that read one a round they trail the payments and hold them back; one out of order."""
    rng = random.Random(seed)
    payments: list[Any] = []
    for i in range(n):
        p = {"id": i % (n - 50), "card": f"c{rng.randrange(4)}",
             "ts": T0 + i * 100 - rng.choice([0, 0, 1, 100, 2_000]),
             "category": rng.choice(["food", "tech"]), "amount": rng.choice([40, 80, 120])}
        if rng.random() < 0.01:
            del p["card"]
        payments.append(p)
        if rng.random() < 0.01:
            payments.append("nope")
    rules: list[Any] = []
    for j in range(200):
        category = rng.choice(["food", "tech"])
        for limit in rng.sample([50, 100, 150], 2):
            rules.append({"category": category, "limit": limit, "ts": T0 + j * 100})
        if j == 100:
            rules.append({"category": "food", "limit": 10, "ts": T0 + 5_000})
            rules.append("")
    return payments, rules


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return examples.generate(tmp_path_factory.mktemp("generated"), 3_000)


@pytest.fixture(scope="module")
def edgy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("edgy")
    write(data / "clicks.jsonl", edgy_clicks())
    write(data / "payments.jsonl", edgy_payments())
    payments, rules = edgy_rules()
    write(data / "rule_payments.jsonl", payments)
    write(data / "rules.jsonl", rules)
    return data


@pytest.mark.parametrize("name", NAMES)
def test_twin_equals_example_on_generated_data(name: str, generated: Path,
                                               tmp_path: Path) -> None:
    examples.compare(name, generated, tmp_path)


@pytest.mark.parametrize("batch", [1, 3, 2_000])
@pytest.mark.parametrize("name", NAMES)
def test_twin_equals_example_on_the_edges(name: str, batch: int, edgy: Path,
                                          tmp_path: Path) -> None:
    examples.compare(name, edgy, tmp_path, batch)


def test_benchmark_reports_equal_results(tmp_path: Path) -> None:
    """The CLI end to end, at a tiny size: one timed run of each example and its twin."""
    report = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--skip-throughput", "--examples",
         "--examples-n", "2000", "--runs", "1", "--json", str(report),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(report.read_text())["examples"]
    assert [r["example"] for r in rows] == NAMES
    for r in rows:
        assert r["results_equal"], r
        assert r["events"] >= 2_000 and r["eddies_eps_median"] > 0 and r["plain_eps_median"] > 0
