"""A changelog written in another key layout is refused at restore, on a real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from eddies.runtime.kafka.changelog import MARKER_KEY, token_header

from .conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.kafka
TARGET = "examples/kafka_totals.py:job"


async def _send_marker(bootstrap: str, topic: str, partition: int, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=MARKER_KEY, partition=partition,
                                     headers=[token_header(99)])
    finally:
        await producer.stop()


def test_a_changelog_marker_without_the_key_layout_stops_the_restore(kafka_broker, workers,
                                                                      tmp_path: Path) -> None:
    import msgpack

    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"account": f"a{i % 20}", "ts": i * 10, "amount": 1})
                              + "\n" for i in range(500)))
    produce(kafka_broker, events, "layout-in", "account", partitions=2)
    env = {"EDDIES_JOB": "layout", "EDDIES_INPUT": "layout-in", "EDDIES_OUTPUT": "layout-out"}
    first = workers(TARGET, kafka_broker, "first", env)
    wait_until(lambda: len(read_topic(kafka_broker, "layout-out")) >= 500, 120,
               "the first run's outputs")
    assert first.stop() == 0

    # What an eddies of key layout 1 wrote: the same marker fields, no key_layout.
    old = msgpack.packb({"token": 99, "offset": 0, "watermark": 0, "seq": 1, "dedup": {}})
    asyncio.run(_send_marker(kafka_broker, "layout-__checkpoint__-changelog", 1, old))

    second = workers(TARGET, kafka_broker, "second", env)
    wait_until(lambda: second.proc.poll() is not None, 120, "the refused restore")
    assert second.proc.returncode != 0
    log = second.log.read_text()
    assert ("topic 'layout-__checkpoint__-changelog' partition 1: checkpoint marker (token 99) "
            "has no key layout") in log, log[-3_000:]
    assert "delete the job's changelog topics" in log
