"""Standby copies and rebalances against faults: a sweep of the worker's own key groups
only, a rebalance while the standby consumer connects, unmarked deltas that never commit,
a standby task that failed, exactly-once changelogs (transaction markers at the end)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from aiokafka import TopicPartition

from eddies.operators.kafka import KafkaSink
from eddies.runtime.kafka.changelog import (
    MARKER_KEY,
    Marker,
    changelog_partitions,
    encode_marker,
    token_header,
)
from eddies.runtime.kafka.plan import plan_job
from eddies.runtime.kafka.standby import Standbys
from eddies.runtime.kafka.worker import _WorkerExecutor
from eddies.state.backend import Batch
from eddies.state.rocksdb import RocksDbStateBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.kafka_totals import build  # noqa: E402

DAY = 86_400_000
CL, CP = "j-n-changelog", "j-__checkpoint__-changelog"


def delta(offset: int, key: bytes, token: int, topic_value: bytes = b"v") -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=key, value=topic_value,
                           headers=[token_header(token)])


def marker(offset: int, token: int, seq: int, partition: int = 1) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=MARKER_KEY,
                           value=encode_marker(Marker(token, partition, 0, seq)),
                           headers=[token_header(token)])


def _executor(path: Path, plan):
    backend = RocksDbStateBackend(str(path))
    ex = _WorkerExecutor(plan.job, backend, dead_sink=KafkaSink("d", None, "json", "__dl__"))
    ex.open_operators()
    return backend, ex


def test_the_sweep_leaves_standby_copies_to_their_owners_clock(tmp_path):
    """A worker's watermark is ahead of a partition it keeps warm: its sweep must not delete
    (nor changelog) that copy's live entries, which its owner still holds."""
    plan = plan_job(build("in", "out", "j", "account"))
    topics = plan.changelog_topics()
    src = next(n for n in plan.job.nodes if n.kind == "source")
    # The owner of key group 1: an account at t=0 (TTL one day), its watermark at 0.
    _, owner = _executor(tmp_path / "owner", plan)
    owner.pin_key_group(1)
    owner.push_records(src, [{"account": "a", "amount": 5, "ts": 0}], None, 0)
    owner.advance_time({src: [(0, False)]}, 0)
    batch = Batch()
    owner.checkpoint_ops(batch)
    parts = changelog_partitions(batch, topics, set(plan.broadcast_cfs), 5)
    # This worker keeps key group 1 warm and owns key group 0, two days later.
    backend, ex = _executor(tmp_path / "worker", plan)
    changelogged: list = []
    backend.add_write_listener(lambda b: changelogged.extend(b.ops))

    def quietly(b: Batch) -> None:
        n = len(changelogged)
        backend.write(b)
        del changelogged[n:]

    standbys = Standbys("127.0.0.1:9", plan.checkpoint_topic, topics, backend, quietly)
    standbys.assign({1})
    got = {TopicPartition(topic, 1): [SimpleNamespace(offset=i, key=k, value=v, headers=h)
                                      for i, (k, v, h) in enumerate(pp.get(1, []))]
           for topic, pp in parts.items()}
    got[TopicPartition(plan.checkpoint_topic, 1)] = [marker(0, 5, 1)]
    assert standbys.apply(got) == 2
    cf = "totals"
    copy = list(backend.iterate(cf, b"\x00\x01", b"\x00\x02"))
    assert len(copy) == 1
    ex.pin_key_group(0)
    ex.push_records(src, [{"account": "b", "amount": 1, "ts": 2 * DAY}], None, 0)
    ex.advance_time({src: [(2 * DAY, False)]}, 0)
    batch = Batch()
    ex.checkpoint_ops(batch)
    backend.write(batch)
    changelogged.clear()
    assert ex.sweep({0}) == 0  # key group 0's entry is live; key group 1 is not ours
    assert list(backend.iterate(cf, b"\x00\x01", b"\x00\x02")) == copy
    assert changelogged == []  # no tombstone for a changelog partition it does not own
    # Once it owns key group 1, its clock applies there too, from the same index.
    assert ex.sweep({0, 1}) == 1
    assert list(backend.iterate(cf, b"\x00\x01", b"\x00\x02")) == []
    assert {op[1] for op in changelogged} == {cf, "__expiry__.Totals"}
