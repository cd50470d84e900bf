"""The worker's data path (PartitionReader) and the faust adapter's boundary."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from eddies.runtime.kafka.reader import PartitionReader
from eddies.runtime.kafka.topics import create_topics

from .conftest import produce

pytestmark = pytest.mark.kafka
PACKAGE = Path(__file__).resolve().parents[2] / "eddies"


def test_only_the_adapter_imports_faust():
    """A faust upgrade touches one module: faust_io.py (and mode, faust's service layer)."""
    importers = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            if any(name.split(".")[0] in ("faust", "mode") for name in names):
                importers.add(path.relative_to(PACKAGE).as_posix())
    assert importers == {"runtime/kafka/faust_io.py"}


async def _commit(bootstrap: str, group: str, topic: str, partition: int, offset: int) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def _read(reader: PartitionReader, want: int) -> dict[tuple[str, int], list[int]]:
    """Offsets read per partition, until ``want`` records came."""
    got: dict[tuple[str, int], list[int]] = {}
    for _ in range(100):
        for tp, records in (await reader.getmany(timeout_ms=200)).items():
            got.setdefault((tp.topic, tp.partition), []).extend(r.offset for r in records)
        if sum(map(len, got.values())) >= want:
            break
    return got


def test_reader_reads_the_assigned_partitions_from_the_right_offsets(kafka_broker, tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(300)))
    produce(kafka_broker, events, "reader-in", None, partitions=3)  # 100 per partition
    asyncio.run(_commit(kafka_broker, "reader-g", "reader-in", 2, 40))

    async def scenario() -> None:
        reader = PartitionReader(kafka_broker, "reader-g", batch_records=1_000)
        await reader.start()
        try:
            # A partition with no position starts at the group's commit (none: the earliest);
            # one with a position (a restored checkpoint's offset) starts there.
            reader.assign({("reader-in", 0), ("reader-in", 1)}, {("reader-in", 1): 90})
            got = await _read(reader, 110)
            assert got == {("reader-in", 0): list(range(100)),
                           ("reader-in", 1): list(range(90, 100))}
            # A new assignment: partition 0 goes on from the worker's position (not from the
            # group's commit, which is none), partition 1 is no longer read, partition 2
            # starts at the group's committed offset.
            reader.assign({("reader-in", 0), ("reader-in", 2)}, {("reader-in", 0): 95})
            got = await _read(reader, 65)
            assert got == {("reader-in", 0): list(range(95, 100)),
                           ("reader-in", 2): list(range(40, 100))}
            reader.assign(set(), {})
            assert await reader.getmany(timeout_ms=50) == {}
        finally:
            await reader.stop()

    asyncio.run(scenario())


async def _produce_batch(bootstrap: str, topic: str, records: list[tuple[Any, ...]],
                         transactional_id: str | None = None, commit: bool = True) -> None:
    """``records`` (key, value, timestamp ms, headers) into partition 0 of ``topic`` as one
    record batch (inside a transaction, committed or aborted, with ``transactional_id``)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    await producer.start()
    try:
        if transactional_id is not None:
            await producer.begin_transaction()
        batch = producer.create_batch()
        for key, value, ts, headers in records:
            assert batch.append(key=key, value=value, timestamp=ts, headers=headers) is not None
        await (await producer.send_batch(batch, topic, partition=0))
        if transactional_id is not None:
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()


async def _consumer_records(bootstrap: str, topic: str, start: int,
                            isolation: str = "read_uncommitted") -> list[Any]:
    """What a consumer of the worker's process that is not the reader's gets from ``start``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level=isolation)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, start)
        got: list[Any] = []
        for _ in range(50):
            got.extend((await consumer.getmany(timeout_ms=200)).get(tp, []))
            if got and await consumer.position(tp) >= (consumer.highwater(tp) or 0):
                break
        return got
    finally:
        await consumer.stop()


def _fields(record: Any) -> tuple[Any, ...]:
    return (record.offset, record.timestamp, record.key, record.value, list(record.headers))


def test_reader_hands_out_the_batches_records_and_other_consumers_keep_theirs(kafka_broker):
    """The reader's records are aiokafka's own from the fetched batch (no ConsumerRecord per
    record), with the same fields; taken a few at a time, from the middle of a batch (the
    position a checkpoint restores), none is skipped or repeated. Any other consumer of the
    process still gets ConsumerRecord objects."""
    from aiokafka import ConsumerRecord

    from eddies.runtime.kafka.reader import RAW_RECORDS

    records = [(f"k{i}".encode(), b'{"i": %d}' % i, 1_000 + i,
                [("eddies.src", f"s:{i}".encode())] if i % 3 else [])
               for i in range(40)]
    records[7] = (None, None, 1_007, [("eddies.wm", b"5,0")])  # a control record: no value

    async def scenario() -> None:
        await create_topics(kafka_broker, {"raw-in": 1})
        await _produce_batch(kafka_broker, "raw-in", records)
        reader = PartitionReader(kafka_broker, "raw-g", batch_records=6)
        await reader.start()
        try:
            reader.assign({("raw-in", 0)}, {("raw-in", 0): 5})
            got: list[Any] = []
            for _ in range(50):
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    assert 0 < len(batch) <= 6
                    got.extend(batch)
                if len(got) >= 35:
                    break
        finally:
            await reader.stop()
        plain = await _consumer_records(kafka_broker, "raw-in", 5)
        assert RAW_RECORDS
        assert not any(isinstance(r, ConsumerRecord) for r in got)
        assert all(type(r) is ConsumerRecord for r in plain)
        assert [_fields(r) for r in got] == [_fields(r) for r in plain]
        assert [(r.offset, r.key, r.value, r.headers) for r in got[:3]] == [
            (5, b"k5", b'{"i": 5}', [("eddies.src", b"s:5")]),
            (6, b"k6", b'{"i": 6}', []),
            (7, None, None, [("eddies.wm", b"5,0")])]
        assert [r.offset for r in got] == list(range(5, 40))

    asyncio.run(scenario())


def test_reader_read_committed_skips_aborted_transactions(txn_broker):
    """Through the read_committed consumer, the records of an aborted transaction and the
    transactions' control records are left out, as aiokafka leaves them out."""
    async def scenario() -> None:
        await create_topics(txn_broker, {"raw-txn": 1})
        await _produce_batch(txn_broker, "raw-txn", [(b"a", b"1", 1, [])])
        await _produce_batch(txn_broker, "raw-txn", [(b"b", b"2", 2, []), (b"c", b"3", 3, [])],
                             transactional_id="raw-txn-t", commit=False)
        await _produce_batch(txn_broker, "raw-txn", [(b"d", b"4", 4, [])],
                             transactional_id="raw-txn-t", commit=True)
        await _produce_batch(txn_broker, "raw-txn", [(b"e", b"5", 5, [])])
        reader = PartitionReader(txn_broker, "raw-txn-g", batch_records=100,
                                 isolation={"raw-txn": "read_committed"})
        await reader.start()
        try:
            reader.assign({("raw-txn", 0)}, {("raw-txn", 0): 0})
            got: list[Any] = []
            for _ in range(50):
                for batch in (await reader.getmany(timeout_ms=200)).values():
                    got.extend(batch)
                if len(got) >= 3:
                    break
        finally:
            await reader.stop()
        plain = await _consumer_records(txn_broker, "raw-txn", 0, "read_committed")
        assert [r.value for r in got] == [b"1", b"4", b"5"]
        assert [_fields(r) for r in got] == [_fields(r) for r in plain]

    asyncio.run(scenario())
