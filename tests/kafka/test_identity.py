"""A job's changelog records the job (checkpoint markers carry its identity): a worker of the
same job name with other states stops at restore, before its first event, on a real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from eddies.runtime.kafka.changelog import decode_marker

from .conftest import ROOT, produce, read_topic, wait_until

pytestmark = pytest.mark.kafka
TARGET = "examples/kafka_totals.py:job"


async def _values(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of ``topic`` (2 partitions), raw."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[bytes] = []
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return out
            got = await consumer.getmany(timeout_ms=300)
            out.extend(r.value for records in got.values() for r in records)
    finally:
        await consumer.stop()


def test_a_worker_with_other_states_is_refused_at_restore(kafka_broker, workers,
                                                           tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text("".join(json.dumps({"account": f"a{i % 20}", "ts": i * 10, "amount": 1})
                              + "\n" for i in range(500)))
    produce(kafka_broker, events, "ident-in", "account", partitions=2)
    env = {"EDDIES_JOB": "ident", "EDDIES_INPUT": "ident-in", "EDDIES_OUTPUT": "ident-out"}
    first = workers(TARGET, kafka_broker, "first", env)
    wait_until(lambda: len(read_topic(kafka_broker, "ident-out")) >= 500, 120,
               "the first run's outputs")
    assert first.stop() == 0
    markers = [decode_marker(v) for v in asyncio.run(
        _values(kafka_broker, "ident-__checkpoint__-changelog"))]
    assert markers and all(m.identity is not None for m in markers)
    assert markers[-1].identity["job"] == "ident"
    assert markers[-1].identity["operators"] == [
        {"name": "Totals", "states": [["totals", "value"]]}]

    # The same job name and topics, its state now a ListState: replaying the ValueState's
    # changelog into it would misread every value.
    changed = tmp_path / "changed_totals.py"
    changed.write_text((ROOT / "examples" / "kafka_totals.py").read_text().replace(
        'ed.ValueState("totals", ttl=ed.Ttl(hours=24))', 'ed.ListState("totals")'))
    second = workers(f"{changed}:job", kafka_broker, "second", env)
    wait_until(lambda: second.proc.poll() is not None, 120, "the refused restore")
    assert second.proc.returncode != 0
    log = second.log.read_text()
    assert ("the changelog of topic 'ident-__checkpoint__-changelog' partition ") in log
    assert ("holds job 'ident' with other operators, states or sources than this one: "
            "operator 'Totals': state 'totals' was a value state and is now a list state. "
            "Its state and input positions do not fit the job as it is now: Give the changed "
            "job a new name") in log, log[-3_000:]
    assert len(read_topic(kafka_broker, "ident-out")) == 500  # no event went through
