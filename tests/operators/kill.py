"""Kill a running ``eddies run`` with -9 while it writes its output, several times."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path


def kill_while_writing(cmd: list[str], *, cwd: Path, env: dict[str, str], out: Path,
                       rng: random.Random, kills: int, grow: int, wait_s: float) -> None:
    """Start ``cmd`` ``kills`` times, each time killing it with SIGKILL once ``out`` has grown
    by a random 1..``grow`` bytes (or after ``wait_s``); a run that ends first fails the test."""
    for _ in range(kills):
        before = out.stat().st_size if out.exists() else 0
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        target = before + rng.randint(1, grow)
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > target:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
