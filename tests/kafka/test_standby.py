"""Standby replicas (``eddies worker --standbys N``): a worker keeps the other worker's
partitions warm by tailing their changelogs, and takes them over replaying only the tail."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
import pytest
from aiokafka import TopicPartition

from eddies.runtime.kafka.changelog import MARKER_KEY, Marker, encode_marker, token_header
from eddies.runtime.kafka.standby import StandbyPosition, Standbys, checkpoint_key, read_position
from eddies.runtime.keyed import META_CF
from eddies.state.backend import Batch
from eddies.state.memory import InMemoryStateBackend

from .conftest import produce, read_topic, wait_until
from .test_worker import TARGET, env, last_per_key, make_events, reference

CL, CP = "j-n-changelog", "j-__checkpoint__-changelog"


def delta(offset: int, key: bytes, value: bytes, token: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=key, value=value, headers=[token_header(token)])


def marker(offset: int, token: int, seq: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=MARKER_KEY,
                           value=encode_marker(Marker(token, 10, 0, seq)),
                           headers=[token_header(token)])


def test_a_standby_applies_deltas_once_their_marker_is_read_and_only_its_key_groups():
    backend = InMemoryStateBackend()
    standbys = Standbys("127.0.0.1:9", CP, {"n": CL}, backend, backend.write)
    standbys.assign({1})
    a, b = b"\x00\x01a", b"\x00\x01b"
    # Checkpoint 5's delta, then one of checkpoint 6, whose marker never comes (a crash).
    standbys.apply({TopicPartition(CL, 1): [delta(0, a, b"v1", 5), delta(1, b, b"x", 6)]})
    assert backend.get("n", a) is None  # no marker read yet
    assert read_position(backend, 1) == StandbyPosition(None, {CL: 0})
    standbys.apply({TopicPartition(CP, 1): [marker(0, 5, 1)]})
    assert (backend.get("n", a), backend.get("n", b)) == (b"v1", None)
    assert read_position(backend, 1) == StandbyPosition(5, {CL: 1})  # 6 may still commit
    # Checkpoint 7's delta and marker in one fetch: 6 can no longer commit, and is dropped.
    standbys.apply({TopicPartition(CL, 1): [delta(2, a, b"v2", 7)],
                    TopicPartition(CP, 1): [marker(1, 7, 2)]})
    assert (backend.get("n", a), backend.get("n", b)) == (b"v2", None)
    assert read_position(backend, 1) == StandbyPosition(7, {CL: 3})
    # Never a key group it does not keep warm: not assigned, or dropped by a rebalance.
    standbys.apply({TopicPartition(CL, 2): [delta(0, b"\x00\x02c", b"z", 7)]})
    assert backend.get("n", b"\x00\x02c") is None
    standbys.assign(set())
    standbys.apply({TopicPartition(CL, 1): [delta(3, a, b"v3", 7)]})
    assert backend.get("n", a) == b"v2"


def test_an_owners_checkpoint_invalidates_the_standby_position():
    backend = InMemoryStateBackend()
    standbys = Standbys("127.0.0.1:9", CP, {"n": CL}, backend, backend.write)
    standbys.assign({1})
    standbys.apply({TopicPartition(CP, 1): [marker(0, 5, 1)]})
    assert read_position(backend, 1) == StandbyPosition(5, {CL: 0})
    # The worker took the key group over and checkpointed it: its copy is its own.
    batch = Batch()
    batch.put(META_CF, checkpoint_key(1), msgpack.packb(9))
    backend.write(batch)
    assert read_position(backend, 1) is None


def takeovers(worker) -> list[dict]:
    return [r for r in worker.restores() if "source" in r]


def warm(worker) -> set[int]:
    return {r["partition"] for r in worker.restores() if r.get("standby") == "caught_up"}


@pytest.mark.kafka
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
