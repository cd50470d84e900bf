"""The worker's data path (PartitionReader) and the faust adapter's boundary."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest

from eddies.runtime.kafka.reader import PartitionReader

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
