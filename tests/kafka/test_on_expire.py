"""on_expire on Kafka workers: every expired value is reported, in the local runner's terms,
across a worker lost to kill -9 whose partitions another worker restores."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import eddies as ed

from .conftest import produce, read_topic, wait_until
from .expire_job import build

pytestmark = pytest.mark.kafka
TARGET = "tests/kafka/expire_job.py:job"
FLUSH = [f"flush{i}" for i in range(60)]  # spread over every partition: moves each one on


def write(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def make_events(n: int, seed: int, t0: int, i0: int = 0) -> list[dict]:
    """Bursts: 5 accounts active for 200 events (7.4 s), then quiet for a minute, far longer
    than the TTL, so that each burst expires at a time no partition's lag can blur."""
    rng = random.Random(seed)
    return [{"account": f"a{((i0 + i) // 200) % 10}-{rng.randrange(5)}",
             "ts": t0 + i * 37 - rng.randint(0, 900), "amount": rng.randint(1, 100)}
            for i in range(n)]


def reported(items: list[dict]) -> set[tuple]:
    return {(r["account"], r["count"], r["sum"], r["at"]) for r in items
            if not r["account"].startswith("flush")}


def test_expiries_survive_a_killed_worker_and_match_the_local_runner(
        kafka_broker, workers, tmp_path):
    first = make_events(3_000, seed=1, t0=1_000_000)
    second = make_events(3_000, seed=2, t0=1_000_000 + 3_000 * 37, i0=3_000)
    end = second[-1]["ts"] + 10_000_000
    flush = [{"account": k, "ts": end, "amount": 0} for k in FLUSH]
    env = {"EDDIES_JOB": "quiet", "EDDIES_INPUT": "quiet-in", "EDDIES_OUTPUT": "quiet-out"}
    out = ed.sinks.collect()
    ed.run_local(build(ed.sources.jsonl(write(tmp_path / "all.jsonl", first + second + flush)),
                       out, "quiet"))
    expected = reported(out.items)
    assert len(expected) > 100

    produce(kafka_broker, write(tmp_path / "e1.jsonl", first), "quiet-in", "account",
            partitions=6)
    a = workers(TARGET, kafka_broker, "a", env)
    b = workers(TARGET, kafka_broker, "b", env)
    wait_until(lambda: len(b.restores()) > 0 and len(a.restores()) > 0
               and len(reported(read_topic(kafka_broker, "quiet-out"))) > 20, 120,
               "both workers to own partitions and report the first expiries")
    b_partitions = {r["partition"] for r in b.restores()}
    b.kill9()
    produce(kafka_broker, write(tmp_path / "e2.jsonl", second + flush), "quiet-in", "account")
    wait_until(lambda: b_partitions <= {r["partition"] for r in a.restores()
                                        if r["source"] == "changelog"}, 120,
               "worker a to restore the lost worker's partitions")
    wait_until(lambda: reported(read_topic(kafka_broker, "quiet-out")) >= expected, 180,
               "every expiry the local runner reports")
    assert a.stop() == 0
    # Nothing reported that the local runner does not (sinks are at-least-once: repeats of
    # the same expiry after the kill are the same record).
    assert reported(read_topic(kafka_broker, "quiet-out")) == expected
