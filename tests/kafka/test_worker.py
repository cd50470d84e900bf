"""Kafka workers against a real broker: scale-out, worker loss, restores and changelog cuts."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from pathlib import Path

import pytest

import eddies as ed
from eddies.runtime.kafka.changelog import decode_marker
from eddies.runtime.kafka.savepoint import read_topic_records
from eddies.runtime.kafka.tansu import free_port
from examples.kafka_totals import build_local

from .conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.kafka
TARGET = "examples/kafka_totals.py:job"


def make_events(path: Path, n: int, accounts: int, seed: int, t0: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"account": f"a{rng.randrange(accounts)}",
                                "ts": t0 + i * 10 - rng.randint(0, 3_000),
                                "amount": rng.randint(1, 100)}) + "\n")
    return path


def reference(*paths: Path) -> dict[str, tuple[int, int]]:
    """The local runner's final totals per account over the same events."""
    joined = paths[0].with_suffix(".all.jsonl")
    joined.write_text("".join(p.read_text() for p in paths))
    out = ed.sinks.collect()
    ed.run_local(build_local(joined, out))
    last = {}
    for r in out.items:
        last[r["account"]] = (r["count"], r["sum"])
    return last


def marked_offsets(bootstrap: str, job: str) -> int:
    """The input records job ``job``'s checkpoint markers cover (the last marker of each
    partition: its next input offset)."""
    got = asyncio.run(read_topic_records(bootstrap, f"{job}-__checkpoint__-changelog"))
    return sum(decode_marker(part[-1][1]).offset for part in got.values() if part)


def last_per_key(bootstrap: str, topic: str) -> dict[str, tuple[int, int]]:
    last = {}
    for r in read_topic(bootstrap, topic):
        last[r["account"]] = (r["count"], r["sum"])
    return last


def env(name: str, **more: str) -> dict[str, str]:
    return {"EDDIES_JOB": name, "EDDIES_INPUT": f"{name}-in", "EDDIES_OUTPUT": f"{name}-out",
            **more}


def test_two_workers_split_partitions_and_match_the_local_runner(kafka_broker, workers, tmp_path):
    events = make_events(tmp_path / "e.jsonl", 200_000, 2_000, seed=1)
    produce(kafka_broker, events, "two-in", "account", partitions=6)
    expected = reference(events)
    a = workers(TARGET, kafka_broker, "a", env("two"))
    b = workers(TARGET, kafka_broker, "b", env("two"))
    wait_until(lambda: last_per_key(kafka_broker, "two-out") == expected, 180,
               "both workers' totals to equal the local runner's")
    assert a.stop() == 0 and b.stop() == 0
    owned_a = {r["partition"] for r in a.restores()}
    owned_b = {r["partition"] for r in b.restores()}
    assert owned_a and owned_b, "each worker owned partitions"
    assert owned_a | owned_b == set(range(6))


def test_worker_loss_kill9_and_restart(kafka_broker, workers, tmp_path):
    first = make_events(tmp_path / "e1.jsonl", 60_000, 1_000, seed=2)
    second = make_events(tmp_path / "e2.jsonl", 60_000, 1_000, seed=7, t0=600_000)
    produce(kafka_broker, first, "loss-in", "account", partitions=6)
    a = workers(TARGET, kafka_broker, "a", env("loss"))
    b = workers(TARGET, kafka_broker, "b", env("loss"))
    expected_first = reference(first)
    wait_until(lambda: len(b.restores()) > 0
               and last_per_key(kafka_broker, "loss-out") == expected_first, 120,
               "both workers to own partitions and finish the first half")
    b_partitions = {r["partition"] for r in b.restores()}
    b.kill9()
    produce(kafka_broker, second, "loss-in", "account")  # b's partitions now have work
    wait_until(lambda: b_partitions <= {r["partition"] for r in a.restores()
                                        if r["source"] == "changelog"}, 120,
               "worker a to restore the lost worker's partitions from the changelog")
    b2 = workers(TARGET, kafka_broker, "b", env("loss"))
    expected = reference(first, second)
    wait_until(lambda: last_per_key(kafka_broker, "loss-out") == expected, 180,
               "totals after the loss to equal the local runner's")
    wait_until(lambda: len(b2.restores()) > len(b_partitions), 60, "the restarted worker to rejoin")
    assert a.stop() == 0 and b2.stop() == 0


def test_restart_restores_from_local_rocksdb(kafka_broker, workers, tmp_path):
    first = make_events(tmp_path / "e1.jsonl", 20_000, 300, seed=3)
    second = make_events(tmp_path / "e2.jsonl", 20_000, 300, seed=4, t0=200_000)
    produce(kafka_broker, first, "local-in", "account", partitions=6)
    expected_first = reference(first)
    w = workers(TARGET, kafka_broker, "w", env("local"))
    wait_until(lambda: last_per_key(kafka_broker, "local-out") == expected_first, 120,
               "the first half")
    restores_before = len(w.restores())
    # The outputs come before their checkpoint: wait for markers that cover the whole input,
    # then the worker is idle since its last checkpoint and local RocksDB holds marked state.
    wait_until(lambda: marked_offsets(kafka_broker, "local") == 20_000, 60,
               "a checkpoint marker covering the first half")
    w.kill9()
    produce(kafka_broker, second, "local-in", "account")
    port = free_port()
    w2 = workers(TARGET, kafka_broker, "w", env("local"), "--metrics-port", str(port))
    expected = reference(first, second)
    wait_until(lambda: last_per_key(kafka_broker, "local-out") == expected, 120, "both halves")
    # The worker serves /metrics and live state queries.
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b'eddies_events_in_total{job="local"' in metrics
    assert b'eddies_startup_phase_seconds{job="local",phase="restore"}' in metrics
    # Queries read checkpointed state, which may trail the outputs by a checkpoint.
    account, (count, total) = next(iter(expected.items()))

    def queried() -> list[tuple[list[str], list[int]]]:
        body = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/state/totals?key={account}", timeout=10).read())
        return [(e["key"], e["value"]) for e in body["entries"]]

    wait_until(lambda: queried() == [([account], [count, total])], 30,
               "the state query to answer the key's total")
    assert w2.stop() == 0
    after = w2.restores()[restores_before:]
    assert len(after) == 6
    assert {r["source"] for r in after} == {"local"}


def test_changelog_cut_between_deltas_and_marker_is_ignored(kafka_broker, workers, tmp_path):
    events = make_events(tmp_path / "e.jsonl", 30_000, 300, seed=5)
    produce(kafka_broker, events, "cut-in", "account", partitions=6)
    expected = reference(events)
    crashing = workers(TARGET, kafka_broker, "crash", env("cut"), "--checkpoint-interval", "2000",
                       crash_after_deltas=3)
    wait_until(lambda: crashing.proc.poll() is not None, 120, "the injected crash")
    assert crashing.proc.returncode == 17
    fresh = workers(TARGET, kafka_broker, "fresh", env("cut"))
    wait_until(lambda: last_per_key(kafka_broker, "cut-out") == expected, 120,
               "totals after the cut")
    assert fresh.stop() == 0
    restores = fresh.restores()
    assert {r["source"] for r in restores} == {"changelog"}
    assert sum(r["ignored"] for r in restores) > 0, "the unmarked deltas were ignored"


def test_repartition_when_the_topic_is_keyed_otherwise(kafka_broker, workers, tmp_path):
    events = make_events(tmp_path / "e.jsonl", 30_000, 500, seed=6)
    produce(kafka_broker, events, "rekey-in", None, partitions=4)  # not keyed by account
    expected = reference(events)
    w = workers(TARGET, kafka_broker, "w", env("rekey", EDDIES_INPUT_KEY=""))
    wait_until(lambda: last_per_key(kafka_broker, "rekey-out") == expected, 120,
               "repartitioned totals")
    assert w.stop() == 0
