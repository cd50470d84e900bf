"""A Kafka worker restoring from local state: two backend round trips per partition, up to
the first events of every partition it restored."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.kafka
TARGET = "tests/kafka/startup_job.py:job"
PARTITIONS = 3


def events(path: Path, n: int, accounts: int, t0: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"account": f"a{i % accounts}", "ts": t0 + i * 10}) + "\n")
    return path


def counts(bootstrap: str, topic: str) -> dict[str, int]:
    last: dict[str, int] = {}
    for r in read_topic(bootstrap, topic):
        last[r["account"]] = r["n"]
    return last


def test_a_restore_from_local_state_takes_two_round_trips_per_partition(
        kafka_broker, workers, tmp_path):
    env = {"EDDIES_JOB": "su", "EDDIES_INPUT": "su-in", "EDDIES_OUTPUT": "su-out"}
    produce(kafka_broker, events(tmp_path / "e1.jsonl", 3_000, 200, 0), "su-in", "account",
            partitions=PARTITIONS)
    w = workers(TARGET, kafka_broker, "w", env)
    wait_until(lambda: counts(kafka_broker, "su-out") == {f"a{i}": 15 for i in range(200)},
               120, "the first events")
    assert w.stop() == 0  # a final checkpoint: local RocksDB holds every partition's state
    produce(kafka_broker, events(tmp_path / "e2.jsonl", 600, 200, 100_000), "su-in",
            "account")
    w2 = workers(TARGET, kafka_broker, "w", env)
    wait_until(lambda: counts(kafka_broker, "su-out") == {f"a{i}": 18 for i in range(200)},
               120, "the events after the restart")
    assert w2.stop() == 0
    restored = w2.restores()[PARTITIONS:]
    assert sorted(r["partition"] for r in restored) == list(range(PARTITIONS))
    assert {r["source"] for r in restored} == {"local"}
    # Per partition: its checkpoint metadata (one point read), then its key group's timers
    # for both operators and the states' emptiness probes, issued together.
    found = re.findall(r"restored key groups \[([\d, ]+)\] in (\d+) backend round trips",
                       w2.log.read_text())
    assert len(found) == 2, w2.log.read_text()[-2000:]  # both runs log to w.log
    groups, trips = found[-1]
    assert [int(g) for g in groups.split(",")] == list(range(PARTITIONS))
    assert int(trips) == 2 * PARTITIONS
    # The first batch is fetched before that preload, which reads its keys' values ahead
    # (one multi-get per state, in the same group): nothing is read per key until every
    # partition's first batch went through.
    first = re.findall(r"first events of key groups \[([\d, ]+)\] after (\d+) backend round "
                       r"trips", w2.log.read_text())
    assert len(first) == 2, w2.log.read_text()[-2000:]
    groups, trips = first[-1]
    assert [int(g) for g in groups.split(",")] == list(range(PARTITIONS))
    assert int(trips) == 2 * PARTITIONS
