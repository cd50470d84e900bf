"""Standby copies and rebalances against faults: a sweep of the worker's own key groups
only, a rebalance while the standby consumer connects, unmarked deltas that never commit,
a standby task that failed, exactly-once changelogs (transaction markers at the end)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from eddies.operators.kafka import KafkaSink
from eddies.runtime.kafka.changelog import (
    MARKER_KEY,
    Marker,
    changelog_partitions,
    encode_marker,
    token_header,
)
from eddies.runtime.kafka.plan import plan_job
from eddies.runtime.kafka.standby import Standbys, read_position
from eddies.runtime.kafka.topics import create_topics
from eddies.runtime.kafka.worker import _WorkerExecutor
from eddies.state.backend import Batch
from eddies.state.memory import InMemoryStateBackend
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


def test_unmarked_deltas_are_dropped_once_a_marker_written_after_them_is_read():
    """An owner crashed between a checkpoint's deltas (in a state written rarely) and its
    marker: a marker written after those deltas proves they never commit, whatever changelog
    they are in; one written before them proves nothing."""
    backend = InMemoryStateBackend()
    rare = "j-rare-changelog"
    standbys = Standbys("127.0.0.1:9", CP, {"n": CL, "rare": rare}, backend, backend.write)
    standbys.assign({1})
    standbys.apply({TopicPartition(CL, 1): [delta(0, b"\x00\x01a", 5)],
                    TopicPartition(rare, 1): [delta(0, b"\x00\x01r", 6)],
                    TopicPartition(CP, 1): [marker(0, 5, 1)]})
    standbys.bound({1: 1})  # the checkpoint topic's end once checkpoint 6's delta was read
    assert standbys._unbounded() == []
    standbys.apply({TopicPartition(CL, 1): [delta(1, b"\x00\x01a", 7)],
                    TopicPartition(CP, 1): [marker(1, 7, 2)]})
    assert standbys.tails[1].pending["rare"] == []
    assert backend.get("rare", b"\x00\x01r") is None
    assert read_position(backend, 1).offsets == {CL: 2, rare: 1}
    # The consumer's positions after a fetch (past transaction markers) are read to.
    standbys.apply({}, {TopicPartition(CP, 1): 2, TopicPartition(CL, 1): 3,
                        TopicPartition(rare, 1): 1})
    assert read_position(backend, 1).offsets == {CL: 3, rare: 1}
    # Checkpoint 9's delta read while the markers are read only to offset 2 of 4: the
    # markers at 2 and 3 (checkpoints before 9) leave it waiting, 9's own applies it.
    standbys.apply({TopicPartition(rare, 1): [delta(1, b"\x00\x01r", 9)]})
    standbys.bound({1: 4})
    standbys.apply({TopicPartition(CP, 1): [marker(2, 8, 3), marker(3, 10, 4)]})
    assert [d[4] for d in standbys.tails[1].pending["rare"]] == [9]
    standbys.apply({TopicPartition(CP, 1): [marker(4, 9, 5)]})
    assert backend.get("rare", b"\x00\x01r") == b"v"


def test_a_position_read_before_any_marker_keeps_the_token_it_resumed_from():
    backend = InMemoryStateBackend()
    standbys = Standbys("127.0.0.1:9", CP, {"n": CL}, backend, backend.write)
    standbys.assign({1})
    standbys.apply({TopicPartition(CL, 1): [delta(0, b"\x00\x01a", 5)],
                    TopicPartition(CP, 1): [marker(0, 5, 1)]})
    assert read_position(backend, 1).token == 5
    standbys.assign(set())
    standbys.assign({1})  # resumes: the markers are read again from the start
    standbys.apply({TopicPartition(CL, 1): [delta(1, b"\x00\x01a", 6)]})
    assert read_position(backend, 1).token == 5


async def _standbys(bootstrap: str, name: str, **kw) -> tuple[Standbys, InMemoryStateBackend]:
    cp, cl = f"{name}-__checkpoint__-changelog", f"{name}-n-changelog"
    await create_topics(bootstrap, {cp: 3, cl: 3})
    backend = InMemoryStateBackend()
    return Standbys(bootstrap, cp, {"n": cl}, backend, backend.write, **kw), backend


async def _checkpoint(producer, name: str, p: int, key: bytes, token: int, seq: int) -> None:
    await producer.send_and_wait(f"{name}-n-changelog", key=key, value=b"v", partition=p,
                                 headers=[token_header(token)])
    await producer.send_and_wait(f"{name}-__checkpoint__-changelog", key=MARKER_KEY,
                                 value=encode_marker(Marker(token, 1, 0, seq)), partition=p,
                                 headers=[token_header(token)])


async def _until(check, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.kafka
def test_a_rebalance_while_the_standby_consumer_connects(kafka_broker):
    async def main() -> None:
        standbys, backend = await _standbys(kafka_broker, "sbrace")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            await _checkpoint(producer, "sbrace", 2, b"\x00\x02a", 5, 1)
            standbys.assign({1})
            start = asyncio.ensure_future(standbys.start())
            await asyncio.sleep(0)
            standbys.assign({1, 2})  # the worker's _on_assigned, while start() awaits
            assert not standbys.started
            await start
            await _until(lambda: backend.get("n", b"\x00\x02a") == b"v", "key group 2")
        finally:
            await standbys.stop()
            await producer.stop()

    asyncio.run(main())


@pytest.mark.kafka
def test_the_next_assign_restarts_a_failed_standby_task(kafka_broker, caplog):
    async def main() -> None:
        standbys, backend = await _standbys(kafka_broker, "sbfail")
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
        await producer.start()
        try:
            standbys.assign({1})
            await standbys.start()
            getmany = standbys._consumer.getmany
            fail = [True]

            async def faulty(*args, **kwargs):  # a fetch that fails once
                if fail.pop() if fail else False:
                    raise OSError("injected")
                return await getmany(*args, **kwargs)

            standbys._consumer.getmany = faulty
            await _until(lambda: standbys._task.done(), "the standby task to fail")
            assert standbys.partitions == set()
            standbys.assign({1, 2})
            await _checkpoint(producer, "sbfail", 2, b"\x00\x02a", 5, 1)
            await _until(lambda: backend.get("n", b"\x00\x02a") == b"v", "key group 2")
        finally:
            await standbys.stop()
            await producer.stop()

    asyncio.run(main())
    assert [r for r in caplog.records if "stopped tailing" in r.getMessage()]


@pytest.mark.kafka
def test_a_standby_of_an_exactly_once_changelog_catches_up(txn_broker):
    """Transaction markers follow every committed checkpoint: the standby reads up to the
    last stable offset, past the last record, and says it caught up."""
    async def main() -> None:
        warm: list[dict] = []
        standbys, backend = await _standbys(txn_broker, "sbtxn", on_warm=warm.append,
                                            isolation_level="read_committed")
        producer = AIOKafkaProducer(bootstrap_servers=txn_broker, transactional_id="sbtxn-0")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send("sbtxn-n-changelog", key=b"\x00\x00a", value=b"v",
                                    partition=0, headers=[token_header(5)])
                await producer.send("sbtxn-__checkpoint__-changelog", key=MARKER_KEY,
                                    value=encode_marker(Marker(5, 1, 0, 1)), partition=0,
                                    headers=[token_header(5)])
            standbys.assign({0})
            await standbys.start()
            await _until(lambda: bool(warm), "the standby to catch up")
            assert backend.get("n", b"\x00\x00a") == b"v"
            assert standbys.lag() == {0: 0}
        finally:
            await standbys.stop()
            await producer.stop()

    asyncio.run(main())


def test_healthz_waits_for_a_round_after_a_rebalance_that_kept_every_partition(tmp_path):
    """A rebalance that leaves this worker its restored partitions: /healthz is 503 from the
    rebalance until a round ran after it, not 200 from the round before."""
    from eddies.runtime.kafka.worker import KafkaWorker

    job = build("in", "out", "j", "account")
    worker = KafkaWorker(job, "kafka://127.0.0.1:9", tmp_path / "worker")
    try:
        kept = {("in", 0)}
        worker._started.set()
        worker.owned, worker.ready = set(kept), set(kept)
        worker._assignment_done = worker._processing = True
        assert worker.health()[0]
        asyncio.run(worker._on_assigned(kept))
        asyncio.run(worker._on_rebalance_complete())
        ok, body = worker.health()
        assert (ok, body["status"]) == (False, "restoring")
        worker._processing = worker._assignment_done and not worker.owned - worker.ready
        assert worker.health()[0]  # what _progress sets after the next round
    finally:
        worker.backend.close()
