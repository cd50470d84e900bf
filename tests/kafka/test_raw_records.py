"""The reader's raw records (``reader._RawPartitionRecords``, taken a record batch at a time
through ``FetchResult.getall``) come out as aiokafka's own ``PartitionRecords`` give them:
the same offsets in the same order, whatever the takes (``getall`` with or without
``max_records``, ``getone``), from any fetch position inside the first record batch, across
compacted gaps and emptied batches, and the consumer's position after each take is past
the records taken and ends where aiokafka's does."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from eddies.runtime.kafka import reader

TP = TopicPartition("t", 0)
AIOKAFKA_RECORDS = next(c for c in fetcher.PartitionRecords.__mro__[1:]
                        if c.__name__ == "PartitionRecords")


@st.composite
def record_batches(draw: Any) -> list[tuple[list[int], int]]:
    """Record batches as (offset deltas of the records left, last offset delta): compaction
    removes records anywhere, the last ones included, and may leave a batch empty."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.integers(1, 8))
        kept = sorted(draw(st.sets(st.integers(0, size - 1), max_size=size)))
        out.append((kept, size - 1))
    return out


def _buffer(batches: list[tuple[list[int], int]]) -> tuple[bytes, list[int], int]:
    data, offsets, base = b"", [], 0
    for kept, last in batches:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for delta in kept:
            builder.append(delta, timestamp=1, key=None, value=b"v", headers=[])
        raw = bytearray(builder.build())
        raw[0:8] = base.to_bytes(8, "big")  # base offset
        raw[23:27] = struct.pack(">i", last)  # last offset delta (compaction keeps it)
        data += bytes(raw)
        offsets += [base + d for d in kept]
        base += last + 1
    return data, offsets, base


def _result(loop: asyncio.AbstractEventLoop, data: bytes, position: int,
            cls: Any, deserializer: Any) -> tuple[fetcher.FetchResult, Any]:
    subscription = SubscriptionState(loop=loop)
    subscription.assign_from_user({TP})
    assignment = subscription._subscription.assignment  # noqa: SLF001 - aiokafka's own
    assignment.state_value(TP).seek(position)
    records = cls(TP, MemoryRecords(data), None, position, None, deserializer, False, 0)
    return fetcher.FetchResult(TP, assignment=assignment, partition_records=records,
                               backoff=0), assignment.state_value(TP)


@given(record_batches(), st.data())
def test_raw_takes_give_aiokafkas_records_and_positions(
        batches: list[tuple[list[int], int]], data: st.DataObject) -> None:
    assert reader.RAW_RECORDS
    buffer, offsets, end = _buffer(batches)
    position = data.draw(st.integers(0, batches[0][1]), label="fetch position")
    async def takes() -> tuple[list[int], list[int], int, int]:
        loop = asyncio.get_running_loop()  # aiokafka's subscription state wants one
        raw, raw_state = _result(loop, buffer, position, reader._RawPartitionRecords,  # noqa: SLF001
                                 reader.raw_records)
        plain, plain_state = _result(loop, buffer, position, AIOKAFKA_RECORDS, None)
        taken: list[int] = []
        while raw.has_more():
            how = data.draw(st.sampled_from([None, 1, 2, 3, 5, "getone"]), label="take")
            if how == "getone":
                record = raw.getone()
                got = [] if record is None else [record]
            else:
                got = raw.getall(how)
                assert how is None or len(got) <= how
            taken += [r.offset for r in got]
            assert not taken or raw_state.position > taken[-1]
        expected: list[int] = []
        while plain.has_more():
            expected += [r.offset for r in plain.getall(2)]
        return taken, expected, raw_state.position, plain_state.position

    taken, expected, raw_position, plain_position = asyncio.run(takes())
    assert taken == expected == [o for o in offsets if o >= position]
    assert raw_position == plain_position == end
