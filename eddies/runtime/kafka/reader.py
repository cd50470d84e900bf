"""The worker's data path: an aiokafka consumer in the worker's event loop, assigned exactly the
partitions the group (``faust_io.FaustGroup``) gave this worker and that it has restored.

It never joins the group: it takes no part in assignment and commits nothing (commits go
through the group member, ``FaustGroup.commit``). Its group id only lets a partition without
an explicit position start at the group's committed offset (else at the earliest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["PartitionReader"]

Partition = tuple[str, int]


class PartitionReader:
    """Reads batches of records from an explicit set of partitions."""

    def __init__(self, bootstrap: str, group: str, *, batch_records: int,
                 partition_fetch_bytes: int = 4 << 20) -> None:
        self.batch_records = batch_records
        self._options: dict[str, Any] = dict(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=200,
            max_partition_fetch_bytes=partition_fetch_bytes, fetch_max_bytes=64 << 20)
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: set[Partition] = set()

    async def start(self) -> None:
        """Connect (in the event loop that will read)."""
        self._consumer = AIOKafkaConsumer(**self._options)
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("PartitionReader.start() first")
        return self._consumer

    def assign(self, partitions: set[Partition], positions: Mapping[Partition, int]) -> None:
        """Read ``partitions`` from now on; each one in ``positions`` from that offset, the
        others from where they were (from the group's committed offset if new).

        A partition left out drops what was fetched for it and not yet returned.
        """
        if partitions == self._assigned:
            return
        self.consumer.assign([TopicPartition(t, p) for t, p in sorted(partitions)])
        self._assigned = set(partitions)
        # A new assignment forgets every position: partitions the worker has read go on where
        # it is (their next offset), not back at the last commit.
        for tp in partitions:
            if tp in positions:
                self.seek(tp, positions[tp])

    async def lag(self) -> dict[Partition, int]:
        """Per assigned partition a fetch response came for: the records from its position
        (the next one getmany returns) to its high watermark as of that response. For the
        consumer lag: a few lookups per partition, no request."""
        out = {}
        consumer = self.consumer
        for t, p in self._assigned:
            tp = TopicPartition(t, p)
            end = consumer.highwater(tp)
            if end is not None:  # a fetch answered, so the position is known: no wait
                out[(t, p)] = max(0, end - await consumer.position(tp))
        return out

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on."""
        self.consumer.seek(TopicPartition(*partition), offset)

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        """Records fetched from the assigned partitions, by ``(topic, partition)``, at most
        ``batch_records`` in all; waits up to ``timeout_ms`` when none are ready."""
        if not self._assigned:
            return {}
        return await self.consumer.getmany(timeout_ms=timeout_ms,
                                            max_records=self.batch_records)
