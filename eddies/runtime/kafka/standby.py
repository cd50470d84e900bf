"""Standby replicas: warm local copies of partitions other workers own, kept by tailing
their changelogs, so that taking one over after a failure replays only the changelog's tail.

faust's assignor picks the standbys (``table_standby_replicas``: for each partition, up to
N members other than its owner, and on a rebalance it promotes a standby to owner where it
can); ``FaustGroup.standbys()`` hands them to the worker, which calls ``Standbys.assign``
with the key groups to keep warm, never one it owns. The tail follows the restore rules of
``changelog.py``: a delta is applied only once its checkpoint's marker has been read.

A standby key group starts from what the local RocksDB dir holds: if the last write to that
key group was a standby's (its checkpoint token is None and a standby position is stored),
tailing resumes at that position; else the key group is wiped and the changelog replayed
from its start, in the background. Each applied batch writes, in the same RocksDB batch::

    __meta__ ("kafka-standby", p)    msgpack {"token": last marker read or None,
                                              "offsets": {changelog topic: resume offset}}
    __meta__ ("kafka-checkpoint", p) msgpack None (the key group is not at a checkpoint of
                                     its own: the owner's checkpoints overwrite it with a token)

The resume offset of a changelog partition is the first record not applied yet: everything
before it was applied (its marker was read) or is known never to be committed (a later
checkpoint's delta in the same partition was applied: checkpoints of one owner are
sequential, so an earlier checkpoint's marker precedes the later one's). Replaying a
changelog from the resume offsets on, with every marker's token, therefore gives the state
a full replay would; that is how the worker takes over a standby key group
(``KafkaWorker._restore_key_group``, source ``standby``).

Deltas read before their marker wait in memory: in steady state, about one checkpoint per
key group. Those of an owner that crashed between a checkpoint's deltas and its marker are
dropped once a marker written after them is read (``Standbys.bound``), whichever changelog
they wait in. With ``read_committed`` (exactly-once sinks) the changelogs are read up to the
last stable offset, and the consumer's position past transaction markers is the resume
offset.

The worker's TTL sweep skips standby key groups (``Executor.sweep(groups)``): a copy's
entries expire by its owner's clock, whose deletes come through the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from eddies.runtime.kafka.changelog import MarkerLog, apply_deltas, read_token
from eddies.runtime.kafka.transactions import end_offset
from eddies.runtime.keyed import META_CF
from eddies.state.backend import Batch, StateBackend
from eddies.state.keys import encode_key

__all__ = ["StandbyPosition", "Standbys", "read_position", "standby_key"]

log = logging.getLogger("eddies.standby")


def standby_key(p: int) -> bytes:
    """The ``__meta__`` key of key group ``p``'s standby position."""
    return encode_key(("kafka-standby", p))


def checkpoint_key(p: int) -> bytes:
    """The ``__meta__`` key of key group ``p``'s last local checkpoint token."""
    return encode_key(("kafka-checkpoint", p))


@dataclass(frozen=True)
class StandbyPosition:
    """Where a standby copy of a key group stands in its changelog."""

    token: int | None
    """The last marker the standby read (None: none yet)."""
    offsets: dict[str, int]
    """Per changelog topic, the first offset not applied yet (resume there)."""

    def encode(self) -> bytes:
        """
        >>> StandbyPosition.decode(StandbyPosition(7, {"t": 3}).encode())
        StandbyPosition(token=7, offsets={'t': 3})
        """
        return msgpack.packb({"token": self.token, "offsets": self.offsets})

    @staticmethod
    def decode(data: bytes) -> StandbyPosition:
        d = msgpack.unpackb(data, raw=False)
        return StandbyPosition(d["token"], dict(d["offsets"]))


def read_position(backend: StateBackend, p: int) -> StandbyPosition | None:
    """Key group ``p``'s standby position, if the last write to its local copy was a
    standby's (else None: the local copy is at a checkpoint of its own, or absent)."""
    token = backend.get(META_CF, checkpoint_key(p))
    if token is None or msgpack.unpackb(token) is not None:
        return None
    data = backend.get(META_CF, standby_key(p))
    return None if data is None else StandbyPosition.decode(data)


@dataclass
class _Tail:
    """One standby key group: what was read of its markers and changelogs."""

    p: int
    markers: MarkerLog
    next: dict[str, int]
    """Per topic (the checkpoint topic and every changelog topic), the next offset to read."""
    pending: dict[str, list[tuple[int, Any, Any, Any, int | None]]] = field(default_factory=dict)
    """Per changelog cf, deltas read before their marker: (offset, key, value, headers,
    token), in changelog order."""
    token: int | None = None
    """The token of the standby position it resumed from (kept until a marker is read)."""
    bounds: dict[int, int] = field(default_factory=dict)
    """Per unmarked token pending: an end offset of the checkpoint topic's partition taken
    after one of its deltas was read. A marker at or past it was written after that delta,
    so by a later checkpoint (see ``Standbys.bound``)."""
    started: float = field(default_factory=time.monotonic)
    applied: int = 0
    warm: bool = False
    """Caught up with the changelog's end once (logged to restores.jsonl)."""


class Standbys:
    """Keeps the assigned standby key groups of a job warm in the local backend.

    ``write(batch)`` writes to the local backend without changelogging the batch;
    ``on_warm(entry)`` is told once a key group caught up (for ``restores.jsonl``);
    ``on_lag(p, records)`` gets each key group's lag after every poll (None: dropped).
    """

    def __init__(
        self,
        bootstrap: str,
        checkpoint_topic: str,
        changelog_topics: dict[str, str],
        backend: StateBackend,
        write: Callable[[Batch], None],
        *,
        isolation_level: str = "read_uncommitted",
        on_warm: Callable[[dict[str, Any]], None] | None = None,
        on_lag: Callable[[int, int | None], None] | None = None,
    ) -> None:
        self.checkpoint_topic = checkpoint_topic
        self.cf_of = {topic: cf for cf, topic in changelog_topics.items()}
        self.backend = backend
        self.write = write
        self.on_warm = on_warm
        self.on_lag = on_lag
        self.tails: dict[int, _Tail] = {}
        self._options: dict[str, Any] = dict(
            bootstrap_servers=bootstrap, enable_auto_commit=False,
            isolation_level=isolation_level, fetch_max_wait_ms=200,
            max_partition_fetch_bytes=8 << 20, auto_offset_reset="earliest")
        self.read_committed = isolation_level == "read_committed"
        self._consumer: Any = None
        """Set once connected: a consumer still starting cannot be assigned or sought."""
        self._task: asyncio.Task[None] | None = None
        self._failed = False
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def started(self) -> bool:
        return self._consumer is not None

    @property
    def partitions(self) -> set[int]:
        """The key groups kept warm now."""
        return set(self.tails)

    def lag(self) -> dict[int, int]:
        """Per standby key group: changelog records not applied yet (as of the last fetch)."""
        return {p: self._lag(t) for p, t in self.tails.items()}

    def _lag(self, tail: _Tail) -> int:
        total = 0
        if self._consumer is None:
            return total
        for topic in self.cf_of:
            high = end_offset(self._consumer, TopicPartition(topic, tail.p), self.read_committed)
            if high is not None:
                total += max(0, high - self._resume(tail, topic))
        return total

    def _resume(self, tail: _Tail, topic: str) -> int:
        pending = tail.pending.get(self.cf_of[topic])
        return pending[0][0] if pending else tail.next[topic]

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and start tailing (in the worker's event loop)."""
        consumer = AIOKafkaConsumer(**self._options)
        self._starting = consumer
        await consumer.start()
        self._consumer = consumer  # assign() during the await only updated the tails
        self._task = asyncio.ensure_future(self._run())
        self._subscribe()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        consumer = self._consumer or getattr(self, "_starting", None)
        if consumer is not None:
            await consumer.stop()

    def assign(self, groups: set[int]) -> None:
        """Keep exactly ``groups`` warm from now on (call before restoring any key group
        this worker was given to own: none of its records is applied after this returns)."""
        for p in set(self.tails) - groups:
            del self.tails[p]
            if self.on_lag is not None:
                self.on_lag(p, None)
            log.info("standby key group %d dropped", p)
        for p in sorted(groups - set(self.tails)):
            self.tails[p] = self._begin(p)
        if self._consumer is not None:  # else start() subscribes
            self._subscribe()
            if self._task is not None and self._task.done() and not self._stopping:
                self._task = asyncio.ensure_future(self._run())  # the failure was logged

    def _subscribe(self) -> None:
        """The consumer reads the markers and changelogs of the tails, each from its next
        offset."""
        tps = [TopicPartition(t, p) for p in sorted(self.tails)
               for t in [self.checkpoint_topic, *self.cf_of]]
        if not self._consumer.assignment() and not tps:
            return
        self._consumer.assign(tps)
        for p, tail in self.tails.items():  # a new assignment forgets every position
            for topic, offset in tail.next.items():
                self._consumer.seek(TopicPartition(topic, p), offset)
        self._wake.set()

    def _begin(self, p: int) -> _Tail:
        """Start tailing ``p``: where its local standby copy stands, else from the start of
        the changelog, over a wiped key group."""
        markers = MarkerLog(f"topic {self.checkpoint_topic!r} partition {p}")
        position = read_position(self.backend, p)
        nxt = {self.checkpoint_topic: 0}  # markers: all of them, for the committed tokens
        token = None
        if position is not None and set(position.offsets) == set(self.cf_of):
            nxt.update(position.offsets)
            token = position.token
            log.info("standby key group %d resumes at %s", p, position.offsets)
        else:
            nxt.update({topic: 0 for topic in self.cf_of})
            batch = Batch()
            group, upper = p.to_bytes(2, "big"), (p + 1).to_bytes(2, "big")
            for cf in self.cf_of.values():
                if not cf.startswith("__expiry"):
                    batch.delete_range(cf, group, upper)
            batch.put(META_CF, checkpoint_key(p), msgpack.packb(None))
            batch.put(META_CF, standby_key(p), StandbyPosition(
                None, {topic: 0 for topic in self.cf_of}).encode())
            self.write(batch)
            log.info("standby key group %d replays its changelog from the start", p)
        return _Tail(p, markers, nxt, token=token)

    # -- tailing -------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._stopping:
                if not self.tails:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                got = await self._consumer.getmany(timeout_ms=500, max_records=50_000)
                positions = {tp: await self._consumer.position(tp)
                             for tp in self._consumer.assignment()}
                self.apply(got, positions)
                unbounded = [TopicPartition(self.checkpoint_topic, p) for p in self._unbounded()]
                if unbounded:
                    ends = await self._consumer.end_offsets(unbounded)
                    self.bound({tp.partition: offset for tp, offset in ends.items()})
        except asyncio.CancelledError:
            raise
        except Exception:
            # The data path goes on; taking over these key groups replays more of the
            # changelog (from where their copies stand), never applies a wrong delta. The
            # next assign() starts tailing again.
            if not self._failed:
                log.exception("standby replicas stopped tailing key groups %s; the worker "
                              "goes on, a takeover of them replays their changelog from "
                              "where their copies stand, and the next rebalance tails them "
                              "again", sorted(self.tails))
            else:
                log.warning("standby replicas stopped tailing key groups %s again",
                            sorted(self.tails))
            self._failed = True
            for p in list(self.tails):
                if self.on_lag is not None:
                    self.on_lag(p, None)
            self.tails.clear()

    def apply(self, got: dict[Any, list[Any]],
              positions: dict[Any, int] | None = None) -> int:
        """Apply a fetch's records to the standby key groups they belong to (records of a
        key group no longer kept warm are dropped); returns the deltas applied.
        ``positions``: the consumer's positions after the fetch, which may be past the last
        record (transaction markers); the partitions read up to them."""
        batch = Batch()
        touched: set[int] = set()
        # Markers first: a fetch may hold a checkpoint's deltas and its marker.
        for tp, records in sorted(got.items(), key=lambda kv: kv[0].topic != self.checkpoint_topic):
            tail = self.tails.get(tp.partition)
            if tail is None or not records or records[-1].offset < tail.next.get(tp.topic, 0):
                continue
            records = [r for r in records if r.offset >= tail.next[tp.topic]]
            tail.next[tp.topic] = records[-1].offset + 1
            touched.add(tail.p)
            if tp.topic == self.checkpoint_topic:
                dead: set[int] = set()
                for r in records:
                    if r.value is not None:
                        tail.markers.add(r.value)
                        dead.update(t for t, end in tail.bounds.items() if r.offset >= end)
                dead -= tail.markers.committed
                for cf, pending in tail.pending.items():
                    if dead:
                        pending[:] = [d for d in pending if d[4] not in dead]
                    tail.applied += self._flush(tail, cf, batch)
                for t in [t for t in tail.bounds if t in dead or t in tail.markers.committed]:
                    del tail.bounds[t]
            else:
                cf = self.cf_of[tp.topic]
                tail.pending.setdefault(cf, []).extend(
                    (r.offset, r.key, r.value, r.headers, read_token(r.headers)[0])
                    for r in records)
                tail.applied += self._flush(tail, cf, batch)
        applied = len(batch)
        for tp, position in (positions or {}).items():
            tail = self.tails.get(tp.partition)
            if tail is not None and position > tail.next.get(tp.topic, position):
                tail.next[tp.topic] = position  # past transaction markers: nothing to apply
                touched.add(tail.p)
        for p in touched:
            tail = self.tails[p]
            last = tail.markers.last
            batch.put(META_CF, checkpoint_key(p), msgpack.packb(None))
            batch.put(META_CF, standby_key(p), StandbyPosition(
                tail.token if last is None else last.token,
                {topic: self._resume(tail, topic) for topic in self.cf_of}).encode())
        if touched:
            self.write(batch)
        for p, tail in self.tails.items():
            lag = self._lag(tail)
            if self.on_lag is not None:
                self.on_lag(p, lag)
            if not tail.warm and lag == 0 and self._caught_up(tail):
                tail.warm = True
                if self.on_warm is not None:
                    self.on_warm({"partition": p, "standby": "caught_up",
                                  "records": tail.applied,
                                  "seconds": round(time.monotonic() - tail.started, 3)})
        return applied

    def _unbounded(self) -> list[int]:
        """Key groups with an unmarked token pending that has no end offset yet."""
        return [p for p, tail in self.tails.items()
                if any(d[4] is not None and d[4] not in tail.markers.committed
                       and d[4] not in tail.bounds
                       for pending in tail.pending.values() for d in pending)]

    def bound(self, ends: dict[int, int]) -> None:
        """Per key group, an end offset of its checkpoint topic's partition read after its
        pending deltas (``_run`` asks the broker). Each unmarked token pending gets it once.

        Checkpoints of a partition are sequential (the next one's deltas are sent once the
        marker before is acknowledged), so a marker written after a delta of token ``t`` is
        ``t``'s own or a later checkpoint's, after which ``t``'s marker can no longer come:
        ``t``'s deltas are dropped then. An owner that crashed between a checkpoint's deltas
        and its marker leaves no delta waiting in memory, whatever changelog it is in."""
        for p, end in ends.items():
            tail = self.tails.get(p)
            if tail is None:
                continue
            for pending in tail.pending.values():
                for d in pending:
                    if d[4] is not None and d[4] not in tail.markers.committed:
                        tail.bounds.setdefault(d[4], end)

    def _caught_up(self, tail: _Tail) -> bool:
        """Every partition of the key group was read up to its end (the last stable offset
        when reading committed transactions only, whose markers follow their records)."""
        if self._consumer is None:
            return False
        for topic in [self.checkpoint_topic, *self.cf_of]:
            high = end_offset(self._consumer, TopicPartition(topic, tail.p), self.read_committed)
            if high is None or tail.next[topic] < high:
                return False
        return True

    @staticmethod
    def _flush(tail: _Tail, cf: str, batch: Batch) -> int:
        """Apply ``cf``'s pending deltas up to the last one whose marker was read; the
        unmarked ones before it are dropped (never committed: see the module docstring)."""
        pending = tail.pending.get(cf)
        if not pending:
            return 0
        committed = tail.markers.committed
        last = len(pending) - 1
        while last >= 0 and pending[last][4] not in committed:
            last -= 1
        if last < 0:
            return 0
        applied, _ = apply_deltas(((k, v, h) for _, k, v, h, _ in pending[: last + 1]), cf,
                                  committed, batch)
        del pending[: last + 1]
        return applied
