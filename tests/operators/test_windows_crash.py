"""Windows survive kill -9: ``eddies run`` on RocksDB, killed mid-run and resumed, gives the
same final windows (and the same late events) as an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from .kill import kill_while_writing

N_EVENTS = 60_000
KILLS = 5

JOB = '''
import os
import eddies as ed

LATE = ed.OutputTag("late")


def build():
    job = ed.Job("windowed")
    events = job.source(ed.sources.jsonl(os.environ["EDDIES_TEST_IN"]), timestamp="ts",
                        watermarks=ed.BoundedOutOfOrderness(1_000))
    keyed = events.key_by("k")
    tumbling = keyed.window(ed.Tumbling(5_000), allowed_lateness=2_000, late=LATE)\\
        .aggregate(ed.Sum("v"), name="tumbling")
    sliding = keyed.window(ed.Sliding(10_000, 5_000)).aggregate(ed.Count(), name="sliding")
    sessions = keyed.window(ed.Session(3_000)).aggregate(ed.Count(), name="sessions")
    out = os.environ["EDDIES_TEST_OUT"]
    tumbling.map(lambda r: {**r, "w": "tumbling"}).union(
        sliding.map(lambda r: {**r, "w": "sliding"}),
        sessions.map(lambda r: {**r, "w": "sessions"}),
        tumbling.side_output(LATE).map(lambda e: {**e, "w": "late"}),
    ).sink(ed.sinks.jsonl(out))
    return job


job = build()
'''


def make_input(path: Path, rng: random.Random) -> None:
    lines = []
    for i in range(N_EVENTS):
        ts = 1_000_000 + i * 20 - rng.randint(0, 800)
        if rng.random() < 0.01:
            ts -= rng.randint(1_500, 6_000)  # behind the watermark: late or within lateness
        lines.append(json.dumps({"k": f"k{rng.randrange(40)}", "ts": ts, "v": rng.randint(1, 9)}))
    path.write_text("\n".join(lines) + "\n")


def summarize(records: list[dict]) -> tuple[dict, list]:
    final: dict[tuple, object] = {}
    late = []
    for r in records:
        if r["w"] == "late":
            late.append((r["k"], r["ts"], r["v"]))
        else:
            final[(r["w"], r["key"], r["start"], r["end"])] = r["value"]
    return final, sorted(late)


@pytest.mark.slow
def test_windows_kill_9_and_resume_give_the_same_windows(tmp_path: Path) -> None:
    rng = random.Random(77)
    source = tmp_path / "events.jsonl"
    make_input(source, rng)
    (tmp_path / "windowed_job.py").write_text(JOB)
    env = dict(os.environ, EDDIES_TEST_IN=str(source))

    # Uninterrupted run: the reference.
    ref_out = tmp_path / "reference.jsonl"
    subprocess.run([sys.executable, "-m", "eddies.runtime.cli", "run", "windowed_job.py:job",
                    "--checkpoint-interval", "2000", "--quiet"], cwd=tmp_path, check=True,
                   env=dict(env, EDDIES_TEST_OUT=str(ref_out)), capture_output=True, timeout=120)
    reference = [json.loads(line) for line in ref_out.read_text().splitlines()]

    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "eddies.runtime.cli", "run", "windowed_job.py:job",
           "--state", f"rocksdb:{tmp_path / 'state'}", "--checkpoint-interval", "2000",
           "--quiet"]
    run_env = dict(env, EDDIES_TEST_OUT=str(out))
    kill_while_writing(cmd, cwd=tmp_path, env=run_env, out=out, rng=rng, kills=KILLS,
                       grow=60_000, wait_s=30)
    done = subprocess.run(cmd, cwd=tmp_path, env=run_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "[resumed]" in done.stderr

    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.splitlines()]
    final, late = summarize(records)
    ref_final, ref_late = summarize(reference)
    assert final == ref_final
    assert late == ref_late and late, "the same late events, and there are some"
    # Every record written is one the uninterrupted run wrote too: a repeat after a crash is
    # an identical re-emission, never a new value.
    allowed = defaultdict(int)
    for r in reference:
        allowed[json.dumps(r, sort_keys=True)] += 1
    assert all(json.dumps(r, sort_keys=True) in allowed for r in records)

