"""The worker's data path: an aiokafka consumer in the worker's event loop, assigned exactly the
partitions the group (``faust_io.FaustGroup``) gave this worker and that it has restored.

It never joins the group: it takes no part in assignment and commits nothing (commits go
through the group member, ``FaustGroup.commit``). Its group id only lets a partition without
an explicit position start at the group's committed offset (else at the earliest).

Topics read ``read_committed`` (``ed.sources.kafka(topic, isolation_level="read_committed")``,
another job's exactly-once output) go through a second consumer with that isolation level;
the others through the first, ``read_uncommitted``. :meth:`PartitionReader.pause` stops
fetching every assigned partition (the worker's backpressure, ``flow.py``) until
:meth:`PartitionReader.resume`.

Its consumers return aiokafka's records as decoded from the fetched batches (``offset``,
``timestamp``, ``key``, ``value``, ``headers`` as a list), not a ``ConsumerRecord`` built per
record: that object, with its sizes and headers tuple, cost about a third of what aiokafka
spends per record. They are taken a record batch at a time, with no Python step per record.
A consumer asks for them with ``value_deserializer=raw_records``; every other consumer in the
process is left as it is (see :class:`_RawPartitionRecords`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.consumer import fetcher as _fetcher

from eddies.runtime.kafka.transactions import end_offset

__all__ = ["PartitionReader", "raw_records"]

Partition = tuple[str, int]
_DEFAULT = "read_uncommitted"


def raw_records(value: bytes | None) -> bytes | None:
    """The ``value_deserializer`` of a consumer whose ``getmany`` returns aiokafka's records
    as decoded from the fetched batches instead of ``ConsumerRecord`` objects: same
    ``offset``, ``timestamp``, ``key``, ``value`` (bytes), ``headers`` (a list of
    ``(str, bytes)``). Were the fetcher not patched (another aiokafka), the consumer would
    return ``ConsumerRecord`` objects with the same attributes: it is the identity.

    >>> raw_records(b"x")
    b'x'
    """
    return value


class _RawPartitionRecords(_fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, as it iterates them (aborted
    transactions and control batches skipped, the next fetch offset kept up to date), handing
    out the batch's records themselves when the consumer's value deserializer is
    :func:`raw_records`, and doing what aiokafka does for any other consumer.

    Installed as ``aiokafka.consumer.fetcher.PartitionRecords``, which the fetcher builds per
    fetched partition. Raw records are taken a record batch at a time (:meth:`take`, which
    ``FetchResult.getall`` calls for them, see :func:`_getall`): a list of the batch's
    records and a slice, with no Python step per record.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw = self._value_deserializer is raw_records
        """Whether the records are handed out raw (through :meth:`take`)."""
        if self.raw:
            self._batches: Iterator[tuple[list[Any], int]] | None = self._raw_batches()
            self._pending: list[Any] = []
            """The records of the current record batch; those from ``_at`` on are not taken."""
            self._at = 0
            self._pending_end = 0
            """The next offset after the current record batch (once there is one)."""
            # getone (next(records)) takes one at a time; getall goes through take().
            self._records_iterator = iter(self._take_one, None)

    def exhausted(self) -> bool:
        return self._at >= len(self._pending) and self._batches is None

    def _take_one(self) -> Any:
        taken = self.take(1)
        return taken[0] if taken else None

    def take(self, limit: int | None) -> list[Any]:
        """Up to ``limit`` records (None: all), in order; the next fetch offset follows."""
        out: list[Any] = []
        while limit is None or len(out) < limit:
            pending, at = self._pending, self._at
            if at >= len(pending):
                if self._batches is None:
                    break
                nxt = next(self._batches, None)
                if nxt is None:
                    self._batches = None  # no cycle left holding the fetched buffer
                    self._pending, self._at = [], 0
                    break
                (self._pending, self._pending_end), self._at = nxt, 0
                if not self._pending:
                    self.next_fetch_offset = self._pending_end
                continue
            end = len(pending) if limit is None else min(len(pending), at + limit - len(out))
            if at == 0 and end == len(pending) and not out:
                out = pending  # the whole batch, as it is (and no longer held here)
                self._pending, self._at = [], 0
                self.next_fetch_offset = self._pending_end
                continue
            out.extend(pending[at:end])
            self._at = end
            self.next_fetch_offset = (self._pending_end if end == len(pending)
                                      else pending[end - 1].offset + 1)
        return out

    def _raw_batches(self) -> Iterator[tuple[list[Any], int]]:
        # aiokafka's _unpack_records, a record batch at a time: its records from the
        # position on, and the offset after it.
        tp = self._tp
        records = self._records
        committed = self._isolation_level == _fetcher.READ_COMMITTED
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if committed and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            taken = list(batch)
            start = self.next_fetch_offset
            if taken and taken[0].offset < start:  # a batch that began before the position
                taken = [r for r in taken if r.offset >= start]
            yield taken, batch.next_offset


_GETALL = _fetcher.FetchResult.getall


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    """``FetchResult.getall``, taking a raw partition's records a record batch at a time
    (what aiokafka does otherwise, one by one: keep going, or stop at ``max_records`` with
    the position where the records taken end)."""
    records = self._partition_records
    if type(records) is not _RawPartitionRecords or not records.raw:
        return _GETALL(self, max_records)
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    out = records.take(max_records)
    self._update_position()
    if records.exhausted():
        self._partition_records = None
    return out


def _install_raw_records() -> bool:
    """Have aiokafka's fetcher build :class:`_RawPartitionRecords` and take their records
    through :func:`_getall`; False (nothing changed) if this aiokafka's fetcher lacks what
    they rely on."""
    base = _fetcher.PartitionRecords
    if issubclass(base, _RawPartitionRecords):
        return True
    fetch_result = getattr(_fetcher, "FetchResult", None)
    if not hasattr(_fetcher, "READ_COMMITTED") or fetch_result is None or not all(
            callable(getattr(base, name, None)) for name in (
                "_unpack_records", "_consume_aborted_up_to", "_contains_abort_marker")) \
            or not all(callable(getattr(fetch_result, name, None)) for name in (
                "getall", "check_assignment", "has_more", "_update_position")):
        return False
    _fetcher.PartitionRecords = _RawPartitionRecords
    fetch_result.getall = _getall
    return True


RAW_RECORDS = _install_raw_records()
"""Whether the reader's consumers get the batches' records (else ``ConsumerRecord``)."""


class PartitionReader:
    """Reads batches of records from an explicit set of partitions.

    ``isolation``: the isolation level of topics not read ``read_uncommitted``.
    ``fetch_max_bytes``: the largest fetch response; ``partition_fetch_bytes`` of it per
    partition. aiokafka buffers at most one response per partition, and fetches a partition
    again only once its records are taken.
    """

    def __init__(self, bootstrap: str, group: str, *, batch_records: int,
                 partition_fetch_bytes: int = 4 << 20, fetch_max_bytes: int = 64 << 20,
                 isolation: Mapping[str, str] | None = None) -> None:
        self.batch_records = batch_records
        self._options: dict[str, Any] = dict(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            value_deserializer=raw_records,
            auto_offset_reset="earliest", fetch_max_wait_ms=200,
            max_partition_fetch_bytes=min(partition_fetch_bytes, fetch_max_bytes),
            fetch_max_bytes=fetch_max_bytes)
        self._isolation = {t: level for t, level in (isolation or {}).items()
                           if level != _DEFAULT}
        self._consumers: dict[str, AIOKafkaConsumer] = {}
        self._assigned: set[Partition] = set()
        self._paused = False
        self._turn = 0  # which consumer getmany asks first (they take turns)

    async def start(self) -> None:
        """Connect (in the event loop that will read)."""
        for level in sorted({_DEFAULT, *self._isolation.values()}, reverse=True):
            consumer = AIOKafkaConsumer(**self._options, isolation_level=level)
            await consumer.start()
            self._consumers[level] = consumer

    async def stop(self) -> None:
        for consumer in self._consumers.values():
            await consumer.stop()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The ``read_uncommitted`` consumer (every topic not read ``read_committed``)."""
        return self.consumer_for("")

    def consumer_for(self, topic: str) -> AIOKafkaConsumer:
        """The consumer that reads ``topic``."""
        level = self._isolation.get(topic, _DEFAULT)
        if level not in self._consumers:
            raise RuntimeError("PartitionReader.start() first")
        return self._consumers[level]

    def isolation_level(self, topic: str) -> str:
        """``read_committed`` or ``read_uncommitted``: how ``topic`` is read."""
        return self._isolation.get(topic, _DEFAULT)

    def assign(self, partitions: set[Partition], positions: Mapping[Partition, int]) -> None:
        """Read ``partitions`` from now on; each one in ``positions`` from that offset, the
        others from where they were (from the group's committed offset if new).

        A partition left out drops what was fetched for it and not yet returned.
        """
        if partitions == self._assigned:
            return
        by_level: dict[str, list[TopicPartition]] = {level: [] for level in self._consumers}
        for t, p in sorted(partitions):
            by_level[self.isolation_level(t)].append(TopicPartition(t, p))
        for level, tps in by_level.items():
            consumer = self._consumers[level]
            consumer.assign(tps)
            if self._paused and tps:  # a new assignment starts unpaused
                consumer.pause(*tps)
        self._assigned = set(partitions)
        # A new assignment forgets every position: partitions the worker has read go on where
        # it is (their next offset), not back at the last commit.
        for tp in partitions:
            if tp in positions:
                self.seek(tp, positions[tp])

    async def lag(self) -> dict[Partition, int]:
        """Per assigned partition a fetch response came for: the records from its position
        (the next one getmany returns) to its end as of that response (the high watermark,
        or the last stable offset if read ``read_committed``). For the consumer lag: a few
        lookups per partition, no request."""
        out = {}
        for t, p in self._assigned:
            consumer, tp = self.consumer_for(t), TopicPartition(t, p)
            end = end_offset(consumer, tp, self.isolation_level(t) != _DEFAULT)
            if end is not None:  # a fetch answered, so the position is known: no wait
                out[(t, p)] = max(0, end - await consumer.position(tp))
        return out

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on."""
        self.consumer_for(partition[0]).seek(TopicPartition(*partition), offset)

    @property
    def paused(self) -> bool:
        """Whether fetching is paused (:meth:`pause`)."""
        return self._paused

    def pause(self) -> None:
        """Stop fetching the assigned partitions (and any assigned later) until
        :meth:`resume`. Positions stay where they are: records fetched and not returned yet
        are fetched again after the resume, so nothing is skipped."""
        if self._paused:
            return
        self._paused = True
        for consumer in self._consumers.values():
            tps = consumer.assignment()
            if tps:
                consumer.pause(*tps)

    def resume(self) -> None:
        """Fetch the assigned partitions again."""
        if not self._paused:
            return
        self._paused = False
        for consumer in self._consumers.values():
            tps = consumer.assignment()
            if tps:
                consumer.resume(*tps)

    async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
        """Records fetched from the assigned partitions, by ``(topic, partition)``, at most
        ``batch_records`` in all; waits up to ``timeout_ms`` when none are ready. Nothing
        while paused."""
        if not self._assigned or self._paused:
            return {}
        active = [c for c in self._consumers.values() if c.assignment()]
        if len(active) == 1:
            return await active[0].getmany(timeout_ms=timeout_ms,
                                           max_records=self.batch_records)
        out: dict[Any, list[Any]] = {}
        # Two consumers: what either has ready now, else each waits its share of the timeout.
        # They take turns at being asked first: one with a backlog of a full batch would
        # otherwise starve the other (its watermark, joins and lag held back).
        self._turn = turn = (self._turn + 1) % len(active)
        active = active[turn:] + active[:turn]
        for wait in (0, max(1, timeout_ms // len(active))):
            for consumer in active:
                left = self.batch_records - sum(len(b) for b in out.values())
                if left <= 0:
                    return out
                out.update(await consumer.getmany(timeout_ms=0 if out else wait,
                                                  max_records=left))
            if out:
                return out
        return out
