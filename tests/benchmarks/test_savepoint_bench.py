"""``python -m benchmarks.savepoint_bench`` at a tiny size: the savepoint restored (same and
other max_parallelism) holds the entries of the raw scan (the benchmark asserts it)."""

from __future__ import annotations

from benchmarks import savepoint_bench


def test_savepoint_benchmark_smoke() -> None:
    result = savepoint_bench.run(2_000)
    assert result["keys"] == 2_000
    assert all(result[k] > 0 for k in ("scan_s", "create_s", "write_s", "restore_s",
                                       "rescale_s"))
