"""Backpressure must not distort event time, and two consumers must share the fetch.

Both tests drive the worker's own code without a broker: a reader double stands in for
aiokafka where the test needs to control what each fetch returns.
"""

from __future__ import annotations

import asyncio
import json
from collections import namedtuple
from typing import Any

from aiokafka import TopicPartition

import eddies as ed
from eddies.runtime.kafka.flow import FlowLimits
from eddies.runtime.kafka.reader import PartitionReader
from eddies.runtime.kafka.worker import KafkaWorker

Rec = namedtuple("Rec", "offset value headers key")


class Echo(ed.KeyedProcessFunction):
    def on_event(self, event, ctx):
        yield {"k": ctx.key, "ts": event["ts"]}


def _job() -> ed.Job:
    job = ed.Job("flow-idle")
    (job.source(ed.sources.kafka("fi-in", key="k"), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(0, idle_timeout=1_000))
        .key_by("k").process(Echo()).sink(ed.sinks.kafka("fi-out", key="k")))
    return job


class _Reader:
    """Returns the queued fetches one per round, nothing while paused."""

    def __init__(self) -> None:
        self.paused = False
        self.queue: list[dict[Any, list[Any]]] = []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        if self.paused or not self.queue:
            return {}
        return self.queue.pop(0)

    def assign(self, *args: Any) -> None:
        pass


def _records(p: int, offset: int, ts: int) -> dict[Any, list[Any]]:
    value = json.dumps({"k": f"k{p}", "ts": ts}).encode()
    return {TopicPartition("fi-in", p): [Rec(offset, value, [], None)]}


def test_a_backpressure_pause_is_not_idleness(tmp_path):
    clock = [0]
    worker = KafkaWorker(_job(), "kafka://127.0.0.1:9", str(tmp_path), checkpoint_ms=10**9,
                         checkpoint_interval=10**9, flow=FlowLimits(max_in_flight_records=10))
    worker.executor.clock = lambda: clock[0]
    reader = worker.reader = _Reader()
    worker._broadcast = None
    worker.partitions = 2
    worker.topic_counts = {"fi-in": 2}
    sent: list[Any] = []

    async def send(topic: str, items: list[Any], explicit: bool = False) -> list[Any]:
        sent.extend(items)
        return []

    worker._send = send
    process = next(n for n in worker.job.nodes if n.kind == "process")

    async def main() -> None:
        worker.executor.open_operators()
        worker._started.set()
        for p in (0, 1):
            worker.ready.add(("fi-in", p))
            worker.owned.add(("fi-in", p))
            worker.marks[("fi-in", p)] = worker._new_mark("fi-in", 0)
        reader.queue = [{**_records(0, 0, 1000), **_records(1, 0, 5000)}]
        await worker._round()
        assert worker.executor.wm[process] == 999
        # The output stalls: 10 records await acks, so fetching pauses for 2 s (twice the
        # idle timeout) while both partitions have a backlog.
        ack = asyncio.get_running_loop().create_future()
        worker.flow.sent(ack, 10, 100)
        for t in (500, 1000, 1500, 2000):
            clock[0] = t
            await worker._round()
        assert reader.paused
        ack.set_result(None)
        # The first fetch after the pause has partition 1 only; partition 0's next record
        # (ts 1001) is in order for it and must not be late.
        reader.queue = [_records(1, 1, 6000), _records(0, 1, 1001)]
        await worker._round()
        assert worker.executor.wm[process] == 999, "a paused partition counted as idle"
        await worker._round()

    try:
        asyncio.run(main())
    finally:
        worker.backend.close()
    assert worker.executor.stats.late_events == 0
    assert sorted(json.loads(v)["ts"] for _, v, *_ in sent if v) == [1000, 1001, 5000, 6000]


class _Consumer:
    """A consumer with an endless backlog of ``topic``: every getmany fills the batch."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.asked = 0

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(self.topic, 0)}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.asked += 1
        return {TopicPartition(self.topic, 0): [object()] * max_records}


def test_two_consumers_with_backlogs_take_turns():
    reader = PartitionReader("127.0.0.1:9", "g", batch_records=100,
                             isolation={"b": "read_committed"})
    plain, committed = _Consumer("a"), _Consumer("b")
    reader._consumers = {"read_uncommitted": plain, "read_committed": committed}
    reader._assigned = {("a", 0), ("b", 0)}

    async def rounds() -> list[str]:
        return [next(iter(await reader.getmany(timeout_ms=200))).topic for _ in range(6)]

    topics = asyncio.run(rounds())
    assert sorted(topics) == ["a", "a", "a", "b", "b", "b"], topics
    assert plain.asked == committed.asked == 3
