"""Standby replicas (``eddies worker --standbys N``): a worker keeps the other worker's
partitions warm by tailing their changelogs, and takes them over replaying only the tail."""

from __future__ import annotations

import pytest

from .conftest import produce, read_topic, wait_until
from .test_worker import TARGET, env, last_per_key, make_events, reference

pytestmark = pytest.mark.kafka


def takeovers(worker) -> list[dict]:
    return [r for r in worker.restores() if "source" in r]


def warm(worker) -> set[int]:
    return {r["partition"] for r in worker.restores() if r.get("standby") == "caught_up"}


def test_survivor_restores_from_its_standby_copy(kafka_broker, workers, tmp_path):
    first = make_events(tmp_path / "e1.jsonl", 30_000, 1_000, seed=21)
    second = make_events(tmp_path / "e2.jsonl", 30_000, 1_000, seed=22, t0=600_000)
    produce(kafka_broker, first, "warm-in", "account", partitions=6)
    a = workers(TARGET, kafka_broker, "a", env("warm"), "--standbys", "1")
    wait_until(lambda: len(takeovers(a)) == 6, 120, "worker a to own every partition")
    b = workers(TARGET, kafka_broker, "b", env("warm"), "--standbys", "1")
    expected_first = reference(first)
    wait_until(lambda: len(takeovers(b)) == 3 and {r["partition"] for r in takeovers(b)} <= warm(a)
               and last_per_key(kafka_broker, "warm-out") == expected_first, 120,
               "b to own half the partitions, a to keep them warm, and the first half done")
    lost = {r["partition"] for r in takeovers(b)}
    assert {r["source"] for r in takeovers(b)} == {"changelog"}  # b had no copy of its own
    before = len(takeovers(a))
    produce(kafka_broker, second, "warm-in", "account")
    done_first = len(read_topic(kafka_broker, "warm-out"))
    wait_until(lambda: len(read_topic(kafka_broker, "warm-out")) > done_first + 2_000, 120,
               "b to be processing the second half")
    b.kill9()
    wait_until(lambda: lost <= {r["partition"] for r in takeovers(a)[before:]}, 120,
               "worker a to take over the lost worker's partitions")
    taken = [r for r in takeovers(a)[before:] if r["partition"] in lost]
    assert {r["source"] for r in taken} == {"standby"}, taken
    for r in taken:  # only the tail after what the standby copy held was replayed
        assert r["read"] < r["skipped"], r
    expected = reference(first, second)
    wait_until(lambda: last_per_key(kafka_broker, "warm-out") == expected, 180,
               "totals after the loss to equal the local runner's")
    assert a.stop() == 0
