"""The Kafka worker: faust-streaming for membership, eddies' executor for the data path.

faust-streaming runs the worker lifecycle and the consumer group (partition assignment,
rebalance callbacks), reached only through ``faust_io.FaustGroup``. Records never go through
faust: the worker's own task reads batches with a ``reader.PartitionReader`` assigned exactly
the partitions it owns and has restored, and pushes them through the executor. Per batch
round:

1. broadcast topics (read whole by every worker, outside the group) are polled first;
2. each assigned partition's records are decoded (bad records go to the dead-letter topic
   ``<job>-dead-letters``), deduplicated if they come from a repartition topic, and pushed
   with the partition as key group;
3. watermarks advance (min over owned partitions, idle ones left out), timers fire;
4. outputs, repartitioned records and dead letters are produced; every batch produced counts
   as in flight until acknowledged, and while the in-flight records or bytes are at their
   bound (``flow.py``) the reader's partitions are paused: a round then fetches nothing;
5. every ``checkpoint_interval`` events or ``checkpoint_ms``: the checkpoint protocol of
   ``changelog.py`` (deltas, then a marker per owned partition, then the local RocksDB write,
   then the group commit).

On assignment a key group (partition ``p`` of every stateful topic: with a join of two Kafka
sources, both inputs' partition ``p``, which faust assigns together) is restored from local
RocksDB when its last local checkpoint token equals the last marker in the changelog, else
from a standby copy (``--standbys``, ``standby.py``) by replaying the changelog's tail after
it, else by wiping the key group locally and replaying the changelog up to the last marker;
each input is then sought to its offset in the marker, and its partition watermark restored.
The operators' watermarks are then recomputed from the owned partitions', so they go back
when a restored partition is behind the ones already owned (taking over a lost worker's
partitions): else the restored partitions' records and timers would be judged against a
watermark they never reached. Each restore is appended to ``<state-dir>/restores.jsonl``
(partition, source: local, standby, changelog or empty; records replayed, seconds), and so is
each standby copy's first catch-up with its changelog (``"standby": "caught_up"``).

Stopping: the first SIGTERM or SIGINT ends the data task after its round with a final
checkpoint whose offsets are committed (if it holds restored partitions: else there is nothing
of its own to checkpoint), then faust stops the worker, which leaves the group
(the partitions move at once, not after the session timeout; a join in progress ends first,
and faust's shutdown waits for that, up to ``FaustGroup.stop_timeout``); a second signal
exits at once (code 128 + signal), from the last checkpoint. faust's own SIGINT/SIGTERM
handlers are replaced from its start on: a signal before the data task runs (during the
first rebalance) stops faust at once, with nothing of the worker's own to checkpoint.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgpack
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from eddies.errors import ConfigError, EddiesError, KeyEncodingError, StateIdentityError
from eddies.operators.kafka import KafkaSink, decode, dumps_exact
from eddies.operators.sources import DeadLetter, loads_exact, may_hold_a_long_int
from eddies.runtime.executor import RECORD_ERRORS, Executor, RunStats
from eddies.runtime.failures import error_lines
from eddies.runtime.graph import Job, Node
from eddies.runtime.identity import KAFKA_FIX, check_identity, job_identity
from eddies.runtime.kafka.changelog import (
    MARKER_KEY,
    InputPosition,
    Marker,
    MarkerLog,
    append_records,
    apply_deltas,
    changelog_partitions,
    encode_marker,
    new_token,
    token_header,
)
from eddies.runtime.kafka.faust_io import FaustGroup, GroupCallbacks
from eddies.runtime.kafka.flow import DEFAULT_LIMITS, FlowLimits, InFlight
from eddies.runtime.kafka.plan import Plan, describe, plan_job
from eddies.runtime.kafka.reader import PartitionReader
from eddies.runtime.kafka.standby import StandbyPosition, Standbys, read_position, standby_key
from eddies.runtime.kafka.topics import create_topics, topic_partitions
from eddies.runtime.kafka.transactions import (
    ExactlyOnceOutputs,
    check_transactions,
    end_offset,
    transactions_topic,
)
from eddies.runtime.keyed import META_CF
from eddies.runtime.observe import Observer, lag_text, listen_inspector
from eddies.runtime.preload import group_prefixes, load_key_groups
from eddies.runtime.watermarks import (
    MIN_TIME,
    BoundedOutOfOrderness,
    PartitionWatermark,
    merge_watermarks,
)
from eddies.state.backend import Batch, Op
from eddies.state.keys import encode_key
from eddies.state.rocksdb import RocksDbStateBackend

__all__ = ["KafkaWorker"]

log = logging.getLogger("eddies.worker")
_SRC = "eddies.src"
_GC_YOUNG = 100_000
_OFF = "eddies.off"
_WM = "eddies.wm"
"""Header of a watermark control record in a repartition topic: b"<watermark>,<idle 0|1>" of
the upstream partition named by the eddies.src header."""


class UpstreamWatermark(PartitionWatermark):
    """The watermark of a repartition topic's partition: the minimum of the watermarks its
    upstream partitions reported (control records, ``_WM``), idle ones left out, and never
    below the watermark it was restored at. Until every upstream partition reported, it
    stays where it was: the records in the partition mix upstream partitions that progress
    at different rates, so their timestamps alone bound nothing.

    >>> wm = UpstreamWatermark(BoundedOutOfOrderness(0), 0, frozenset({"a:0", "a:1"}))
    >>> wm.report("a:0", 50, False); wm.watermark
    -9223372036854775808
    >>> wm.report("a:1", 30, False); wm.watermark
    30
    >>> wm.report("a:1", 80, True); wm.watermark, wm.idle(0)
    (50, False)
    >>> wm.watermarks_before([10, 99])
    [50, 50, 50]
    """

    __slots__ = ("expected", "reported")

    def __init__(self, strategy: BoundedOutOfOrderness, now: int,
                 expected: frozenset[str]) -> None:
        super().__init__(strategy, now)
        self.expected = expected
        self.reported: dict[str, tuple[int, bool]] = {}

    def report(self, src: str, watermark: int, idle: bool) -> None:
        """Upstream partition ``src`` is at ``watermark`` (or idle)."""
        old = self.reported.get(src)
        self.reported[src] = (watermark if old is None else max(old[0], watermark), idle)
        if self.expected <= self.reported.keys():
            merged = merge_watermarks(self.reported[s] for s in self.expected)
            if merged is not None and merged > self.watermark:
                self.watermark = merged

    def observe(self, max_timestamp: int | None, now: int) -> None:
        if max_timestamp is not None:
            self.last_active = now

    def watermarks_before(self, stamps: list[int], since: int | None = None) -> list[int]:
        return [self.watermark if since is None else since] * (len(stamps) + 1)

    def restore(self, watermark: int) -> None:
        self.watermark = max(self.watermark, watermark)

    def idle(self, now: int) -> bool:
        return bool(self.expected) and self.expected <= self.reported.keys() and all(
            self.reported[s][1] for s in self.expected)


class _WorkerExecutor(Executor):
    """The executor plus the repartition step (records produced to a repartition topic)."""

    def __init__(self, job: Job, *args: Any, **kwargs: Any) -> None:
        self.repartition_out: dict[str, list[tuple[bytes, Any, Any, str | None, int]]] = {}
        self.cur_src: str | None = None
        self.cur_offsets: list[int] = []
        super().__init__(job, *args, builders={"repartition": _build_repartition}, **kwargs)

    def build_repartition(self, n: Node, emit: Callable[[Any, Any], None]) -> Any:
        buffer = self.repartition_out.setdefault(n.params["topic"], [])
        keyfn = n.params["key"]
        name = n.name
        dead = self.dead_letter

        def push_repartition(value: Any, ts: Any) -> None:
            try:
                encoded = encode_key(keyfn(value))
            except (*RECORD_ERRORS, KeyEncodingError) as exc:
                dead(self._record_letter(value, f"no key for {name!r}: "
                                         f"{type(exc).__name__}: {exc}", name))
                return
            src = self.cur_src
            offset = self.cur_offsets[self.cur_index] if src is not None else -1
            buffer.append((encoded, value, ts, src, offset))

        return push_repartition


def _build_repartition(ex: Any, n: Node, port: int, emit: Callable[[Any, Any], None]) -> Any:
    """The builder of the ``repartition`` kind (see eddies/runtime/builders.py)."""
    return ex.build_repartition(n, emit)


# A JSON int beyond 64 bits needs a run of 20 digits (or minus signs): loads_exact looks for
# one in every value; a batch is scanned once, in C-level passes, and only a batch with such
# a run pays for loads_exact per value.
_VALUE = attrgetter("value")


def _loads_json_batch(raws: list[bytes]) -> list[Any]:
    """``[loads_exact(raw) for raw in raws]``, faster; raises what orjson raises (the caller
    then decodes value by value, to find the bad ones).

    >>> _loads_json_batch([b'{"a": 1}', b'[100000000000000000000000000001]'])
    [{'a': 1}, [100000000000000000000000000001]]
    """
    values = list(map(orjson.loads, raws))
    if may_hold_a_long_int(b"\n".join(raws)):
        return [loads_exact(raw) for raw in raws]
    return values


def _watermark_report(record: Any) -> tuple[str, int, bool] | None:
    """(upstream partition, watermark, idle) of a watermark control record, else None."""
    if record.value is not None or not record.headers:
        return None
    src = report = None
    for name, value in record.headers:
        if name == _SRC:
            src = value.decode()
        elif name == _WM:
            report = value.decode()
    if src is None or report is None:
        return None
    watermark, idle = report.split(",")
    return src, int(watermark), idle == "1"


@dataclass(frozen=True)
class _RestoreReads:
    """What a key group's restore read first (``KafkaWorker._restore_reads``)."""

    token: Any
    """The local checkpoint token (None: none, or the local copy is a standby's)."""
    position: StandbyPosition | None
    records: dict[str, list[tuple[Any, Any, Any]]]
    """Per topic: the checkpoint markers, and after a standby position the changelogs' tails."""
    started: float
    at: float


def _restore_log(state_dir: Path, entry: dict[str, Any]) -> None:
    with open(state_dir / "restores.jsonl", "ab") as f:
        f.write(orjson.dumps(entry) + b"\n")


class KafkaWorker:
    """One worker process of a job; run several with the same job to scale out."""

    def __init__(
        self,
        job: Job,
        broker: str,
        state_dir: str | os.PathLike[str],
        *,
        group: str | None = None,
        checkpoint_interval: int = 100_000,
        checkpoint_ms: int = 1_000,
        session_timeout: float = 10.0,
        batch_records: int = 5_000,
        standbys: int = 0,
        flow: FlowLimits = DEFAULT_LIMITS,
        metrics_port: int | None = None,
        bind: str = "127.0.0.1",
        token: str | None = None,
        on_progress: Callable[[RunStats], None] | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        """``on_progress(stats)`` is called after every round; ``on_note(line)`` gets a fatal
        error's lines (default: stderr). A signal's note goes straight to stderr, in one
        unbuffered write, since it is written from the signal handler."""
        self.on_progress = on_progress
        self.on_note = on_note or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stopped_by: int | None = None
        """The signal that stopped the worker, if any."""
        self.final_checkpoint = False
        """Whether the worker, stopping, took a final checkpoint and its offsets were
        committed. Not when it held no restored partition then (a rebalance in progress, or
        more workers than partitions): there was nothing of its own to checkpoint, and its
        partitions resume from their last checkpoint."""
        self._run_started = time.monotonic()
        # The inspector's address is checked and its port taken before any file exists.
        self._inspector = listen_inspector(metrics_port, bind, token)
        self.plan: Plan = plan_job(job)
        self.job = self.plan.job
        self.bootstrap = broker.removeprefix("kafka://")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.group = group or f"eddies-{job.name}"
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_ms = checkpoint_ms
        self.session_timeout = session_timeout
        self.batch_records = batch_records
        self.metrics_port = metrics_port
        self.bind = bind
        self.token = token
        self.observer: Observer | None = None
        self.consumer_lag: dict[tuple[str, int], int] = {}
        """Per input partition read: records behind its high watermark (as of the last fetch
        response) from the next offset to process; updated after every round."""
        self._processing = False
        """Whether the last round ended with every assigned partition restored (/healthz)."""
        self._rate_at = (time.monotonic(), 0)
        self.dead_topic = f"{job.name}-dead-letters"
        self.dead_sink = KafkaSink(self.dead_topic, None, "json", "__dead_letters__")
        self.dead_sink.bound = True
        self.backend = RocksDbStateBackend(
            self.state_dir / "state",
            recovery=f"for this worker: delete {self.state_dir / 'state'} and start it again; "
                     "it restores its partitions from the changelog topics")
        self.executor = _WorkerExecutor(self.job, self.backend, dead_sink=self.dead_sink)
        self.kafka_sinks: list[KafkaSink] = []
        for n in self.job.nodes:
            if n.kind == "sink" and isinstance(n.params["sink"], KafkaSink):
                n.params["sink"].bound = True
                self.kafka_sinks.append(n.params["sink"])
        self.outputs: ExactlyOnceOutputs | None = None
        """The transactional producer of exactly-once sinks (``transactions.py``), if any."""
        self.partitions = 0
        self.topic_counts: dict[str, int] = {}
        """Partition counts of the input topics (not repartition topics: ``partitions``)."""
        self._apart: set[int] = set()
        """Key groups this assignment gave only some of the stateful topics of (warned)."""
        self._restore_trips: int | None = None
        """Backend round trips when the last restore began, until the first batch of the
        partitions it restored was pushed (logged then, see ``_round``)."""
        self._wm_sent: dict[tuple[str, str], tuple[int, bool]] = {}
        """(repartition topic, upstream partition) -> the watermark last produced into it."""
        self.owned: set[tuple[str, int]] = set()
        self.ready: set[tuple[str, int]] = set()
        self.marks: dict[tuple[str, int], PartitionWatermark] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self.dedup: dict[tuple[str, int], dict[str, int]] = {}
        """Per repartition topic partition: the highest upstream offset seen per upstream."""
        self._stateful = set(self.plan.stateful_topics)
        self.seq = 0
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._stop = False
        self._sweep_ops: list[Op] = []
        self._in_checkpoint = False
        self._lock = asyncio.Lock()
        self._inflight: list[Any] = []
        self._commit_task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closed = False
        self._serving = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._assignment_done = False
        self.backend.add_write_listener(self._on_local_write)
        self.membership = FaustGroup(
            self.group, self.bootstrap, self.plan.group_topics, self.state_dir / "faust",
            GroupCallbacks(on_assigned=self._on_assigned, on_revoked=self._on_revoked,
                           on_rebalance_complete=self._on_rebalance_complete, main=self._main,
                           install_signal_handlers=self._install_signal_handlers),
            session_timeout=session_timeout, standbys=standbys)
        self._standby: Standbys | None = None
        """With ``standbys``: tails the changelogs of the key groups kept warm for other
        workers (``standby.py``), so taking one over replays only the changelog's tail."""
        if standbys and self.plan.stateful_topics:
            self._standby = Standbys(
                self.bootstrap, self.plan.checkpoint_topic, self.plan.changelog_topics(),
                self.backend, self._write_quietly,
                isolation_level="read_committed" if any(s.exactly_once for s in self.kafka_sinks)
                else "read_uncommitted",
                on_warm=lambda entry: _restore_log(self.state_dir, {**entry, "pid": os.getpid()}),
                on_lag=self._standby_lag)
        self.flow = InFlight(flow)
        """Produced records not acknowledged yet, against the bounds that pause fetching."""
        self.reader = PartitionReader(
            self.bootstrap, self.group, batch_records=batch_records,
            fetch_max_bytes=flow.max_fetch_bytes,
            isolation={t: n.params["source"].isolation_level
                       for t, n in self.plan.source_of_topic.items()})

    @property
    def left_group(self) -> bool:
        """Whether faust stopped and left the group within ``stop_timeout`` once the worker
        stopped. If not, its consumer thread is still running: exit the process at once
        (``os._exit``); the partitions move after the session timeout."""
        return self.membership.left_group

    @property
    def stop_timeout(self) -> float:
        """Seconds a stopping worker waits for faust to leave the group: a join in progress
        ends first, within the rebalance timeout (session timeout + 4 s)."""
        return self.membership.stop_timeout

    def after_deltas(self, seq: int) -> None:
        """Called once checkpoint ``seq``'s changelog deltas are acknowledged, before its
        markers are written. Does nothing: a seam for fault injection, which tests override
        to crash the worker there (``tests/kafka/crash_worker.py``)."""

    # -- setup ---------------------------------------------------------------------------------

    async def prepare_topics(self) -> None:
        """Check the input topics and create every topic the job writes."""
        counts = {}
        for topic in self.plan.group_topics + self.plan.broadcast_topics:
            if topic in self.plan.repartitions.values():
                continue
            n = await topic_partitions(self.bootstrap, topic)
            if n is None:
                raise ConfigError(f"input topic {topic!r} does not exist on {self.bootstrap}; "
                                  "create it first (eddies produce creates it)")
            counts[topic] = n
        inputs = [t for t in self.plan.group_topics if t not in self.plan.repartitions.values()]
        if not inputs:
            raise ConfigError(f"job {self.job.name!r} has no Kafka input read by the group")
        keyed = [t for t in self.plan.stateful_topics if t in counts]
        if len({counts[t] for t in keyed}) > 1:
            listed = " and ".join(f"{t!r} has {counts[t]} partitions" for t in keyed)
            raise ConfigError(
                f"job {self.job.name!r} keeps keyed state behind input topics that are not "
                f"co-partitioned: {listed}. Partition p of each must hold the same keys, so "
                "they need the same partition count (and the same key): produce one of them "
                f"again into a topic with {counts[keyed[0]]} partitions (eddies produce "
                "--partitions), or read it with ed.sources.kafka(topic) without key= so that "
                "it is repartitioned")
        self.partitions = counts[keyed[0]] if keyed else counts[inputs[0]]
        self.topic_counts = counts
        wanted = {t: self.partitions for t in self.plan.repartitions.values()}
        if self.plan.stateful_topics:
            wanted.update({t: self.partitions for t in self.plan.changelog_topics().values()})
            wanted[self.plan.checkpoint_topic] = self.partitions
        for topic in self.plan.sink_topics:
            if await topic_partitions(self.bootstrap, topic) is None:
                wanted[topic] = self.partitions
        if await topic_partitions(self.bootstrap, self.dead_topic) is None:
            wanted[self.dead_topic] = 1
        if wanted:
            await create_topics(self.bootstrap, wanted)
        once = [s.name for s in self.kafka_sinks if s.exactly_once]
        if once:  # refused before joining the group, never degraded to at-least-once
            await check_transactions(self.bootstrap, once)

    def run(self) -> None:
        """Create topics, then run the faust worker until SIGTERM/SIGINT."""
        asyncio.run(self.prepare_topics())
        if self._inspector is not None:  # /healthz answers 503 while the group forms
            self.observer = Observer(self.executor, self.backend, server=self._inspector,
                                     owner=self._owner, health=self.health)
        log.info("eddies worker for job %s: %s", self.job.name, describe(self.plan))
        self._run_started = time.monotonic()
        try:
            self.membership.run()
        finally:
            if self.observer is not None:  # stopped before the data task ran
                self.observer.close()
            self.backend.close()

    # -- rebalance -----------------------------------------------------------------------------
    async def _on_revoked(self, gone: set[tuple[str, int]]) -> None:
        self._assignment_done = False  # a rebalance began (/healthz: 503 until restored)
        self._processing = False  # and until a round after it ran (_progress)
        if not self._started.is_set() or self._closed:  # closed: stopping, checkpoint taken
            self.owned -= gone
            return
        async with self._lock:
            # Reloading the timers clears the state caches: checkpoint first, and the next
            # owner of a revoked partition starts at this checkpoint's offsets.
            if await self._checkpoint_before_clearing() and self._commit_task is not None:
                await self._commit_task
            self.ready -= gone
            self.owned -= gone
            for tp in gone:
                self.marks.pop(tp, None)
                self.next_offset.pop(tp, None)
            self._assign_reader()
            self._reload_timers()
            if self.outputs is not None:
                await self.outputs.reassigned()
        log.info("revoked %s", sorted(gone))

    async def _on_assigned(self, assigned: set[tuple[str, int]]) -> None:
        self._assignment_done = False
        self._processing = False
        self._apart.clear()
        self.owned = set(assigned)
        log.info("assigned %s", sorted(self.owned))
        if self._standby is not None:  # never a key group this worker owns
            warm = {p for t, p in self.membership.standbys() if t in self._stateful}
            self._standby.assign(warm - {p for _, p in assigned})
            log.info("standby key groups %s", sorted(self._standby.partitions))

    async def _on_rebalance_complete(self) -> None:
        # Restores run in the data task (faust starts app tasks only after this returns).
        self._assignment_done = True

    async def _restore_pending(self) -> dict[Any, list[Any]] | None:
        """Restore the partitions assigned and not ready yet; returns the first batch read
        from the ready partitions (the restored ones' first records, whose keys' state the
        restore read ahead), None if no key group was restored."""
        if self._standby is not None and not self._standby.started:
            await self._standby.start()
        if not self._assignment_done or not self.owned - self.ready:
            return None
        async with self._lock:
            # Restoring clears the state caches: what partitions kept from before the
            # rebalance changed since the last checkpoint is written first. (With the eager
            # protocol their revocation checkpointed already; this holds for any.)
            await self._checkpoint_before_clearing()
            pending = sorted(self.owned - self.ready)
            if self.outputs is not None:  # fence the previous owners before reading markers
                await self.outputs.take_over(pending)
            now = self.executor.clock()
            restoring = sorted({p for topic, p in pending if topic in self._stateful})
            trips = self.backend.round_trips
            for topic, p in pending:
                if topic not in self._stateful:
                    # A stateless stage: the reader starts it at the group's committed offset.
                    self.marks[(topic, p)] = self._new_mark(topic, now)
                    self.ready.add((topic, p))
            reads: dict[int, _RestoreReads] = {}
            for p in restoring:
                if self._stop:  # stopping: the rest resume from their last checkpoint
                    break
                together = {(topic, p) for topic in self.plan.stateful_topics}
                if not together <= self.owned:
                    # faust assigns co-partitioned topics together; a member whose metadata
                    # lacked one of them would not: wait for the rebalance that fixes it.
                    if p not in self._apart:
                        self._apart.add(p)
                        log.warning("partition %d of %s assigned without %s: not restored until "
                                    "a rebalance assigns them together", p,
                                    sorted(t for t, _ in together & self.owned),
                                    sorted(t for t, _ in together - self.owned))
                    continue
                if p not in reads:  # every key group's first reads, together
                    reads = await self._restore_reads([q for q in restoring if q >= p and {
                        (t, q) for t in self.plan.stateful_topics} <= self.owned])
                await self._restore_key_group(p, reads.pop(p))
                self.ready |= together
            if self.outputs is not None:
                await self.outputs.reassigned()
            self._assign_reader()
            # The first batch is read before the preload, which reads ahead the state of its
            # keys: nothing is read per key before the restored partitions' first events.
            first = await self.reader.getmany(timeout_ms=200) if restoring else None
            self._reload_timers(first)
            log.info("restored key groups %s in %d backend round trips", restoring,
                     self.backend.round_trips - trips)
            self._restore_trips = trips if restoring else None
            self._rewind_watermarks()
            # Operators take the restored watermarks now, before the partitions' first
            # records: else those would be judged (late data, windows, TTL) against the
            # operator's watermark from before (the minimum, on a fresh worker). Event-time
            # work at or below a restored watermark fired before its checkpoint, except what
            # was registered below it since (a timer set in the past, a value written already
            # expired): that fires at the next advance, as on the previous owner, so nothing
            # fires here (as the local runner's restore).
            now = self.executor.clock()
            self.executor.take_watermarks(self._source_watermarks(now), now)
            return first

    async def _checkpoint_before_clearing(self) -> bool:
        """Checkpoint if the state caches hold anything not written yet, since a rebalance is
        about to clear them; returns whether it did.

        That is whenever partitions are ready (their keyed state and timers), and also when
        none is but broadcast records came in since the last checkpoint: BroadcastState
        changes whether the worker holds partitions or not (between a revocation and the
        next assignment, or on a worker with no partition), and a checkpoint is where it is
        written (locally only: every worker rebuilds it from the topic when it starts).
        """
        if not self.ready and not self._since_checkpoint:
            return False
        await self.checkpoint()
        return True

    def _assign_reader(self) -> None:
        """The reader reads the ready partitions, each from its next offset where known
        (a restored marker's, or past the last record pushed), else from the group's commit."""
        self.reader.assign(self.ready, self.next_offset)

    def _owner(self, key: tuple[Any, ...]) -> str | None:
        """None if this worker holds ``key``'s partition, else "" (owner unknown here)."""
        if not self.plan.stateful_topics or not self.partitions:
            return None
        for topic in self.plan.stateful_topics:
            if topic in self.plan.repartitions.values():
                p = zlib.crc32(encode_key(key)) % self.partitions
            else:
                raw = key[0] if len(key) == 1 else key
                data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
                p = DefaultPartitioner()(data, list(range(self.partitions)),
                                         list(range(self.partitions)))
            if (topic, p) in self.ready:
                return None
        return ""

    def _rewind_watermarks(self) -> None:
        """Operators' watermarks back to the minimum over the partitions owned now (the
        caller advances time next): a restored partition may be behind the others."""
        ex = self.executor
        for n in ex.wm:
            ex.wm[n] = MIN_TIME
        for op in ex.operators.values():
            op.watermark = op.ctx.watermark = MIN_TIME

    def _new_mark(self, topic: str, now: int) -> PartitionWatermark:
        """The watermark of one of ``topic``'s partitions."""
        feeds = self.plan.feeds.get(topic)
        if feeds is None:
            return PartitionWatermark(self._strategy(topic), now)
        return UpstreamWatermark(self._strategy(topic), now, frozenset(
            f"{t}:{q}" for t in feeds for q in range(self.topic_counts.get(t, self.partitions))))

    def _strategy(self, topic: str) -> BoundedOutOfOrderness:
        node = self.plan.source_of_topic[topic]
        return node.params["watermarks"] or BoundedOutOfOrderness(0)

    async def _restore_reads(self, groups: list[int]) -> dict[int, _RestoreReads]:
        """What restoring each of ``groups`` reads first, for all of them together: the local
        checkpoint token, the standby position if the local copy is a standby's, and the
        checkpoint markers (with the changelogs' tails after a standby position)."""
        started, at = time.monotonic(), time.time()
        cl_topics = set(self.plan.changelog_topics().values())
        local: dict[int, tuple[Any, StandbyPosition | None]] = {}
        starts: dict[tuple[str, int], int] = {}
        for p in groups:
            data = self.backend.get(META_CF, encode_key(("kafka-checkpoint", p)))
            token = msgpack.unpackb(data) if data is not None else None
            # A standby copy (standby.py) holds the changelog applied up to its offsets: only
            # the tail after them is replayed. (Its checkpoint token is None.)
            position = read_position(self.backend, p) if data is not None and token is None \
                else None
            if position is not None and set(position.offsets) != cl_topics:
                position = None
            local[p] = (token, position)
            starts[(self.plan.checkpoint_topic, p)] = 0
            starts.update({(t, p): off for t, off in (position.offsets if position else {}).items()})
        ends = await self._read_ends(starts)
        return {p: _RestoreReads(*local[p], {t: ends[(t, q)] for t, q in ends if q == p},
                                 started, at) for p in groups}

    async def _restore_key_group(self, p: int, reads: _RestoreReads | None = None) -> None:
        """Restore key group ``p``: the state, then every stateful topic's partition ``p``
        (position, watermark, dedup) as of the last marker."""
        if reads is None:
            reads = (await self._restore_reads([p]))[p]
        started, at = reads.started, reads.at
        local_token, ends = reads.token, reads.records
        now = self.executor.clock()
        topics = self.plan.stateful_topics
        for topic in topics:
            self.marks[(topic, p)] = self._new_mark(topic, now)
        markers = MarkerLog(f"topic {self.plan.checkpoint_topic!r} partition {p}")
        cl_topics = self.plan.changelog_topics()
        meta_key = encode_key(("kafka-checkpoint", p))
        for _, value, _ in ends[self.plan.checkpoint_topic]:
            if value is not None:
                markers.add(value)
        last = markers.last
        if last is not None and last.identity is not None:  # another job's checkpoints?
            check_identity(last.identity, self.job, None,
                           f"the changelog of topic {self.plan.checkpoint_topic!r} "
                           f"partition {p}", KAFKA_FIX)
        entry: dict[str, Any] = {"topic": topics[0], "partition": p, "pid": os.getpid()}
        if len(topics) > 1:
            entry["topics"] = topics
        standby = reads.position if last is not None else None
        if standby is not None and standby.token is not None and (
                standby.token not in markers.committed):  # another changelog's copy
            standby = None
        if last is not None and local_token == last.token:
            entry["source"] = "local"
            entry["records"] = 0
        else:
            batch = Batch()
            if standby is None:
                group = p.to_bytes(2, "big")
                upper = (p + 1).to_bytes(2, "big")
                for cf in self.plan.changelog_cfs:
                    if not cf.startswith("__expiry"):
                        batch.delete_range(cf, group, upper)
            applied = ignored = read = 0
            if last is not None:
                tails = ends if standby is not None else {t: records for (t, _), records in (
                    await self._read_ends({(t, p): 0 for t in cl_topics.values()})).items()}
                for cf, cl_topic in cl_topics.items():
                    records = tails[cl_topic]
                    read += len(records)
                    n, skipped = apply_deltas(records, cf, markers.committed, batch)
                    applied += n
                    ignored += skipped
            batch.put(META_CF, meta_key, msgpack.packb(last.token if last else None))
            batch.delete(META_CF, standby_key(p))  # the copy is this worker's own from now on
            self._in_checkpoint = True
            try:
                self.backend.write(batch)
            finally:
                self._in_checkpoint = False
            entry["source"] = ("standby" if standby is not None
                               else "changelog" if last is not None else "empty")
            entry["records"] = applied
            entry["ignored"] = ignored
            entry["read"] = read  # changelog records fetched
            if standby is not None:  # changelog records the standby copy had applied
                entry["skipped"] = sum(standby.offsets.values())
        for topic in topics:
            position = None if last is None else last.position(topic)
            if last is not None and (position is None or (last.inputs is None
                                                          and len(topics) > 1)):
                raise StateIdentityError(
                    f"the last checkpoint of partition {p} in {self.plan.checkpoint_topic!r} "
                    f"does not hold a position for input topic {topic!r}: it was written by a "
                    f"job whose keyed state sat behind other topics. {KAFKA_FIX}")
            if position is None:
                self.dedup[(topic, p)] = {}
                continue
            mark = self.marks[(topic, p)]
            if isinstance(mark, UpstreamWatermark):
                mark.reported.update(position.upstream)
            mark.restore(position.watermark)
            self.dedup[(topic, p)] = dict(position.dedup)
            self.next_offset[(topic, p)] = position.offset  # where the reader starts
        if last is not None:
            self.seq = max(self.seq, last.seq)
        for op in self.executor.operators.values():
            op.store.clear_cache()
        entry["seconds"] = round(time.monotonic() - started, 3)
        entry["at"] = round(at, 3)  # wall clock when the restore began (failover timing)
        entry["marker_offset"] = last.offset if last else None
        _restore_log(self.state_dir, entry)
        if self.observer is not None:
            self.observer.metrics.restore(p, entry["records"], entry["seconds"])
        log.info("restored %s", entry)

    def _reload_timers(self, first: dict[Any, list[Any]] | None = None) -> None:
        """Timers in memory = the persisted timers of the key groups owned now; the state of
        the keys of ``first`` (records fetched, not pushed yet) is read ahead."""
        groups = sorted({p for t, p in self.ready if t in self._stateful})
        for op in self.executor.operators.values():
            op.timers.event = type(op.timers.event)()
            op.timers.processing = type(op.timers.processing)()
            op.store.clear_cache()
        # Every operator's groups, an emptiness probe per state and a multi-get per state of
        # the first records' keys, issued together.
        ahead = group_prefixes(self.executor.operators, self._first_values(first or {}))
        load_key_groups(self.executor.operators.values(), groups, ahead)
        for op in self.executor.operators.values():
            for heap in (op.timers.event, op.timers.processing):
                for _, order, key in heap.heap:
                    op.store.pin_prefix(key, order)  # a timer's key keeps its key group

    def _first_values(self, records: dict[Any, list[Any]]) -> dict[int, dict[Node, list[Any]]]:
        """The decoded values of ``records`` from stateful partitions, by partition (the key
        group) and source node; watermark control records and undecodable ones are left out
        (the push handles them)."""
        out: dict[int, dict[Node, list[Any]]] = {}
        for tp, batch in records.items():
            if tp.topic not in self._stateful or (tp.topic, tp.partition) not in self.ready:
                continue
            node = self.plan.source_of_topic[tp.topic]
            fmt = node.params["source"].value_format
            values = out.setdefault(tp.partition, {}).setdefault(node, [])
            for record in batch:
                if record.value is None:
                    continue
                try:
                    values.append(decode(fmt, record.value))
                except (ValueError, TypeError):
                    continue
        return out

    async def _read_ends(self, starts: dict[tuple[str, int], int]
                         ) -> dict[tuple[str, int], list[tuple[Any, Any, Any]]]:
        """Per (topic, partition), every record from its offset in ``starts`` up to the
        fetch high watermark; the partitions are read together."""
        consumer = self._restore_consumer
        tps = {TopicPartition(*tp): tp for tp in starts}
        consumer.assign(list(tps))
        for tp, key in tps.items():
            if starts[key]:
                consumer.seek(tp, starts[key])
            else:  # the log's start, which retention may have moved past 0
                await consumer.seek_to_beginning(tp)
        out: dict[tuple[str, int], list[tuple[Any, Any, Any]]] = {key: [] for key in starts}
        left = set(tps)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = await consumer.getmany(*left, timeout_ms=50, max_records=20_000)
            for tp, records in got.items():
                out[tps[tp]].extend((r.key, r.value, r.headers) for r in records)
            for tp in list(left):
                high = end_offset(consumer, tp, self.outputs is not None)
                if high is not None and await consumer.position(tp) >= high:
                    left.discard(tp)
            if not left:
                return out
        raise EddiesError(f"could not read {sorted(f'{t.topic}[{t.partition}]' for t in left)} "
                          "to the end within 120 s")

    def _write_quietly(self, batch: Batch) -> None:
        """Write ``batch`` locally without changelogging it (restores, standby copies)."""
        self._in_checkpoint = True
        try:
            self.backend.write(batch)
        finally:
            self._in_checkpoint = False

    def _standby_lag(self, p: int, records: int | None) -> None:
        if self.observer is not None:
            self.observer.metrics.standby_lag(p, records)

    # -- the data path -------------------------------------------------------------------------
    def _on_local_write(self, batch: Batch) -> None:
        # Sweeps write outside checkpoints; their deletions go to the next changelog batch.
        if not self._in_checkpoint:
            self._sweep_ops.extend(batch.ops)

    async def _main(self) -> None:
        try:
            await self._serve()
        except Exception as exc:
            log.debug("eddies worker failed", exc_info=True)
            lines = error_lines(exc, debug=log.isEnabledFor(logging.DEBUG))
            if lines is None:  # a bug: the whole traceback
                log.exception("eddies worker failed; state is safe at the last checkpoint")
            else:
                for line in lines:
                    self.on_note(line)
            os._exit(1)

    async def _serve(self) -> None:
        if self.membership.stopping is not None:
            return  # stopped before it ran
        self._serving = True
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                         linger_ms=5, max_batch_size=1 << 20,
                                         max_request_size=8 << 20)
        await self.producer.start()
        once = {s.topic for s in self.kafka_sinks if s.exactly_once}
        if once:
            self.outputs = ExactlyOnceOutputs(
                self.bootstrap, self.group, {*once, self.plan.checkpoint_topic},
                transactions_topic(self.job.name),
                {"acks": "all", "linger_ms": 5, "max_batch_size": 1 << 20,
                 "max_request_size": 8 << 20}, self.producer, lambda: self.ready)
            await self.outputs.start()
        self._restore_consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                                  enable_auto_commit=False,
                                                  isolation_level="read_committed" if once
                                                  else "read_uncommitted",
                                                  fetch_max_wait_ms=100,
                                                  max_partition_fetch_bytes=8 << 20)
        await self._restore_consumer.start()
        await self.reader.start()
        self._broadcast = await self._start_broadcast()
        opened = time.monotonic()
        trips = self.backend.round_trips
        self.executor.open_operators()
        self._reload_timers()
        if self.observer is not None:
            self.observer.startup({"restore": time.monotonic() - opened},
                                  self.backend.round_trips - trips)
        self._started.set()
        final = False
        # As in the local runner: the data path allocates many short-lived objects (records,
        # events, state values), so the young generation is collected less often.
        gc_threshold = gc.get_threshold()
        gc.set_threshold(max(gc_threshold[0], _GC_YOUNG), *gc_threshold[1:])
        try:
            while not self._stop:
                await self._round()
                await self._progress()
            async with self._lock:
                if self.ready:
                    await self.checkpoint()
                    final = True
        finally:
            await self._produce_outputs()
            await asyncio.gather(*self._inflight)
            if self._commit_task is not None:
                await self._commit_task  # the final checkpoint's offsets are committed
            self.final_checkpoint = final
            gc.set_threshold(*gc_threshold)
            if self.outputs is not None:
                await self.outputs.close()  # an open transaction is aborted
            await self.producer.stop()
            if self._standby is not None:
                await self._standby.stop()
            await self._restore_consumer.stop()
            await self.reader.stop()
            if self._broadcast is not None:
                await self._broadcast.stop()
            if self.observer is not None:
                self.observer.close()
            self._closed = True
            # faust stops the app, whose consumer leaves the group. Not awaited here: the
            # app cancels its own tasks (this one) while stopping; faust's shutdown waits.
            self.membership.stop()

    async def _progress(self) -> None:
        """After every round: the consumer lag (gauges), whether the worker is processing
        (``/healthz``), then ``on_progress``. A few lookups per partition, not per event; the
        reader's position is the worker's, since a round pushes every record it reads."""
        self.consumer_lag = lags = await self.reader.lag()
        self._processing = self._assignment_done and not self.owned - self.ready
        if self.observer is not None:
            self.observer.consumer_lag(lags)
        self.executor.stats.elapsed_s = time.monotonic() - self._run_started
        if self.on_progress is not None:
            self.on_progress(self.executor.stats)

    def progress_line(self) -> str:
        """A progress line: this run's counts and watermark, events/s since the last line,
        and the consumer lag (total and worst partition)."""
        stats = self.executor.stats
        now = time.monotonic()
        then, events = self._rate_at
        self._rate_at = (now, stats.events_in)
        rate = (stats.events_in - events) / (now - then) if now > then else 0.0
        return f"{stats.summary()}; {rate:,.0f} events/s now, {lag_text(self.consumer_lag)}"

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: ready once every partition assigned to this worker is restored and a
        round has processed them; not while the group forms, a rebalance moves partitions or
        the worker stops. Called on the inspector's HTTP thread: it only reads (each set is
        copied in one C-level call, atomic under the GIL)."""
        if self._stop or self._closed:
            return False, {"status": "stopping",
                           "reason": "the worker is stopping (final checkpoint, leaving the "
                                     "group)"}
        if not self._started.is_set():
            return False, {"status": "starting",
                           "reason": "joining the consumer group and opening the state"}
        if not self._assignment_done:
            return False, {"status": "rebalancing",
                           "reason": "a rebalance is assigning the group's partitions"}
        owned, ready = frozenset(self.owned), frozenset(self.ready)
        pending = owned - ready
        if pending or not self._processing:
            return False, {"status": "restoring",
                           "reason": (f"restoring {len(pending)} of {len(owned)} assigned "
                                      "partitions" if pending else
                                      "partitions restored; the first round is running"),
                           "restoring": sorted(f"{t}[{p}]" for t, p in pending)}
        return True, {"status": "ok", "partitions": sorted(f"{t}[{p}]" for t, p in owned),
                      "lag": sum(self.consumer_lag.values())}

    def request_stop(self) -> None:
        """End the data task after its round, with a final checkpoint, then stop the worker."""
        self._stop = True

    def _stop_before_serving(self) -> None:
        # Stopped before the data task ran (while the first rebalance goes on): nothing of
        # this worker's to checkpoint. Once it runs, it stops faust itself, after its round.
        if not self._serving:
            self.membership.stop()

    def _install_signal_handlers(self) -> None:
        """In place of faust's, from its start on, and outside the event loop: a handler of
        the loop would wait for the round to yield, so a second signal could not end a stuck
        round."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between any two bytecodes of the main thread: one unbuffered write each.
        name = signal.Signals(signum).name
        if self.stopped_by is not None:
            os.write(2, f"error: second signal ({name}): exiting at once, without a final "
                        "checkpoint; the last checkpoint is intact and the partitions resume "
                        "from it\n".encode())
            os._exit(128 + signum)
        self.stopped_by = signum
        self.request_stop()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_before_serving)
        os.write(2, f"{name}: stopping after the current round: final checkpoint, commit, "
                    f"leaving the group ({name} again to exit at once)\n".encode())

    async def _start_broadcast(self) -> AIOKafkaConsumer | None:
        if not self.plan.broadcast_topics:
            return None
        # One consumer reads every broadcast topic: read_committed if one of them asks
        # (topics written without transactions read the same either way).
        committed = any(self.reader.isolation_level(t) == "read_committed"
                        for t in self.plan.broadcast_topics)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=100, isolation_level="read_committed"
                                    if committed else "read_uncommitted")
        await consumer.start()
        tps: list[TopicPartition] = []
        for topic in self.plan.broadcast_topics:
            n = await topic_partitions(self.bootstrap, topic) or 0
            tps.extend(TopicPartition(topic, p) for p in range(n))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        now = self.executor.clock()
        for tp in tps:
            self.marks[(tp.topic, tp.partition)] = PartitionWatermark(
                self._strategy(tp.topic), now)
        # BroadcastState is rebuilt from the whole topic on every start.
        batch = Batch()
        for cf in self.plan.broadcast_cfs:
            batch.delete_range(cf, b"", b"\xff\xff\xff")
        self._in_checkpoint = True
        try:
            self.backend.write(batch)
        finally:
            self._in_checkpoint = False
        return consumer

    async def _round(self) -> None:
        first = await self._restore_pending()
        records: dict[Any, list[Any]] = {}
        held = await self._fetch_held()
        if first is not None:
            records = first
        elif self.ready and not held:
            records = await self.reader.getmany(timeout_ms=200)
        elif not held:
            await asyncio.sleep(0.05)
        broadcast: dict[Any, list[Any]] = {}
        if self._broadcast is not None and not held:
            broadcast = await self._broadcast.getmany(timeout_ms=0 if records else 50,
                                                      max_records=self.batch_records)
        async with self._lock:
            now = self.executor.clock()
            n = 0
            for tp, batch in broadcast.items():
                n += self._push(tp.topic, tp.partition, batch, now, broadcast=True)
            for tp, batch in records.items():
                if (tp.topic, tp.partition) in self.ready:
                    n += self._push(tp.topic, tp.partition, batch, now)
            if first is not None and self._restore_trips is not None:
                groups = sorted({tp.partition for tp, batch in records.items()
                                 if batch and tp.topic in self._stateful})
                if groups:
                    log.info("first events of key groups %s after %d backend round trips",
                             groups, self.backend.round_trips - self._restore_trips)
                self._restore_trips = None
            self.executor.stats.events_in += n
            self.executor.advance_time(self._source_watermarks(now), now)
            self.executor.flush_sinks()
            await self._produce_outputs()
            self._since_checkpoint += n
            due = (time.monotonic() - self._last_checkpoint) * 1000 >= self.checkpoint_ms
            if self.ready and (self._since_checkpoint >= self.checkpoint_interval
                               or (due and self._since_checkpoint)):
                await self.checkpoint()
            if self.observer is not None:
                self.observer.after_batch()

    def _push(self, topic: str, p: int, batch: list[Any], now: int,
              broadcast: bool = False) -> int:
        node = self.plan.source_of_topic[topic]
        expected = self.next_offset.get((topic, p))
        if not broadcast and expected is not None and batch and batch[0].offset < expected:
            # Fetched before the reader was sought back to where this worker is (a rebalance
            # during the fetch): already pushed.
            batch = [r for r in batch if r.offset >= expected]
        if not batch or not node.params.get("repartition", False):
            return self._push_records(node, topic, p, batch, now)
        # A repartition topic: records between the upstream watermarks' control records,
        # each run pushed under the watermark the reports before it gave.
        mark = self.marks.get((topic, p))
        n = 0
        run: list[Any] = []
        for record in batch:
            report = _watermark_report(record)
            if report is None:
                run.append(record)
                continue
            if run:
                n += self._push_records(node, topic, p, self._dedup(topic, p, run), now)
                run = []
            if isinstance(mark, UpstreamWatermark):
                mark.report(*report)
        if run:
            n += self._push_records(node, topic, p, self._dedup(topic, p, run), now)
        self.next_offset[(topic, p)] = batch[-1].offset + 1
        return n

    def _push_records(self, node: Node, topic: str, p: int, batch: list[Any],
                      now: int) -> int:
        source = node.params["source"]
        fmt = source.value_format
        kept = batch
        try:
            if fmt == "json":
                values = _loads_json_batch(list(map(_VALUE, batch)))
            else:
                values = [decode(fmt, r.value) for r in batch]
        except (ValueError, TypeError):
            values, kept = [], []
            for record in batch:
                try:
                    values.append(decode(fmt, record.value))
                    kept.append(record)
                except (ValueError, TypeError) as exc:
                    self.executor.dead_letter(DeadLetter(
                        node.name, {"topic": topic, "partition": p, "offset": record.offset},
                        (record.value or b"").decode("utf-8", "replace"),
                        f"bad record: {exc}"))
        if batch:
            self.next_offset[(topic, p)] = batch[-1].offset + 1
        ex = self.executor
        if topic in self._stateful:
            ex.pin_key_group(p)
        if self.plan.repartitions:
            ex.cur_src = f"{topic}:{p}"
            ex.cur_offsets = [r.offset for r in kept]

        def locate(i: int) -> tuple[Any, str | None] | None:
            record = kept[i]
            raw = None if record.value is None else record.value.decode("utf-8", "replace")
            return {"topic": topic, "partition": p, "offset": record.offset}, raw

        # Event time advances between the records as if after every one (executor.py): the
        # push needs this partition's watermark and every other one's.
        mark = self.marks.get((topic, p))
        try:
            max_ts = ex.push_records(
                node, values, locate, now, mark=mark,
                others=None if mark is None else self._source_watermarks(now, (topic, p)))
        finally:
            ex.cur_src = None
            ex.pin_key_group(None)
        if node.params["timestamp"] is not None and (topic, p) in self.marks:
            self.marks[(topic, p)].observe(max_ts, now)
        return len(batch)

    def _dedup(self, topic: str, p: int, batch: list[Any]) -> list[Any]:
        """Drop records a crashed upstream worker produced twice to ``topic`` partition ``p``
        (a repartition topic)."""
        seen = self.dedup.setdefault((topic, p), {})
        out = []
        for record in batch:
            src, off = None, -1
            for name, value in record.headers or ():
                if name == _SRC:
                    src = value.decode()
                elif name == _OFF:
                    off = int(value)
            if src is not None and off >= 0:
                if off <= seen.get(src, -1):
                    continue
                seen[src] = off
            out.append(record)
        return out

    def _source_watermarks(
        self, now: int, skip: tuple[str, int] | None = None
    ) -> dict[Node, list[tuple[int, bool]]]:
        """Per source, its partitions' (watermark, idle); ``skip``: all but that one."""
        by_source: dict[Node, list[tuple[int, bool]]] = {}
        for (topic, _p), mark in self.marks.items():
            if (topic, _p) == skip:
                continue
            node = self.plan.source_of_topic[topic]
            by_source.setdefault(node, []).append((mark.watermark, mark.idle(now)))
        for node in self.plan.source_of_topic.values():
            # A source with no partition here holds nothing back and fires nothing.
            by_source.setdefault(node, [(MIN_TIME, True)])
        return by_source

    async def _produce_outputs(self) -> None:
        """Hand buffered outputs to the producer; their acks are awaited at the checkpoint."""
        sends = self._inflight
        for sink in [*self.kafka_sinks, self.dead_sink]:
            if sink.pending:
                pending, sink.pending = sink.pending, []
                sends.extend(await self._send(sink.topic, [(k, v, None, []) for k, v in pending]))
        now = self.executor.clock()
        for topic, items in self.executor.repartition_out.items():
            out = []
            for encoded, value, ts, src, off in items:
                headers = [] if src is None else [(_SRC, src.encode()), (_OFF, str(off).encode())]
                out.append((encoded, dumps_exact(value), ts, headers,
                            zlib.crc32(encoded) % self.partitions))
            items.clear()
            out.extend(self._watermark_records(topic, now))  # after the records they cover
            if out:
                sends.extend(await self._send(topic, out, explicit=True))

    def _watermark_records(self, topic: str, now: int) -> list[Any]:
        """Control records for every partition of repartition topic ``topic``: the
        watermark of each upstream partition this worker reads, where it moved since."""
        out: list[Any] = []
        feeds = self.plan.feeds.get(topic, ())
        for (upstream, q), mark in self.marks.items():
            if upstream not in feeds or (upstream, q) not in self.ready:
                continue
            src = f"{upstream}:{q}"
            state = (mark.watermark, mark.idle(now))
            if self._wm_sent.get((topic, src)) == state:
                continue
            self._wm_sent[(topic, src)] = state
            headers = [(_SRC, src.encode()), (_WM, f"{state[0]},{int(state[1])}".encode())]
            out.extend((None, None, None, headers, part) for part in range(self.partitions))
        return out

    async def _send(self, topic: str, items: list[Any], explicit: bool = False) -> list[Any]:
        """Produce ``items`` in per-partition batches; returns the delivery futures."""
        producer = self.producer
        if self.outputs is not None:
            producer = await self.outputs.producer_for(topic, producer)
        partitions = sorted(await producer.partitions_for(topic))
        by_partition: dict[int, list[Any]] = {}
        rr = 0
        for item in items:
            if explicit:
                p = item[4]
            elif item[0] is None:
                p = partitions[rr % len(partitions)]
                rr += 1
            else:
                p = DefaultPartitioner()(item[0], partitions, partitions)
            by_partition.setdefault(p, []).append(item)
        futures = []
        for p, chunk in by_partition.items():
            batch = producer.create_batch()
            for key, value, ts, headers, *_ in chunk:
                if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    futures.append(await self._send_batch(producer, batch, topic, p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=ts, headers=headers)
            if batch.record_count():
                futures.append(await self._send_batch(producer, batch, topic, p))
        return futures

    async def _send_batch(self, producer: Any, batch: Any, topic: str, p: int) -> Any:
        """Hand one batch to the producer once the in-flight bounds leave room for it
        (``flow.py``); it counts as in flight until acknowledged. Returns its delivery."""
        if self.flow.full:
            self._fetch_paused()  # a round's outputs reached the bound: pause before waiting
            await self.flow.wait_for_room()
        records, size = batch.record_count(), batch.size()
        # Complete as it is: closed, the producer sends it without lingering (linger_ms) for
        # records that will not come.
        batch.close()
        delivery = await producer.send_batch(batch, topic, partition=p)
        self.flow.sent(delivery, records, size)
        return delivery

    async def _fetch_held(self) -> bool:
        """Whether the round fetches nothing: produced records awaiting acks reached a bound
        (``flow.py``). The reader's partitions are then paused, and the round waits up to
        200 ms for the acks to drain the counts to half, when fetching resumes."""
        flow = self.flow
        if flow.hold():
            self._fetch_paused()
            await flow.wait_drained(0.2)
        held = flow.hold()
        if not held and self.reader.paused:
            # A paused partition fetched nothing: that was backpressure, not idleness. Its idle
            # clock starts again now, or the first partitions fetched after the pause would
            # move the watermark past the others' backlog.
            now = self.executor.clock()
            for tp in self.ready:
                mark = self.marks.get(tp)
                if mark is not None:
                    mark.last_active = now
            self.reader.resume()
        if self.observer is not None:
            self.observer.metrics.flow(flow.records, flow.bytes, held, flow.pauses)
        return held

    def _fetch_paused(self) -> None:
        """Pause the reader's partitions, the in-flight bound being reached (``flow.py``)."""
        flow = self.flow
        flow.hold()
        self.reader.pause()
        if self.observer is not None:
            self.observer.metrics.flow(flow.records, flow.bytes, True, flow.pauses)

    # -- checkpoints ---------------------------------------------------------------------------
    async def _send_changelog(self, topic: str, parts: dict[int, list[Any]]) -> list[Any]:
        """Produce a checkpoint's deltas for changelog ``topic`` (``changelog_partitions``:
        records per partition), each partition's in as few batches as fit; returns the
        delivery futures."""
        producer = self.producer
        if self.outputs is not None:
            producer = await self.outputs.producer_for(topic, producer)
        futures = []
        for p, records in parts.items():
            start = 0
            while start < len(records):
                batch = producer.create_batch()
                start = append_records(batch, records, start)
                futures.append(await self._send_batch(producer, batch, topic, p))
        return futures

    async def checkpoint(self) -> None:
        """Changelog deltas, then markers, then the local write, then the group commit.

        Only the deltas (with the outputs produced since the last checkpoint) are awaited
        before going on: the local write may run ahead of its marker's ack (a local token
        without a durable marker just means "restore from the changelog"), and the group
        commit waits for the markers in the background, before the next checkpoint.
        """
        if self._commit_task is not None:
            await self._commit_task
        started = time.monotonic()
        ex = self.executor
        batch = Batch()
        batch.ops.extend(self._sweep_ops)
        self._sweep_ops = []
        ex.checkpoint_ops(batch)
        await self._produce_outputs()
        waits, self._inflight = self._inflight, []
        token = new_token()
        self.seq += 1
        marker_acks: list[Any] = []
        if self.plan.stateful_topics:
            header = token_header(token)
            per_topic = changelog_partitions(batch, self.plan.changelog_topics(),
                                             set(self.plan.broadcast_cfs), token)
            for topic, parts in per_topic.items():
                waits.extend(await self._send_changelog(topic, parts))
            await asyncio.gather(*waits)  # outputs and deltas durable before the marker
            self.after_deltas(self.seq)
            markers = []
            identity = job_identity(self.job)
            topics = self.plan.stateful_topics
            for p in sorted({p for t, p in self.ready if t == topics[0]}):
                positions = {}
                for topic in topics:  # every input of key group p, in one marker
                    mark = self.marks.get((topic, p))
                    positions[topic] = InputPosition(
                        self.next_offset.get((topic, p), 0),
                        mark.watermark if mark else MIN_TIME, self.dedup.get((topic, p), {}),
                        dict(mark.reported) if isinstance(mark, UpstreamWatermark) else {})
                first = positions[topics[0]]
                value = encode_marker(Marker(  # carries the key layout of the deltas
                    token, first.offset, first.watermark, self.seq, first.dedup,
                    identity=identity, upstream=first.upstream,
                    inputs=positions if len(topics) > 1 else None))
                markers.append((MARKER_KEY, value, None, [header], p))
                batch.put(META_CF, encode_key(("kafka-checkpoint", p)), msgpack.packb(token))
            marker_acks = await self._send(self.plan.checkpoint_topic, markers, explicit=True)
        else:
            await asyncio.gather(*waits)
        if self.outputs is not None:  # the outputs and markers become visible together
            await self.outputs.commit({tp: off for tp, off in self.next_offset.items()
                                       if tp in self.ready})
        self._in_checkpoint = True
        try:
            self.backend.write(batch)
        finally:
            self._in_checkpoint = False
        offsets = {tp: off for tp, off in self.next_offset.items() if tp in self.ready}
        self._commit_task = asyncio.ensure_future(self._commit_after(marker_acks, offsets))
        # Only owned, restored key groups: standby and revoked copies expire by their owner's
        # clock (their deletes come through the changelog), and tombstones go to owned ones.
        ex.sweep({p for t, p in self.ready if t in self._stateful})
        ex.stats.checkpoints += 1
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if self.observer is not None:
            size = batch.size_bytes()
            self.observer.after_checkpoint(self._last_checkpoint - started, size)
        log.debug("checkpoint %s: %d ops in %.3fs", self.seq, len(batch),
                  time.monotonic() - started)

    async def _commit_after(self, marker_acks: list[Any],
                            offsets: dict[tuple[str, int], int]) -> None:
        """Group offsets follow the markers: commit once they are acknowledged."""
        await asyncio.gather(*marker_acks)
        await self.membership.commit(offsets)
