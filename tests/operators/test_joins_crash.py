"""Joins survive kill -9: ``eddies run`` on RocksDB, killed mid-run and resumed, gives the
same interval-join and as-of results (and the same late events) as an uninterrupted run,
and leaves no join state behind."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import eddies as ed

from .kill import kill_while_writing

N_EVENTS = 30_000  # a side
KILLS = 4

JOB = '''
import os
import eddies as ed

LATE = ed.OutputTag("late")


def ids(kind):
    return lambda a, b: {"j": kind, "k": a["k"], "l": a["id"], "r": b and b["id"]}


def build():
    job = ed.Job("joined")
    wm = ed.BoundedOutOfOrderness(1_000)
    a = job.source(ed.sources.jsonl(os.environ["EDDIES_TEST_LEFT"]), timestamp="ts",
                   watermarks=wm, name="left").key_by("k")
    b = job.source(ed.sources.jsonl(os.environ["EDDIES_TEST_RIGHT"]), timestamp="ts",
                   watermarks=wm, name="right").key_by("k")
    interval = a.interval_join(b, lower=-300, upper=500, fn=ids("interval"), late=LATE,
                               name="interval")
    asof = a.join_asof(b, how="left", fn=ids("asof"), name="asof")
    interval.union(asof, interval.side_output(LATE).map(lambda e: {"j": "late", **e}))\\
        .sink(ed.sinks.jsonl(os.environ["EDDIES_TEST_OUT"]))
    return job


job = build()
'''


def make_input(path: Path, prefix: str, rng: random.Random) -> None:
    lines = []
    for i in range(N_EVENTS):
        ts = 1_000_000 + i * 20 - rng.randint(0, 800)
        if rng.random() < 0.005:
            ts -= rng.randint(1_500, 6_000)  # behind the watermark: late
        lines.append(json.dumps({"k": f"k{rng.randrange(60)}", "id": f"{prefix}{i}",
                                 "ts": ts}))
    path.write_text("\n".join(lines) + "\n")


def records(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.dumps(json.loads(line), sort_keys=True) for line in data.splitlines()]


@pytest.mark.slow
def test_joins_kill_9_and_resume_give_the_same_results(tmp_path: Path) -> None:
    rng = random.Random(5)
    make_input(tmp_path / "left.jsonl", "L", rng)
    make_input(tmp_path / "right.jsonl", "R", rng)
    (tmp_path / "joined_job.py").write_text(JOB)
    env = dict(os.environ, EDDIES_TEST_LEFT=str(tmp_path / "left.jsonl"),
               EDDIES_TEST_RIGHT=str(tmp_path / "right.jsonl"))
    run = [sys.executable, "-m", "eddies.runtime.cli", "run", "joined_job.py:job",
           "--checkpoint-interval", "2000", "--quiet"]

    # Uninterrupted run: the reference.
    ref_out = tmp_path / "reference.jsonl"
    subprocess.run(run, cwd=tmp_path, check=True, env=dict(env, EDDIES_TEST_OUT=str(ref_out)),
                   capture_output=True, timeout=300)
    reference = records(ref_out)
    kinds = {json.loads(r)["j"] for r in reference}
    assert kinds == {"interval", "asof", "late"}
    assert len(set(reference)) == len(reference)  # every result names a distinct pair

    out = tmp_path / "out.jsonl"
    cmd = [*run, "--state", f"rocksdb:{tmp_path / 'state'}"]
    run_env = dict(env, EDDIES_TEST_OUT=str(out))
    kill_while_writing(cmd, cwd=tmp_path, env=run_env, out=out, rng=rng, kills=KILLS,
                       grow=150_000, wait_s=60)
    done = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[resumed]" in done.stderr

    got = records(out)
    # The same results; a repeat after a crash is an identical re-emission, never a new value.
    assert set(got) == set(reference)
    assert len(got) >= len(reference)
    with ed.RocksDbStateBackend(tmp_path / "state", read_only=True) as db:
        join_cfs = [cf for cf in db.column_families() if cf.endswith(".buffer")]
        assert sorted(join_cfs) == ["asof.buffer", "interval.buffer"]
        assert sum(db.count(cf) for cf in join_cfs) == 0
        timer_cfs = [cf for cf in db.column_families() if cf.startswith("__timers__")]
        assert sum(db.count(cf) for cf in timer_cfs) == 0
