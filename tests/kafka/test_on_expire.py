"""on_expire on Kafka workers: every expired value is reported, in the local runner's terms,
across a worker lost to kill -9 whose partitions another worker restores."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

import eddies as ed

from .conftest import produce, read_topic, wait_until
from .expire_job import build, build_late

pytestmark = pytest.mark.kafka
TARGET = "tests/kafka/expire_job.py:job"
FLUSH = [f"flush{i}" for i in range(60)]  # spread over every partition: moves each one on


def write(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def make_events(n: int, seed: int, t0: int, i0: int = 0) -> list[dict]:
    """Bursts: 5 accounts active for 200 events (7.4 s), each burst with accounts of its own,
    which then go quiet for good: each expires once, with the same value and time however
    far each partition's watermark lags (a worker reads a backlog one partition at a time,
    so an account that came back could find its old value unexpired). Between them, 60 ``n``
    accounts that never go quiet keep every partition's watermark moving."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = t0 + i * 37
        events.append({"account": f"a{(i0 + i) // 200}-{rng.randrange(5)}",
                       "ts": ts - rng.randint(0, 900), "amount": rng.randint(1, 100)})
        events.append({"account": f"n{i % 60}", "ts": ts - rng.randint(0, 900), "amount": 1})
    return events


def checkpointed(log: Path) -> bool:
    """Whether the worker's progress line shows events in and a checkpoint after them."""
    lines = re.findall(r"progress: ([\d,]+) events in.*?, (\d+) checkpoints", log.read_text())
    return bool(lines) and int(lines[-1][0].replace(",", "")) > 0 and int(lines[-1][1]) > 0


def reported(items: list[dict]) -> set[tuple]:
    return {(r["account"], r["count"], r["sum"], r["at"]) for r in items
            if r["account"].startswith("a")}


def test_expiries_survive_a_killed_worker_and_match_the_local_runner(
        kafka_broker, workers, tmp_path):
    first = make_events(3_000, seed=1, t0=1_000_000)
    second = make_events(3_000, seed=2, t0=1_000_000 + 3_000 * 37, i0=3_000)
    end = max(e["ts"] for e in second) + 10_000_000
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
               and len(reported(read_topic(kafka_broker, "quiet-out"))) > 20
               and checkpointed(b.log), 120,
               "both workers to own partitions, checkpoint and report the first expiries")
    b_partitions = {r["partition"] for r in b.restores()}
    b.kill9()
    produce(kafka_broker, write(tmp_path / "e2.jsonl", second + flush), "quiet-in", "account")
    wait_until(lambda: b_partitions <= {r["partition"] for r in a.restores()
                                        if r["source"] == "changelog"}, 120,
               "worker a to restore the lost worker's partitions")
    try:
        wait_until(lambda: reported(read_topic(kafka_broker, "quiet-out")) >= expected, 180,
                   "every expiry the local runner reports")
    except AssertionError:
        got = reported(read_topic(kafka_broker, "quiet-out"))
        raise AssertionError(f"missing {sorted(expected - got)[:10]} "
                             f"({len(expected - got)}), extra {sorted(got - expected)[:10]} "
                             f"({len(got - expected)})") from None
    assert a.stop() == 0
    # Nothing reported that the local runner does not (sinks are at-least-once: repeats of
    # the same expiry after the kill are the same record).
    assert reported(read_topic(kafka_broker, "quiet-out")) == expected


def test_a_late_value_restored_by_another_worker_reads_as_absent_and_fires_once(
        kafka_broker, workers, tmp_path):
    """A value written expired already (a late record) and checkpointed before event time
    moved: the worker that restores it after a kill -9 fires nothing at the restore, a late
    record of the key reads it as absent and replaces it, and one expiry is reported, as by
    the local runner."""
    first = [{"k": "w", "ts": 100_000, "i": 0},
             {"k": "x", "ts": 1_000, "i": 1},  # late: expires at 2,000, below the watermark
             {"k": "x", "ts": 1_100, "i": 2}]
    second = [{"k": "x", "ts": 1_200, "i": 3},  # late, after the restore
              {"k": "w", "ts": 200_000, "i": 4}]  # moves event time: x's value fires
    out = ed.sinks.collect()
    ed.run_local(build_late(ed.sources.jsonl(write(tmp_path / "all.jsonl", first + second)),
                            out, "late"))
    expected = out.items
    assert [r for r in expected if r["kind"] == "expired"][0] == {
        "kind": "expired", "k": "x", "v": 3, "at": 2_200}

    env = {"EDDIES_JOB": "late", "EDDIES_INPUT": "late-in", "EDDIES_OUTPUT": "late-out"}
    produce(kafka_broker, write(tmp_path / "e1.jsonl", first), "late-in", "k", partitions=1)
    a = workers("tests/kafka/expire_job.py:late", kafka_broker, "a", env)
    wait_until(lambda: re.search(r"progress: 3 events in.*?, [1-9]\d* checkpoints",
                                 a.log.read_text()) is not None, 120,
               "worker a to read the first records and checkpoint them")
    a.kill9()
    b = workers("tests/kafka/expire_job.py:late", kafka_broker, "b", env)
    wait_until(lambda: any(r["source"] == "changelog" for r in b.restores()), 120,
               "worker b to restore the partition from its changelog")
    produce(kafka_broker, write(tmp_path / "e2.jsonl", second), "late-in", "k")
    wait_until(lambda: any(r["kind"] == "expired" and r["k"] == "x"
                           for r in read_topic(kafka_broker, "late-out")), 120,
               "x's expiry")
    assert b.stop() == 0
    got = read_topic(kafka_broker, "late-out")
    # Sinks are at-least-once: a read repeated after the kill is the same record.
    assert [r for r in got if r["kind"] == "read" and r["i"] == 3] == [
        {"kind": "read", "k": "x", "i": 3, "seen": None}]
    assert [r for r in got if r["kind"] == "expired"] == [
        r for r in expected if r["kind"] == "expired" and r["k"] == "x"]
