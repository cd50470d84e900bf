"""Exactly-once Kafka sinks: a checkpoint's outputs and markers in one broker transaction.

With ``sinks.kafka(topic, exactly_once=True)`` the worker writes that topic and the
checkpoint markers with a transactional producer, and commits the transaction at the end of
each checkpoint, after the changelog deltas are acknowledged. A ``read_committed`` consumer
of the topic therefore sees a checkpoint's records exactly when its markers are committed:
after a crash, the next owner resumes from the last committed markers and produces what
followed them again, while the crashed worker's open transaction is aborted. Changelog
deltas, repartition records and dead letters stay outside the transaction (deltas count only
with a committed marker of their token; repartition records are deduplicated downstream).
The group offsets of the checkpoint go into the same transaction.

One transaction per worker and checkpoint: a checkpoint's outputs cannot be told apart by
partition (timers of every key group fire in one pass), and aiokafka commits offsets in a
transaction without the group generation (TxnOffsetCommit v0), so a zombie cannot be fenced
by the group as in Kafka's exactly-once v2. Fencing goes through transactional ids instead:

- a worker takes a new transactional id ``<group>.<first partition>.<nonce>`` whenever its
  assignment changes (:func:`transactional_id`), and before producing under it, announces it
  for each of its partitions in the compacted topic ``<job>-__transactions__-changelog``::

      key    b"<topic>:<partition>"
      value  the transactional id (UTF-8)

- a worker that takes a partition over reads the last id announced for it and initializes a
  producer with that id (InitProducerId), before reading the partition's markers: the broker
  aborts the previous owner's open transaction and bumps its epoch, so a stalled previous
  owner can no longer commit (its next commit fails with ProducerFenced and the worker exits;
  restart it). Its partitions' markers are then read ``read_committed``.

A broker without transactions (Tansu) is refused at startup by :func:`check_transactions`,
never silently degraded to at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from eddies.errors import ConfigError, EddiesError
from eddies.runtime.kafka.topics import changelog_topic

__all__ = ["ExactlyOnceOutputs", "ProducerFencedError", "TransactionalProducer",
           "check_transactions", "end_offset", "last_announced", "partition_key",
           "transactional_id", "transactions_topic"]

log = logging.getLogger("eddies.worker")


class ProducerFencedError(EddiesError):
    """Another worker took this worker's partitions over; its transaction was aborted."""


def transactions_topic(job: str) -> str:
    """``<job>-__transactions__-changelog``: the last transactional id per partition.

    >>> transactions_topic("totals")
    'totals-__transactions__-changelog'
    """
    return changelog_topic(job, "__transactions__")


def transactional_id(group: str, partitions: Iterable[tuple[str, int]], nonce: str) -> str:
    """The transactional id of a worker's producer for one assignment: its group, its first
    partition (for people reading broker logs) and a nonce that makes every assignment's id
    new, so fencing an old one never hits a producer that is still in use.

    >>> transactional_id("eddies-totals", [("in", 3), ("in", 1)], "9f2c")
    'eddies-totals.in:1.9f2c'
    >>> transactional_id("eddies-totals", [], "9f2c")
    'eddies-totals.none.9f2c'
    """
    first = min(partitions, default=None)
    label = "none" if first is None else f"{first[0]}:{first[1]}"
    return f"{group}.{label}.{nonce}"


def partition_key(tp: tuple[str, int]) -> bytes:
    """The key of a partition's announcements.

    >>> partition_key(("in", 4))
    b'in:4'
    """
    return f"{tp[0]}:{tp[1]}".encode()


def last_announced(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[bytes, str]:
    """The last transactional id announced per partition key, in log order.

    >>> last_announced([(b"in:0", b"a"), (b"in:1", b"b"), (b"in:0", b"c"), (None, b"x")])
    {b'in:0': 'c', b'in:1': 'b'}
    """
    last: dict[bytes, str] = {}
    for key, value in records:
        if key is not None and value is not None:
            last[key] = value.decode()
    return last


async def check_transactions(bootstrap: str, sinks: Iterable[str]) -> None:
    """Raise ConfigError unless the broker implements transactions (InitProducerId answers).

    ``sinks``: the names of the exactly-once sinks, for the message."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap,
                                transactional_id=f"eddies-probe.{secrets.token_hex(6)}")
    try:
        await producer.start()
    except KafkaError as exc:
        names = ", ".join(repr(s) for s in sinks)
        raise ConfigError(
            f"sink {names} asks for exactly_once=True, but the broker at {bootstrap} does not "
            f"implement Kafka transactions (InitProducerId failed: {type(exc).__name__}: "
            f"{exc}); use a broker with transactions (Apache Kafka, Redpanda, noida-db), or "
            "drop exactly_once=True for at-least-once delivery"
        ) from exc
    finally:
        await producer.stop()


class ExactlyOnceOutputs:
    """The worker's transactional producer, its transaction per checkpoint, and fencing.

    Status: ``idle`` (no producer: none since the last change of partitions), ``ready`` (a
    producer, no transaction open), ``open`` (a transaction takes this checkpoint's records),
    ``fenced`` (another worker took over: every send and commit raises ProducerFencedError).
    The worker calls :meth:`take_over` before restoring partitions it did not own,
    :meth:`reassigned` once its partitions changed (after a checkpoint), :meth:`producer_for`
    for every send, :meth:`commit` at the end of every checkpoint and :meth:`close` when it
    stops. The first send after a change takes a new id for the partitions owned then.
    """

    def __init__(self, bootstrap: str, group: str, topics: Iterable[str], log_topic: str,
                 producer_options: Mapping[str, Any], plain: Any,
                 partitions: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """``topics``: the topics written in transactions (exactly-once sinks' and the
        checkpoint markers'); ``plain``: the worker's non-transactional producer, which
        announces ids; ``partitions()``: the partitions the worker owns and has restored."""
        self.bootstrap = bootstrap
        self.group = group
        self.topics = frozenset(topics)
        self.log_topic = log_topic
        self.options = dict(producer_options)
        self.plain = plain
        self.partitions = partitions
        self.producer: Any = None
        self.txn_id: str | None = None
        self.status = "idle"
        self.fenced: list[str] = []
        """Every id this worker fenced while taking partitions over (for tests and logs)."""

    def _new_producer(self, txn_id: str) -> Any:
        from aiokafka import AIOKafkaProducer

        return AIOKafkaProducer(bootstrap_servers=self.bootstrap, transactional_id=txn_id,
                                **self.options)

    async def start(self) -> None:
        """Create the announcements topic (one partition) if it does not exist."""
        from eddies.runtime.kafka.topics import create_topics, topic_partitions

        if await topic_partitions(self.bootstrap, self.log_topic) is None:
            await create_topics(self.bootstrap, {self.log_topic: 1})

    async def announced(self) -> dict[bytes, str]:
        """The last id announced per partition key (the whole announcements topic)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tp = TopicPartition(self.log_topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            records: list[tuple[bytes | None, bytes | None]] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                got = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
                records.extend((r.key, r.value) for r in got.get(tp, []))
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    return last_announced(records)
            raise EddiesError(f"could not read {self.log_topic}[0] to its end within 60 s")
        finally:
            await consumer.stop()

    async def take_over(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fence the last transactional id announced for each of ``partitions``: its open
        transaction is aborted and its producer can no longer commit."""
        wanted = {partition_key(tp) for tp in partitions}
        if not wanted:
            return
        last = await self.announced()
        for txn_id in sorted({last[k] for k in wanted if k in last} - {self.txn_id}):
            fence = self._new_producer(txn_id)
            await fence.start()  # InitProducerId: aborts txn_id's open transaction
            await fence.stop()
            self.fenced.append(txn_id)
            log.info("fenced transactional id %s (the previous owner of %s)", txn_id,
                     ", ".join(k.decode() for k in sorted(wanted) if last.get(k) == txn_id))

    async def reassigned(self) -> None:
        """The worker's partitions changed: stop the producer (its transaction was committed
        by the checkpoint before the change); the next send takes a new id."""
        if self.status == "open":
            raise EddiesError("the transactional producer's partitions changed with a "
                              "transaction open; the worker checkpoints before its partitions "
                              "change (a bug in eddies)")
        await self._stop_producer()

    async def _use(self) -> None:
        """A new transactional id for the partitions owned now, announced for each of them
        (acknowledged) before its producer starts."""
        owned = sorted(self.partitions())
        txn_id = transactional_id(self.group, owned, secrets.token_hex(6))
        acks = [await self.plain.send(self.log_topic, txn_id.encode(), key=partition_key(tp),
                                      partition=0) for tp in owned]
        for ack in acks:
            await ack  # announced before anything is produced under it
        self.producer = self._new_producer(txn_id)
        await self.producer.start()
        self.txn_id = txn_id
        self.status = "ready"

    async def producer_for(self, topic: str, plain: Any) -> Any:
        """The producer for ``topic``: the transactional one (with its transaction begun)
        for transactional topics, else ``plain``."""
        if topic not in self.topics:
            return plain
        if self.status == "fenced":
            raise self.fenced_error()
        if self.status == "idle":
            await self._use()
        if self.status == "ready":
            await self.producer.begin_transaction()
            self.status = "open"
        return TransactionalProducer(self.producer, self.fenced_error)

    def fenced_error(self) -> ProducerFencedError:
        """The error for a fenced producer; the producer can only be stopped from now on."""
        self.status = "fenced"
        return ProducerFencedError(
            f"transactional producer {self.txn_id!r} of group {self.group!r} was fenced: "
            "another worker took this worker's partitions over (it stalled longer than the "
            "session timeout); this checkpoint's outputs are aborted and the partitions "
            "resume on their new owner from the last committed checkpoint; restart this "
            "worker to rejoin the group")

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit the checkpoint's transaction, with the group offsets ``offsets``."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError, ProducerFenced

        if self.status == "fenced":
            raise self.fenced_error()
        if self.status == "idle":
            if not offsets:
                return
            await self._use()
        try:
            if self.status == "ready":
                await self.producer.begin_transaction()
                self.status = "open"
            if offsets:
                await self.producer.send_offsets_to_transaction(
                    {TopicPartition(t, p): off for (t, p), off in offsets.items()}, self.group)
            await self.producer.commit_transaction()
        except ProducerFenced as exc:
            raise self.fenced_error() from exc
        except KafkaError as exc:
            raise EddiesError(
                f"committing the transaction of {self.txn_id!r} failed: {type(exc).__name__}: "
                f"{exc}; the worker stops and its partitions resume from the last committed "
                "checkpoint"
            ) from exc
        self.status = "ready"

    async def close(self) -> None:
        """Abort an open transaction (its records are produced again by the next owner of
        the partitions, from the last checkpoint) and stop the producer."""
        from aiokafka.errors import KafkaError

        if self.status == "open":
            # Fenced or broker gone: the broker aborts it (on the fence, or at its timeout).
            with contextlib.suppress(KafkaError):
                await self.producer.abort_transaction()
            self.status = "ready"
        await self._stop_producer()

    async def _stop_producer(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        self.producer = None
        self.txn_id = None
        self.status = "idle"


class TransactionalProducer:
    """The transactional producer as the worker's sends use it (``create_batch``,
    ``partitions_for``, ``send_batch``): a send or delivery of a fenced producer raises
    :class:`ProducerFencedError`, which says what happened and what to do."""

    def __init__(self, producer: Any, fenced: Callable[[], ProducerFencedError]) -> None:
        self.producer = producer
        self.fenced = fenced

    def create_batch(self) -> Any:
        return self.producer.create_batch()

    async def partitions_for(self, topic: str) -> Any:
        return await self.producer.partitions_for(topic)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        from aiokafka.errors import ProducerFenced

        try:
            delivery = await self.producer.send_batch(batch, topic, partition=partition)
        except ProducerFenced as exc:
            raise self.fenced() from exc
        return asyncio.ensure_future(self._delivered(delivery))

    async def _delivered(self, delivery: Any) -> Any:
        from aiokafka.errors import ProducerFenced

        try:
            return await delivery
        except ProducerFenced as exc:
            raise self.fenced() from exc


def end_offset(consumer: Any, tp: Any, read_committed: bool) -> int | None:
    """Where reading ``tp`` to its end stops: the last stable offset for a ``read_committed``
    consumer (records at or past it belong to open transactions), else the high watermark."""
    if read_committed:
        lso = consumer.last_stable_offset(tp)
        return None if lso is None or lso < 0 else int(lso)
    return consumer.highwater(tp)
