"""The join examples give what a batch computation over their input files says, whatever the
micro-batch size (which changes how the two inputs interleave)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
import examples.ad_attribution as ads
import examples.enrich_orders as enrich

DATA = Path(enrich.__file__).parent / "data"


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def canonical(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def enrich_reference(orders: list[dict], profiles: list[dict]) -> list[dict]:
    out = []
    for o in orders:
        best = None
        for p in profiles:  # in file order: a later update at the same ts wins
            if p["customer"] == o["customer"] and p["ts"] <= o["ts"] and (
                    best is None or p["ts"] >= best["ts"]):
                best = p
        out.append(enrich.enrich(o, best))
    return out


def attribution_reference(impressions: list[dict], clicks: list[dict]) -> list[dict]:
    by_key: dict[tuple, list[dict]] = {}
    for c in clicks:
        by_key.setdefault((c["user"], c["ad"]), []).append(c)
    return [ads.attribute(i, c) for i in impressions for c in by_key.get((i["user"], i["ad"]), [])
            if i["ts"] - ads.SKEW <= c["ts"] <= i["ts"] + ads.BEFORE]


@pytest.mark.parametrize("batch_size", [None, 7, 500])
def test_enrich_orders(tmp_path: Path, batch_size: int | None) -> None:
    out = tmp_path / "enriched.jsonl"
    options = {} if batch_size is None else {"batch_size": batch_size}
    result = ed.run_local(enrich.build(DATA / "orders.jsonl", DATA / "profiles.jsonl", out),
                          **options)
    expected = enrich_reference(load("orders.jsonl"), load("profiles.jsonl"))
    got = lines(out)
    assert canonical(got) == canonical(expected)
    assert result.stats.late_dropped == 0
    # The data exercises what the join is for: orders without a profile yet, and customers
    # whose orders see different tiers over time.
    assert any(r["profile"] is None for r in got)
    tiers: dict[str, set] = {}
    for r in got:
        if r["profile"] is not None:
            tiers.setdefault(r["customer"], set()).add(r["profile"]["tier"])
    assert sum(len(t) > 1 for t in tiers.values()) > 50


@pytest.mark.parametrize("batch_size", [None, 13, 800])
def test_ad_attribution(tmp_path: Path, batch_size: int | None) -> None:
    out, late = tmp_path / "attributed.jsonl", tmp_path / "late.jsonl"
    options = {} if batch_size is None else {"batch_size": batch_size}
    result = ed.run_local(ads.build(DATA / "impressions.jsonl", DATA / "ad_clicks.jsonl", out,
                                    late), **options)
    expected = attribution_reference(load("impressions.jsonl"), load("ad_clicks.jsonl"))
    got = lines(out)
    assert canonical(got) == canonical(expected)
    assert lines(late) == [] and result.stats.late_dropped == 0
    delays = [r["delay_ms"] for r in got]
    # Clicks just before their impression (skew) and near the 10-minute bound are attributed.
    assert min(delays) < 0 and max(delays) > ads.BEFORE - 60_000
    assert len(got) > 500
