"""``python -m benchmarks.profiles`` runs at a tiny size and every profile gives the plain
loop's results (it exits 1 when a digest differs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import profiles

ROOT = Path(profiles.__file__).resolve().parents[1]


def test_profiles_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.profiles", "--n", "3000", "--keys", "300",
         "--cache-entries", "100", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["plain", *profiles.CONFIGS]
