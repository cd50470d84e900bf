"""Crash and resume: ``eddies run`` on a RocksDB dir survives ``kill -9`` at random points.

The job keeps per-key, per-bucket counts and sums in a TTL'd MapState, closes each bucket with
an event-time timer, and carries a running total per key. Every output depends on state,
timers, the watermark and TTL, so anything lost or applied twice across a crash shows up as a
difference from the plain-Python reference.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

N_EVENTS = 100_000
N_BAD = 200
N_KEYS = 300
BUCKET = 10_000
TTL = 25_000
MAX_DISORDER = 3_000  # below the 5 s bound: no event is late, so the reference is exact
KILLS = 10

JOB = f'''
import os
import eddies as ed

BUCKET = {BUCKET}
TTL = {TTL}


class Buckets(ed.KeyedProcessFunction):
    buckets = ed.MapState("buckets", ttl=ed.Ttl(ms=TTL))  # bucket -> [count, sum]
    total = ed.ValueState("total")                          # [count, sum] of closed buckets

    def on_event(self, event, ctx):
        b = ctx.timestamp // BUCKET
        count, amount = self.buckets.get(b, (0, 0))
        self.buckets.put(b, [count + 1, amount + event["v"]])
        ctx.timers.register_event_time((b + 1) * BUCKET)

    def on_timer(self, t, ctx):
        b = t // BUCKET - 1
        count, amount = self.buckets.get(b)
        cum_count, cum_sum = self.total.get() or (0, 0)
        self.total.set([cum_count + count, cum_sum + amount])
        # Buckets up to this one whose TTL has not run out at the timer's time.
        live = sorted(k for k in self.buckets.keys() if k <= b)
        yield {{"key": ctx.key, "bucket": b, "count": count, "sum": amount,
               "cum_count": cum_count + count, "cum_sum": cum_sum + amount, "live": live}}


job = ed.Job("crashy")
(job.source(ed.sources.jsonl(os.environ["EDDIES_TEST_IN"]), timestamp="ts",
            watermarks=ed.BoundedOutOfOrderness(5_000))
    .key_by("k")
    .process(Buckets())
    .sink(ed.sinks.jsonl(os.environ["EDDIES_TEST_OUT"])))
'''


def make_input(path: Path, rng: random.Random) -> tuple[list[dict], list[int]]:
    """Valid events (out of order by up to MAX_DISORDER) with malformed lines mixed in."""
    events = []
    lines = []
    bad_lines = set(rng.sample(range(N_EVENTS + N_BAD), N_BAD))
    bad_numbers = []
    i = 0
    for lineno in range(1, N_EVENTS + N_BAD + 1):
        if lineno - 1 in bad_lines:
            lines.append(rng.choice(['{"k": "k1", "ts": ', '{"ts": 5, "v": 1}', "not json"]))
            bad_numbers.append(lineno)
            continue
        ts = 1_000_000 + i * 10 - rng.randint(0, MAX_DISORDER)
        event = {"k": f"k{rng.randrange(N_KEYS)}", "ts": ts, "v": rng.randint(1, 100)}
        events.append(event)
        lines.append(json.dumps(event))
        i += 1
    path.write_text("\n".join(lines) + "\n")
    return events, bad_numbers


def reference(events: list[dict]) -> dict[tuple[str, int], dict]:
    """What the job must output, one record per (key, bucket), in plain Python."""
    agg: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for e in events:  # file order: the last write of a bucket sets its TTL stamp
        b = e["ts"] // BUCKET
        count, amount, _ = agg[e["k"]].get(b, (0, 0, 0))
        agg[e["k"]][b] = [count + 1, amount + e["v"], e["ts"]]
    out = {}
    for key, buckets in agg.items():
        cum_count = cum_sum = 0
        for b in sorted(buckets):
            count, amount, _ = buckets[b]
            cum_count += count
            cum_sum += amount
            t = (b + 1) * BUCKET
            live = [k for k in sorted(buckets) if k <= b and buckets[k][2] + TTL > t]
            out[(key, b)] = {"key": key, "bucket": b, "count": count, "sum": amount,
                             "cum_count": cum_count, "cum_sum": cum_sum, "live": live}
    return out


def check_lines(path: Path) -> list[dict]:
    """Every line complete and valid JSON (no torn line anywhere)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} ends with a torn line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.slow
def test_kill_9_ten_times_then_finish(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    source = tmp_path / "events.jsonl"
    events, bad_numbers = make_input(source, rng)
    (tmp_path / "crashy_job.py").write_text(JOB)
    out = tmp_path / "out.jsonl"
    dead = tmp_path / "dead.jsonl"
    env = dict(os.environ, EDDIES_TEST_IN=str(source), EDDIES_TEST_OUT=str(out))
    cmd = [sys.executable, "-m", "eddies.runtime.cli", "run", "crashy_job.py:job",
           "--state", f"rocksdb:{tmp_path / 'state'}", "--checkpoint-interval", "2000",
           "--dead-letters", str(dead), "--quiet"]

    kills = 0
    while kills < KILLS:
        before = out.stat().st_size if out.exists() else 0
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # Kill at a random point once this run has written a random amount of output past
        # what was there: every run makes progress, yet ten runs cover about half the input
        # however fast the machine is.
        target = before + rng.randint(1, 120_000)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"run finished before kill {kills + 1} of {KILLS}: "
                        f"{err.decode(errors='replace')}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        kills += 1

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith("crashy: ") and "[resumed]" in summary, summary
    # This run's events plus those of the checkpoint it resumed from: every event, once.
    match = re.search(r": ([\d,]+) events in, .*\[resumed\] after ([\d,]+) events$", summary)
    assert match, summary
    assert sum(int(n.replace(",", "")) for n in match.groups()) == N_EVENTS + N_BAD, summary

    expected = reference(events)
    seen: dict[tuple[str, int], dict] = {}
    for record in check_lines(out):
        key = (record["key"], record["bucket"])
        if key in seen:  # a duplicate is allowed only if identical
            assert record == seen[key], f"conflicting outputs for {key}"
        seen[key] = record
    missing = expected.keys() - seen.keys()
    extra = seen.keys() - expected.keys()
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    wrong = [k for k in expected if seen[k] != expected[k]]
    assert not wrong, [(expected[k], seen[k]) for k in wrong[:3]]

    letters = check_lines(dead)
    assert sorted({d["position"]["line"] for d in letters}) == bad_numbers
    by_line: dict[int, dict] = {}
    for d in letters:
        assert by_line.setdefault(d["position"]["line"], d) == d
