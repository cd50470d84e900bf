"""Deterministic benchmark input: ``key,ts,amount`` CSV lines with bounded disorder."""

from __future__ import annotations

import random
from pathlib import Path

T0 = 1_700_000_000_000
DISORDER_MS = 5_000


def generate(path: Path, n: int, keys: int, *, span_ms: int = 3_600_000, seed: int = 42) -> Path:
    """Write ``n`` events over ``keys`` keys spread across ``span_ms`` of event time.

    Timestamps advance evenly and are shifted back by up to 5 s (the disorder bound).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    step = span_ms / max(n, 1)
    with open(path, "w") as f:
        f.write("key,ts,amount\n")
        for i in range(n):
            ts = T0 + int(i * step) - rng.randint(0, DISORDER_MS)
            f.write(f"user{rng.randrange(keys)},{ts},{rng.randint(1, 10_000) / 100}\n")
    return path
