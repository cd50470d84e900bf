"""Joins of two Kafka sources on `eddies worker`: co-partitioned inputs, kill -9 and restore,
results equal to the local runner's; the plan and the startup check, without a broker."""

from __future__ import annotations

import json
import os
import random
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

import eddies as ed
from eddies.runtime.kafka.changelog import InputPosition, Marker, decode_marker, encode_marker
from eddies.runtime.kafka.plan import plan_job
from eddies.state.keys import encode_key

from .conftest import Worker, produce, read_topic, wait_until
from .join_jobs import build_local

TARGET = "tests/kafka/join_jobs.py:job"
PARTITIONS = 6
# Per side; the acceptance size (200k a side) runs with EDDIES_JOIN_EVENTS=200000.
EVENTS = int(os.environ.get("EDDIES_JOIN_EVENTS", "50000"))


def _sentinels() -> list[str]:
    """Keys that reach every partition under both placements (Kafka's default partitioner
    on a keyed topic, crc32 of the encoded key on a repartition topic)."""
    parts = list(range(PARTITIONS))
    murmur: set[int] = set()
    crc: set[int] = set()
    keys = []
    i = 0
    while murmur != set(parts) or crc != set(parts):
        key = f"~end{i}"
        murmur.add(DefaultPartitioner()(key.encode(), parts, parts))
        crc.add(zlib.crc32(encode_key(key)) % PARTITIONS)
        keys.append(key)
        i += 1
    return keys


def make_side(path: Path, n: int, keys: int, seed: int, prefix: str, t0: int = 0,
              end: int | None = None) -> Path:
    """``n`` events over ``keys`` keys, out of order by up to 2.5 s; with ``end``, one
    event per sentinel key at ``end`` after them, so that every partition's watermark passes
    every real event."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"k": f"u{rng.randrange(keys)}",
                                "ts": t0 + i * 10 - rng.randint(0, 2_500),
                                "id": f"{prefix}{t0 + i}"}) + "\n")
        for key in _sentinels() if end is not None else ():
            f.write(json.dumps({"k": key, "ts": end, "id": f"{prefix}{key}"}) + "\n")
    return path


def _canon(results: list[Any]) -> set[str]:
    return {json.dumps(r, sort_keys=True) for r in results if not r["k"].startswith("~")}


def reference(tmp_path: Path, lefts: list[Path], rights: list[Path]) -> tuple[set[str], set[str]]:
    """The local runner's interval and as-of results over the same events."""
    left = tmp_path / "left.all.jsonl"
    right = tmp_path / "right.all.jsonl"
    left.write_text("".join(p.read_text() for p in lefts))
    right.write_text("".join(p.read_text() for p in rights))
    interval, asof = ed.sinks.collect(), ed.sinks.collect()
    ed.run_local(build_local(left, right, interval, asof))
    assert len(_canon(interval.items)) == len(interval.items) - len(
        [r for r in interval.items if r["k"].startswith("~")]), "no pair twice"
    return _canon(interval.items), _canon(asof.items)


def env(name: str, **more: str) -> dict[str, str]:
    return {"EDDIES_JOB": name, "EDDIES_LEFT": f"{name}-left", "EDDIES_RIGHT": f"{name}-right",
            "EDDIES_OUT": f"{name}-out", **more}


def checkpoints(worker: Worker) -> int:
    """The checkpoints ``worker`` took, from its last progress line."""
    counts = re.findall(r"([\d,]+) checkpoints", worker.log.read_text())
    return int(counts[-1].replace(",", "")) if counts else 0


def results(bootstrap: str, name: str) -> tuple[set[str], set[str]]:
    return (_canon(read_topic(bootstrap, f"{name}-out-interval")),
            _canon(read_topic(bootstrap, f"{name}-out-asof")))


# -- without a broker ------------------------------------------------------------------------

def _two_sources(left_key: str | None) -> ed.Job:
    job = ed.Job("j")
    lk = job.source(ed.sources.kafka("a", key=left_key), timestamp="ts").key_by("k")
    rk = job.source(ed.sources.kafka("b", key="k"), timestamp="ts").key_by("k")
    lk.interval_join(rk, lower=-1, upper=1, name="ij").sink(ed.sinks.kafka("out"))
    return job


def test_plan_keeps_two_co_partitioned_topics_as_the_key_groups():
    plan = plan_job(_two_sources("k"))
    assert plan.repartitions == {}
    assert plan.stateful_topics == ["a", "b"]
    assert plan.group_topics == ["a", "b"]
    assert "j-ij.buffer-changelog" in plan.changelog_topics().values()
    assert "j-__timers__.ij-changelog" in plan.changelog_topics().values()


def test_plan_repartitions_both_inputs_when_one_is_keyed_otherwise():
    """A repartition topic places keys by crc32 and a keyed topic by Kafka's partitioner:
    the two inputs of a join must agree, so both are repartitioned."""
    plan = plan_job(_two_sources(None))
    assert sorted(plan.repartitions.values()) == ["j-key_by-1-repartition",
                                                  "j-key_by-2-repartition"]
    assert plan.stateful_topics == sorted(plan.repartitions.values())
    assert set(plan.group_topics) == {"a", "b", *plan.repartitions.values()}


def test_a_marker_of_two_inputs_holds_both_positions():
    inputs = {"a": InputPosition(120, 50, {}), "b": InputPosition(80, 45, {"up:1": 7})}
    marker = decode_marker(encode_marker(Marker(9, 120, 50, 3, inputs=inputs)))
    assert marker.position("a") == InputPosition(120, 50, {})
    assert marker.position("b") == InputPosition(80, 45, {"up:1": 7})
    assert marker.position("c") is None


# -- against the broker ----------------------------------------------------------------------

@pytest.mark.kafka
def test_topics_with_different_partition_counts_are_refused_at_startup(
        kafka_broker, workers, tmp_path):
    left = make_side(tmp_path / "l.jsonl", 20, 5, seed=1, prefix="l")
    right = make_side(tmp_path / "r.jsonl", 20, 5, seed=2, prefix="r")
    produce(kafka_broker, left, "mis-left", "k", partitions=6)
    produce(kafka_broker, right, "mis-right", "k", partitions=4)
    w = workers(TARGET, kafka_broker, "w", env("mis"))
    w.proc.wait(60)
    log = w.log.read_text()
    assert w.proc.returncode == 1, log
    assert "error:" in log
    assert "'mis-left' has 6 partitions and 'mis-right' has 4 partitions" in log, log
    assert "co-partitioned" in log


@pytest.mark.kafka
@pytest.mark.parametrize("left_key", ["k", ""], ids=["co-partitioned", "repartitioned"])
def test_two_workers_kill9_and_restart_equal_the_local_runner(
        kafka_broker, workers, tmp_path, left_key):
    """Two workers, two input topics of 6 partitions; one killed -9 mid-run (its buffered
    join state only in the changelog) and restarted: the interval and as-of results equal
    the local runner's on the same input (repeats only as identical re-emissions)."""
    name = "jk" if left_key else "jr"
    n = EVENTS if left_key else EVENTS // 5
    half = n // 2
    end = n * 10 + 60_000
    l1 = make_side(tmp_path / "l1.jsonl", half, 2_000, seed=11, prefix="l")
    r1 = make_side(tmp_path / "r1.jsonl", half, 2_000, seed=12, prefix="r")
    l2 = make_side(tmp_path / "l2.jsonl", n - half, 2_000, seed=13, prefix="l", t0=half * 10,
                   end=end)
    r2 = make_side(tmp_path / "r2.jsonl", n - half, 2_000, seed=14, prefix="r", t0=half * 10,
                   end=end)
    produce(kafka_broker, l1, f"{name}-left", left_key or None, partitions=PARTITIONS)
    produce(kafka_broker, r1, f"{name}-right", "k", partitions=PARTITIONS)
    e = env(name, EDDIES_LEFT_KEY=left_key)
    args = ("--checkpoint-interval", "5000", "--progress-every", "0.5")
    a = workers(TARGET, kafka_broker, "a", e, *args)
    b = workers(TARGET, kafka_broker, "b", e, *args)
    wait_until(lambda: len(b.restores()) > 0 and len(a.restores()) > 0
               and checkpoints(b) >= 2 and read_topic(kafka_broker, f"{name}-out-asof"), 180,
               "both workers to own partitions, checkpoint and emit")
    b_groups = {r["partition"] for r in b.restores()}
    b.kill9()
    produce(kafka_broker, l2, f"{name}-left", left_key or None)
    produce(kafka_broker, r2, f"{name}-right", "k")
    wait_until(lambda: b_groups <= {r["partition"] for r in a.restores()
                                    if r["source"] == "changelog"}, 120,
               "worker a to restore the lost worker's key groups from the changelog")
    taken = [r for r in a.restores() if r["partition"] in b_groups]
    assert all(len(r.get("topics", [r["topic"]])) == 2 for r in taken), taken
    b2 = workers(TARGET, kafka_broker, "b", e, *args)
    interval, asof = reference(tmp_path, [l1, l2], [r1, r2])
    assert len(interval) > n // 10 and len(asof) == n
    wait_until(lambda: results(kafka_broker, name) == (interval, asof), max(300, n // 400),
               "the join results to equal the local runner's")
    assert a.stop() == 0 and b2.stop() == 0
