"""The join benchmark's plain-Python twins give exactly what the eddies jobs give.

``python -m benchmarks --joins`` fails when they differ; this runs the same comparison on a
small input, on both backends (one timed run each, as the benchmark's children do).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import joins


@pytest.mark.parametrize("name", ["interval", "asof"])
def test_plain_twin_equals_eddies(tmp_path: Path, name: str) -> None:
    left, right = joins.generate(tmp_path / "data", 4_000, 300)[name]
    runs = {impl: joins.one(name, impl, left, right, tmp_path)
            for impl in ("plain", "memory", "rocksdb")}
    assert runs["plain"]["results"] > 1_000
    assert len({r["digest"] for r in runs.values()}) == 1, runs
    assert len({r["results"] for r in runs.values()}) == 1


def test_twins_follow_the_bounds_to_the_millisecond(tmp_path: Path) -> None:
    """Pairs exactly on both interval bounds, just outside them, and as-of versions at the
    order's own timestamp (ties: the later in the file)."""
    t0 = joins.T0
    (tmp_path / "l.csv").write_text(f"key,ts,amount\nk,{t0},1.0\n")
    (tmp_path / "r.csv").write_text(
        "key,ts,amount\n" + "".join(f"k,{t0 + d},{i}.0\n" for i, d in enumerate(
            [joins.LOWER - 1, joins.LOWER, 0, 0, joins.UPPER, joins.UPPER + 1])))
    interval = {impl: joins.one("interval", impl, tmp_path / "l.csv", tmp_path / "r.csv",
                                tmp_path) for impl in ("plain", "memory")}
    assert interval["plain"]["results"] == 4
    assert interval["plain"]["digest"] == interval["memory"]["digest"]
    plain = joins.plain_asof(tmp_path / "l.csv", tmp_path / "r.csv", joins.BATCH)
    assert plain == [("k", t0, 1.0, t0, 3.0)]
    asof = joins.one("asof", "memory", tmp_path / "l.csv", tmp_path / "r.csv", tmp_path)
    assert asof["digest"] == joins.digest([list(r) for r in plain])
