"""A checkpoint's deltas as producer batches: the same records, partitions and order as the
changelog protocol defines them (``changelog_records``), without a broker."""

from __future__ import annotations

from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from eddies.runtime.kafka.changelog import (
    append_records,
    changelog_partitions,
    changelog_records,
    token_header,
)
from eddies.state.backend import Batch
from eddies.state.keys import encode_key

TOPICS = {"totals": "job-totals-changelog", "__expiry__.Op": "job-expiry-changelog",
          "__timers__.Op": "job-timers-changelog", "rules": "job-rules-changelog"}


def checkpoint_batch() -> Batch:
    """Every kind of op a checkpoint holds, over several key groups, in runs and not."""
    batch = Batch()
    stored = [bytes([0, g]) + encode_key(f"k{i}") for i, g in enumerate([3, 3, 1, 3, 0, 1])]
    batch.put_many("totals", stored, [f"v{i}".encode() for i in range(len(stored))])
    batch.delete_many("totals", [stored[2], stored[0]])
    batch.put("totals", b"\x00\x03x", b"v3")
    batch.delete("__timers__.Op", b"\x00\x04t")
    batch.delete_range("totals", b"\x00\x01", b"\x00\x02")
    batch.put("__expiry__.Op", (123).to_bytes(8, "big") + encode_key("totals") + stored[4], b"")
    batch.put("__meta__", b"m", b"v")  # never changelogged
    batch.put("rules", b"\x00\x00\x05\x00x", b"v")  # skipped: broadcast state
    return batch


def decoded(batches: list[BatchBuilder]) -> list[tuple[Any, Any, list[Any]]]:
    out = []
    for builder in batches:
        records = MemoryRecords(bytes(builder._build())).next_batch()
        out.extend((r.key, r.value, list(r.headers)) for r in records)
    return out


def test_changelog_partitions_hold_the_protocol_records_in_order():
    batch = checkpoint_batch()
    flat = changelog_records(batch, TOPICS, {"rules"}, 77)
    parts = changelog_partitions(batch, TOPICS, {"rules"}, 77)
    assert parts.keys() == flat.keys()
    for topic, items in flat.items():
        expected: dict[int, list[Any]] = {}
        for key, value, _, headers, p in items:
            expected.setdefault(p, []).append((key, value, headers))
        assert parts[topic] == expected
    totals = parts["job-totals-changelog"]
    assert sorted(totals) == [0, 1, 3]
    assert [v for _, v, _ in totals[3]] == [b"v0", b"v1", b"v3", None, b"v3"]
    assert totals[1][-1] == (b"\x00\x01", b"\x00\x02",
                             [token_header(77), ("eddies.op", b"delete_range")])


def test_records_go_into_producer_batches_unchanged():
    records = changelog_partitions(checkpoint_batch(), TOPICS, {"rules"}, 77)[
        "job-totals-changelog"][3]
    builder = BatchBuilder(1 << 20, 0)
    assert append_records(builder, records) == len(records)
    assert builder.record_count() == len(records)
    assert decoded([builder]) == [(k, v, h) for k, v, h in records]


def test_a_full_batch_is_closed_and_the_rest_goes_into_the_next():
    header = [token_header(5)]
    records = [(b"\x00\x02" + encode_key(f"key{i}"), b"x" * 100, header) for i in range(50)]
    batches = []
    start = 0
    while start < len(records):
        builder = BatchBuilder(1_000, 0)  # a few records each
        start = append_records(builder, records, start)
        assert builder.record_count() >= 1
        batches.append(builder)
    assert len(batches) > 5
    assert all(b.closed() for b in batches[:-1])
    assert decoded(batches) == [(k, v, h) for k, v, h in records]


def test_a_batch_with_serializers_takes_the_plain_append():
    builder = BatchBuilder(1 << 20, 0, key_serializer=lambda k: b"K" + k)
    assert append_records(builder, [(b"a", b"1", [])]) == 1
    assert decoded([builder]) == [(b"Ka", b"1", [])]
