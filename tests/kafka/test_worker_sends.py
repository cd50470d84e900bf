"""What the worker hands its producer: complete batches (outputs, changelog deltas), closed so
the producer sends them at once instead of lingering for records that will not come."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch

from eddies.runtime.cli import load_target
from eddies.runtime.kafka.changelog import token_header
from eddies.runtime.kafka.worker import KafkaWorker

pytestmark = pytest.mark.kafka


class _Recording(AIOKafkaProducer):
    """Acknowledges every batch at once and keeps (topic, partition, closed?, records)."""

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        closed = batch.closed()
        records = [(r.key, r.value, list(r.headers))
                   for r in DefaultRecordBatch(bytearray(batch._build()))]
        self.sent.append((topic, partition, closed, records))
        ack = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


def test_batches_are_handed_over_closed_with_their_records(tmp_path):
    worker = KafkaWorker(load_target("tests/kafka/backpressure_job.py:job"),
                         "kafka://127.0.0.1:9", tmp_path / "w")
    header = [token_header(5)]
    deltas = {0: [(b"\x00\x00k%d" % i, b"v%d" % i, header) for i in range(3)],
              2: [(b"\x00\x02big%d" % i, bytes(300_000), header) for i in range(5)]}

    async def scenario() -> None:
        producer = _Recording(bootstrap_servers="127.0.0.1:9")
        producer.sent = []
        worker.producer = producer
        items = [(b"k%d" % i, b"%d" % i, None, []) for i in range(20)]
        await asyncio.gather(*await worker._send("out", items))
        await asyncio.gather(*await worker._send_changelog("cl", deltas))
        assert producer.sent, "nothing was sent"
        assert all(closed for _, _, closed, _ in producer.sent)
        outputs = [r for topic, _, _, records in producer.sent if topic == "out"
                   for r in records]
        assert sorted(outputs) == sorted((k, v, []) for k, v, _, _ in items)
        by_partition: dict[int, list[Any]] = {}
        for topic, p, _, records in producer.sent:
            if topic == "cl":
                by_partition.setdefault(p, []).extend(records)
        assert by_partition == {p: [(k, v, list(h)) for k, v, h in recs]
                                for p, recs in deltas.items()}
        # 1.5 MB of deltas in partition 2: more than one batch (max 1 MiB), in order.
        assert sum(1 for topic, p, _, _ in producer.sent if (topic, p) == ("cl", 2)) > 1

    try:
        asyncio.run(scenario())
    finally:
        worker.backend.close()
