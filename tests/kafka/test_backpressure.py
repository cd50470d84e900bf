"""Backpressure: produced records awaiting acks are bounded, so a stalled output topic stops
the worker's fetching instead of growing its memory; read_committed Kafka sources."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.kafka.flow import FlowLimits, InFlight
from eddies.runtime.kafka.tansu import free_port

from .conftest import ROOT, produce, wait_until

pytestmark = pytest.mark.kafka

# -- the bounds, without a broker ----------------------------------------------------------------


def _acked(loop: asyncio.AbstractEventLoop, flow: InFlight, records: int,
           size: int) -> asyncio.Future[None]:
    ack: asyncio.Future[None] = loop.create_future()
    flow.sent(ack, records, size)
    return ack


def test_fetching_pauses_at_a_bound_and_resumes_at_half():
    loop = asyncio.new_event_loop()
    try:
        flow = InFlight(FlowLimits(max_in_flight_records=100, max_in_flight_bytes=10_000))
        acks = [_acked(loop, flow, 30, 300) for _ in range(3)]
        assert (flow.records, flow.bytes, flow.hold()) == (90, 900, False)
        acks.append(_acked(loop, flow, 30, 300))
        assert flow.full and flow.hold() and flow.pauses == 1
        acks[0].set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        assert flow.records == 90 and not flow.full
        assert flow.hold(), "below the bound but above half: still paused"
        acks[1].set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        assert flow.records == 60 and flow.hold()
        acks[2].set_exception(RuntimeError("broker gone"))  # a failed delivery frees its room
        loop.run_until_complete(asyncio.sleep(0))
        assert flow.records == 30 and not flow.hold() and flow.pauses == 1
        assert (flow.peak_records, flow.peak_bytes) == (120, 1200)
        # The bytes bound alone pauses too.
        big = _acked(loop, flow, 1, 10_000)
        assert flow.hold() and flow.pauses == 2
        big.set_result(None)
        acks[3].set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        assert (flow.records, flow.bytes, flow.hold()) == (0, 0, False)
        acks[2].exception()
    finally:
        loop.close()


def test_a_send_waits_for_room_and_draining_times_out():
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        flow = InFlight(FlowLimits(max_in_flight_records=10, max_in_flight_bytes=1 << 20))
        ack = _acked(loop, flow, 10, 100)
        steps: list[str] = []

        async def send() -> None:
            await flow.wait_for_room()
            steps.append(f"sent with {flow.records} in flight")

        task = asyncio.ensure_future(send())
        assert not await flow.wait_drained(0.05), "no ack: not drained within the timeout"
        steps.append("waited")
        ack.set_result(None)
        await task
        assert await flow.wait_drained(0.05)
        return steps

    assert asyncio.run(scenario()) == ["waited", "sent with 0 in flight"]


def test_a_worker_send_waits_for_room_and_pauses_its_reader(tmp_path):
    """The worker's produce side against a producer whose acks are held (a test double at
    the producer boundary): a round's outputs stop at the bound, then go on, in order, as acks
    come."""
    from aiokafka import AIOKafkaProducer

    from eddies.runtime.cli import load_target
    from eddies.runtime.kafka.worker import KafkaWorker

    class HeldAcks(AIOKafkaProducer):
        async def partitions_for(self, topic: str) -> set[int]:
            return {0, 1, 2}

        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            ack = asyncio.get_running_loop().create_future()
            self.sent.append((partition, [json.loads(r.value) for r in _records(batch)], ack))
            return ack

    def _records(batch: Any) -> list[Any]:
        from aiokafka.record.default_records import DefaultRecordBatch

        return list(DefaultRecordBatch(bytearray(batch._build())))

    worker = KafkaWorker(load_target("tests/kafka/backpressure_job.py:job"),
                         "kafka://127.0.0.1:9", tmp_path / "w",
                         flow=FlowLimits(max_in_flight_records=1_000))

    async def scenario() -> None:
        producer = HeldAcks(bootstrap_servers="127.0.0.1:9")
        producer.sent = []
        worker.producer = producer
        items = [(f"k{i % 30}".encode(), json.dumps(i).encode(), None, []) for i in range(5_000)]
        send = asyncio.ensure_future(worker._send("out", items))
        await asyncio.sleep(0.05)
        assert not send.done(), "the send waits for acks"
        per_batch = max(len(values) for _, values, _ in producer.sent)
        assert 1_000 <= worker.flow.records < 1_000 + per_batch
        assert worker.reader.paused and worker.flow.paused
        acked = 0
        while not send.done() or acked < len(producer.sent):
            for _, _, ack in producer.sent[acked:]:
                ack.set_result(None)
            acked = len(producer.sent)
            await asyncio.sleep(0.01)
        assert worker.flow.records == 0 and not worker.flow.hold()
        assert worker.flow.peak_records < 1_000 + per_batch
        by_partition: dict[int, list[int]] = defaultdict(list)
        for p, values, _ in producer.sent:
            by_partition[p].extend(values)
        assert sorted(v for values in by_partition.values() for v in values) == list(range(5_000))
        assert all(values == sorted(values) for values in by_partition.values()), "in order"

    try:
        asyncio.run(scenario())
    finally:
        worker.backend.close()


def test_flow_limits_and_isolation_level_are_checked():
    with pytest.raises(ConfigError, match="max_in_flight_bytes must be a positive int, got -1; "
                                          r"pass .* \(eddies worker --max-in-flight-bytes\)"):
        FlowLimits(max_in_flight_bytes=-1)
    assert FlowLimits(max_fetch_bytes=1 << 20).partition_fetch_bytes == 1 << 20
    assert ed.sources.kafka("t").isolation_level == "read_uncommitted"
    with pytest.raises(ConfigError, match="isolation_level must be one of .* got 'committed'"):
        ed.sources.kafka("t", isolation_level="committed")


# -- the reader's pause, on the broker ------------------------------------------------------------


def test_a_paused_reader_fetches_nothing_and_resumes_where_it_was(kafka_broker, tmp_path):
    from eddies.runtime.kafka.reader import PartitionReader

    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"k": f"k{i % 5}", "i": i}) + "\n" for i in range(3_000)))
    produce(kafka_broker, path, "bp-pause-in", "k", partitions=2)

    async def scenario() -> tuple[list[int], int, list[int]]:
        reader = PartitionReader(kafka_broker, "bp-pause", batch_records=500)
        await reader.start()
        try:
            reader.pause()
            # Partitions assigned while paused start paused.
            reader.assign({("bp-pause-in", 0), ("bp-pause-in", 1)},
                          {("bp-pause-in", 0): 0, ("bp-pause-in", 1): 0})
            assert reader.consumer.paused() == reader.consumer.assignment()
            while_paused = sum(map(len, (await reader.getmany(timeout_ms=300)).values()))
            reader.resume()
            seen: list[int] = []
            while len(seen) < 500:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    seen.extend(json.loads(r.value)["i"] for r in records)
            before = list(seen)
            reader.pause()  # with records fetched ahead and not returned yet
            assert reader.consumer.paused() == reader.consumer.assignment()
            for _ in range(3):
                while_paused += sum(map(len, (await reader.getmany(timeout_ms=100)).values()))
            reader.resume()
            assert not reader.consumer.paused()
            while len(seen) < 3_000:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    seen.extend(json.loads(r.value)["i"] for r in records)
            return before, while_paused, seen
        finally:
            await reader.stop()

    before, while_paused, seen = asyncio.run(scenario())
    assert while_paused == 0
    assert sorted(seen) == list(range(3_000)), "nothing skipped or read twice across the pause"
    assert len(before) >= 500


# -- a stalled output topic, 1M events ------------------------------------------------------------

EVENTS = 1_000_000
ACCOUNTS = 1_000
MAX_RECORDS = 20_000
MAX_BYTES = 4 << 20
BATCH_BYTES = 1 << 20
"""The producer's largest batch: a send may end one batch over the bound."""
RSS_BUDGET = MAX_BYTES + 6 * (4 << 20) + (16 << 20)
"""What the worker's RSS may grow by while its output is stalled: the bytes it may hold
unacknowledged, a fetch ahead per partition, and 16 MiB of slack for allocator pages and the
Python objects of a round. Without the bounds it reads on and holds every output of the
input: about 150 MB of record batches."""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def _held(control: Path) -> dict[str, Any]:
    path = control / "held.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def _produce_events(bootstrap: str, topic: str) -> dict[str, list[tuple[int, int]]]:
    """``EVENTS`` events keyed by account into ``topic`` (6 partitions), in large batches;
    returns each account's expected outputs, (count, seq) in order."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from eddies.runtime.kafka.topics import create_topics

    await create_topics(bootstrap, {topic: 6})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    expected: dict[str, list[tuple[int, int]]] = defaultdict(list)
    try:
        parts = sorted(await producer.partitions_for(topic))
        accounts = [f"a{i}" for i in range(ACCOUNTS)]
        keys = [a.encode() for a in accounts]
        partition_of = [DefaultPartitioner()(k, parts, parts) for k in keys]
        batches = {p: producer.create_batch() for p in parts}
        acks = []
        for i in range(EVENTS):
            a = (i * 7919) % ACCOUNTS
            seqs = expected[accounts[a]]
            seqs.append((len(seqs) + 1, i))
            value = b'{"account":"%s","seq":%d}' % (keys[a], i)
            p = partition_of[a]
            if batches[p].append(key=keys[a], value=value, timestamp=None) is None:
                acks.append(await producer.send_batch(batches[p], topic, partition=p))
                batches[p] = producer.create_batch()
                batches[p].append(key=keys[a], value=value, timestamp=None)
        for p, batch in batches.items():
            acks.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return expected


async def _outputs(bootstrap: str, topic: str) -> dict[str, list[tuple[int, int]]]:
    """Each account's outputs in ``topic``, (count, seq) in topic order."""
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    await consumer.start()
    got: dict[str, list[tuple[int, int]]] = defaultdict(list)
    try:
        tps = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 120
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, "could not read the outputs within 120 s"
            for records in (await consumer.getmany(timeout_ms=500,
                                                   max_records=500_000)).values():
                for r in records:
                    out = orjson.loads(r.value)
                    got[out["account"]].append((out["n"], out["seq"]))
    finally:
        await consumer.stop()
    return got


def test_a_stalled_output_topic_pauses_fetching_and_loses_nothing(kafka_broker, tmp_path):
    expected = asyncio.run(_produce_events(kafka_broker, "bp-stall-in"))
    control = tmp_path / "control"
    control.mkdir()
    port = free_port()
    env = {"EDDIES_JOB": "bp-stall", "EDDIES_INPUT": "bp-stall-in",
           "EDDIES_OUTPUT": "bp-stall-out"}
    # Checkpoints wait for every ack of their outputs, so frequent ones would also stop the
    # worker during a stall: rare ones leave the in-flight bounds alone to hold it.
    cmd = [sys.executable, str(ROOT / "tests" / "kafka" / "stall_worker.py"), "bp-stall-out",
           str(control), "worker", "tests/kafka/backpressure_job.py:job",
           "--broker", f"kafka://{kafka_broker}", "--state-dir", str(tmp_path / "w"),
           "--session-timeout", "6", "--checkpoint-ms", "600000",
           "--checkpoint-interval", "100000000", "--metrics-port", str(port),
           "--max-in-flight-records", str(MAX_RECORDS), "--max-in-flight-bytes", str(MAX_BYTES)]
    with open(tmp_path / "w.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env})
    try:
        _stall_and_release(proc, port, control, kafka_broker)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, (tmp_path / "w.log").read_text()[-3000:]
    got = asyncio.run(_outputs(kafka_broker, "bp-stall-out"))
    assert sum(map(len, got.values())) == EVENTS
    assert got == expected, "each account's outputs are its events, once each and in order"


def _stall_and_release(proc: subprocess.Popen[bytes], port: int, control: Path,
                       bootstrap: str) -> None:
    """While the output is stalled: the worker pauses fetching, and its memory and the
    records it holds stay within the bounds; then the stall ends and every output arrives."""
    wait_until(lambda: _held(control).get("stall_rss"), 90, "the output topic to stall")
    # Bounded, the worker pauses within a round or two; unbounded, it would read on to the
    # end of the input, holding every output.
    wait_until(lambda: proc.poll() is not None or _metric(port, "eddies_fetch_paused") == 1
               or (_metric(port, "eddies_events_in_total") or 0) >= EVENTS, 90,
               "the worker to pause fetching")
    samples = []
    for _ in range(10):  # stalled and paused: the worker waits, its memory stays put
        samples.append(_rss(proc.pid))
        time.sleep(0.2)
    held = _held(control)
    events_in = _metric(port, "eddies_events_in_total") or 0
    in_flight = _metric(port, "eddies_in_flight_records")
    stall_rss, peak_rss = held["stall_rss"], max(held["peak_stalled_rss"], *samples)
    print(f"stalled: rss {stall_rss >> 20} MiB when the stall began, at most "
          f"{peak_rss >> 20} MiB while stalled; held {held}; events in {events_in:.0f}; "
          f"in flight {in_flight}", file=sys.stderr)
    assert peak_rss - stall_rss <= RSS_BUDGET, "the worker's memory grew while stalled"
    assert held["peak_bytes"] <= MAX_BYTES + BATCH_BYTES, held
    assert held["peak_records"] <= MAX_RECORDS + BATCH_BYTES // 100, held
    assert events_in < EVENTS // 4, "the stall stopped the worker's reading"
    assert _metric(port, "eddies_fetch_paused") == 1
    assert in_flight is not None and MAX_RECORDS // 2 <= in_flight <= held["records"]
    (control / "release").touch()
    wait_until(lambda: _metric(port, "eddies_events_in_total") == EVENTS
               and _metric(port, "eddies_in_flight_records") == 0, 120,
               "every event processed and its output acknowledged once the stall ended")
    assert _metric(port, "eddies_fetch_paused") == 0
    assert (_metric(port, "eddies_fetch_pauses_total") or 0) >= 1


# -- read_committed sources, on a broker with transactions ----------------------------------------


class _TransactionalWriter:
    """A transactional producer in a thread of its own, so a transaction can stay open while
    the test goes on."""

    def __init__(self, bootstrap: str, topic: str, name: str) -> None:
        import threading

        self.bootstrap = bootstrap
        self.topic = topic
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.producer: Any = None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def _start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from eddies.runtime.kafka.topics import create_topics, topic_partitions

        if await topic_partitions(self.bootstrap, self.topic) is None:
            await create_topics(self.bootstrap, {self.topic: 2})
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap,
                                         transactional_id=f"{self.topic}-{self.name}")
        await self.producer.start()

    async def _write(self, seqs: range, outcome: str | None) -> None:
        producer = self.producer
        await producer.begin_transaction()
        acks = [await producer.send(self.topic, json.dumps({"account": f"a{i % 7}", "seq": i})
                                    .encode(), key=f"a{i % 7}".encode()) for i in seqs]
        await asyncio.gather(*acks)
        await self._end(outcome)

    async def _end(self, outcome: str | None) -> None:
        if outcome == "commit":
            await self.producer.commit_transaction()
        elif outcome == "abort":
            await self.producer.abort_transaction()

    def start(self) -> None:
        self.run(self._start())

    def write(self, seqs: range, outcome: str | None) -> None:
        """Events ``seqs`` in one transaction, then "commit", "abort" or None (left open)."""
        self.run(self._write(seqs, outcome))

    def end(self, outcome: str) -> None:
        """Commit or abort the open transaction."""
        self.run(self._end(outcome))

    def stop(self) -> None:
        self.run(self.producer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_read_committed_source_reads_committed_transactions_only(txn_broker, workers):
    from .conftest import read_topic_async

    # The aborted transaction comes from a writer of its own: noida-db lists an aborted
    # transaction in every later fetch response, so a consumer that fetches from past it
    # would skip the next transactions of the same producer id, committed or not.
    writer, aborting = (_TransactionalWriter(txn_broker, "rc-in", name)
                        for name in ("writer", "aborting"))
    writer.start()
    aborting.start()
    try:
        writer.write(range(0, 100), "commit")
        aborting.write(range(100, 200), "abort")
        writer.write(range(200, 300), "commit")
        writer.write(range(300, 400), None)  # open
        assert len(asyncio.run(read_topic_async(txn_broker, "rc-in"))) == 400, \
            "read_uncommitted sees the aborted and the open transaction"
        w = workers("tests/kafka/backpressure_job.py:job", txn_broker, "w",
                    {"EDDIES_JOB": "rc", "EDDIES_INPUT": "rc-in", "EDDIES_OUTPUT": "rc-out",
                     "EDDIES_ISOLATION": "read_committed"})

        def outputs() -> dict[str, list[tuple[int, int]]]:
            got: dict[str, list[tuple[int, int]]] = defaultdict(list)
            for r in asyncio.run(read_topic_async(txn_broker, "rc-out")):
                got[r["account"]].append((r["n"], r["seq"]))
            return got

        def expected(*seqs: range) -> dict[str, list[tuple[int, int]]]:
            out: dict[str, list[tuple[int, int]]] = defaultdict(list)
            for seq in sorted(s for r in seqs for s in r):
                out[f"a{seq % 7}"].append((len(out[f"a{seq % 7}"]) + 1, seq))
            return out

        # The open transaction holds the worker at the last stable offset: it has what came
        # before and was committed, each once and in order.
        wait_until(lambda: sum(map(len, outputs().values())) >= 200, 120,
                   "the committed events' outputs")
        assert outputs() == expected(range(0, 100), range(200, 300))
        writer.end("commit")
        wait_until(lambda: sum(map(len, outputs().values())) >= 300, 120,
                   "the open transaction's outputs once it is committed")
        assert w.stop() == 0
        assert outputs() == expected(range(0, 100), range(200, 300), range(300, 400))
    finally:
        writer.stop()
        aborting.stop()
