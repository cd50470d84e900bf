"""The executor core: a Job compiled to a chain of push functions, fed in micro-batches.

Drivers own the inputs and the checkpoint protocol: the local runner reads files
(``local.py``), the Kafka worker reads assigned partitions (``kafka/worker.py``). Both hand
batches of records to :meth:`Executor.push_records`, then call :meth:`advance_time` with their
per-partition watermarks, :meth:`flush_sinks`, and at checkpoints :meth:`checkpoint_ops`.

Event-time results do not depend on the batch size: every one is what advancing the
watermark after every record would give. A partition's watermark after a record is ``max
timestamp so far - max_out_of_orderness - 1``; an operator's is the minimum over its inputs,
idle ones left out. A record is handled under the watermark the records before it left:
every event-time timer and window end at or below it has fired, in time order, before the
record; TTL state whose ``expires_at`` is at or below it reads as absent; the record is late
when its timestamp is at or below it. A timer registered at or below the watermark fires when
the watermark next moves, as in Flink. Batches stay batches: :meth:`Executor.push_records`
computes each record's watermark in C-level passes, sets it (and the TTL clock) per record,
and advances time inside a batch only where a watermark reaches the next timer or window end.
With several partitions, the order in which a driver interleaves their batches is part of the
input, as in any engine whose watermark is a minimum over inputs.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import itemgetter
from typing import Any

from eddies.errors import (
    ConfigError,
    EddiesError,
    KeyEncodingError,
    StateSerializationError,
    UserFunctionError,
)
from eddies.operators.joins import TS_LIMIT as _TS_LIMIT
from eddies.operators.sinks import CollectSink, Sink
from eddies.operators.sources import DeadLetter
from eddies.runtime.builders import BUILDERS, Builder, fan_out
from eddies.runtime.failures import io_error
from eddies.runtime.graph import KEYED_KINDS, Job, Node
from eddies.runtime.keyed import NEVER_DUE, RECORD_ERRORS, BatchCut, KeyedOperator
from eddies.runtime.preload import preload_operators
from eddies.runtime.timers import wall_ms
from eddies.runtime.watermarks import MAX_TIME, MIN_TIME, PartitionWatermark, merge_watermarks
from eddies.state.backend import Batch, StateBackend
from eddies.state.descriptors import declared_states
from eddies.state.ttl import TtlConfig

__all__ = ["RECORD_ERRORS", "Executor", "RunResult", "RunStats", "SourceWatermarks",
           "record_timestamp"]

_DEAD_LETTER_KEEP = 100_000
_DEAD_LETTER_KEEP_BYTES = 16 * 2**20
"""Dead letters kept in memory (``result.dead_letters``, and the sink's buffer between two
writes) are bounded by their raw text and reason, as well as by count."""
_TIMER: Any = object()  # stands for "no record: a timer fired" in error messages
_NO_TIMESTAMP: Any = object()  # stands for "the record's timestamp is being read"


def record_timestamp(ts: Any) -> int:
    """``ts`` as a record's timestamp: int ms since the epoch, within +-2**62. A finite float
    is cut to its int, as the runners do; anything else raises ValueError with the reason a
    runner dead-letters the record with.

    >>> record_timestamp(1_000), record_timestamp(1_000.9)
    (1000, 1000)
    >>> record_timestamp("1000")
    Traceback (most recent call last):
    ...
    ValueError: bad timestamp '1000': expected int ms since epoch
    """
    if type(ts) is not int and type(ts) is float and math.isfinite(ts):
        ts = int(ts)
    if type(ts) is not int:
        raise ValueError(f"bad timestamp {ts!r}: expected int ms since epoch")
    if not -_TS_LIMIT <= ts <= _TS_LIMIT:
        raise ValueError(f"bad timestamp {ts!r}: out of range (more than 2**62 ms from the "
                         "epoch)")
    return ts


SourceWatermarks = dict[Node, list[tuple[int, bool]]]
"""Per source node, the (watermark, idle) of each of its partitions."""
Locate = Callable[[int], "tuple[Any, str | None] | None"]


_COUNTERS = ("events_in", "events_out", "dead_letters", "late_events", "late_dropped",
             "checkpoints")


@dataclass
class RunStats:
    """Counters of a run. The counters are cumulative across resumes of the same state dir
    (the checkpoint carries them); :attr:`before` holds what a resumed run started from, and
    :meth:`this_run`, :attr:`events_per_s` and :meth:`summary` count this run only."""

    events_in: int = 0
    events_out: int = 0
    dead_letters: int = 0
    late_events: int = 0
    late_dropped: int = 0
    """Events a window or a join dropped as too late (no late= tag given); counted, not lost
    silently."""
    checkpoints: int = 0
    watermark: int = MIN_TIME
    resumed: bool = False
    elapsed_s: float = 0.0
    bytes_read: int = 0
    bytes_total: int | None = None
    unrouted_side_outputs: int = 0
    startup: dict[str, float] = field(default_factory=dict)
    """Startup phases of this run in seconds (``open_s``, ``restore_s``, ``preload_s``,
    ``first_event_s``, each measured from the start of the run's previous phase) and
    ``round_trips``, the backend calls made from opening until the first event was
    processed. Filled by the driver (see ``LocalRunner``)."""
    before: dict[str, int] = field(default_factory=dict)
    """The counters as the checkpoint a resumed run started from had them (empty on a fresh
    run)."""
    stopped: bool = False
    """The run ended on a requested stop (a signal, ``request_stop()``), at a checkpoint,
    before the end of its input."""

    def this_run(self, counter: str) -> int:
        """A counter (``"events_in"``, ``"checkpoints"``, ...) minus its value at the resume.

        >>> stats = RunStats(events_in=1_500, before={"events_in": 1_000})
        >>> stats.this_run("events_in")
        500
        """
        return int(getattr(self, counter)) - self.before.get(counter, 0)

    @property
    def events_per_s(self) -> float:
        """This run's events in per second of this run."""
        return self.this_run("events_in") / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line of this run's counts (a resumed run's totals are in the tag at the end).

        >>> RunStats(events_in=1_500, checkpoints=3, elapsed_s=0.5, resumed=True,
        ...          before={"events_in": 1_000, "checkpoints": 2}).summary()
        '500 events in, 0 out, 0 dead letters, 0 late (0 dropped), 1 checkpoints, watermark -, 0.50s (1,000 events/s) [resumed] after 1,000 events'
        """  # noqa: E501
        wm = "-" if self.watermark == MIN_TIME else ("end" if self.watermark == MAX_TIME
                                                     else str(self.watermark))
        n = {c: self.this_run(c) for c in _COUNTERS}
        return (
            f"{n['events_in']:,} events in, {n['events_out']:,} out, "
            f"{n['dead_letters']:,} dead letters, {n['late_events']:,} late "
            f"({n['late_dropped']:,} dropped), "
            f"{n['checkpoints']:,} checkpoints, watermark {wm}, "
            f"{self.elapsed_s:.2f}s ({self.events_per_s:,.0f} events/s)"
            + (f" [resumed] after {self.before.get('events_in', 0):,} events"
               if self.resumed else "")
        )


@dataclass
class RunResult:
    """What ``run_local`` returns: stats, collected outputs and dead letters.

    ``dead_letters`` holds the run's first dead letters, up to 100,000 of them and 16 MiB of
    raw text and reasons; ``stats.dead_letters`` counts them all, and the dead-letter output
    (``run_local(..., dead_letters=PATH)``) receives every one."""

    stats: RunStats
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    sinks: dict[str, Sink] = field(default_factory=dict)

    @property
    def startup(self) -> dict[str, float]:
        """The startup phases and backend round trips (see :attr:`RunStats.startup`)."""
        return self.stats.startup

    def collected(self, sink: CollectSink | str) -> list[Any]:
        """Everything a ``sinks.collect()`` sink received in this run; ``sink`` is the sink
        or its name in the job (``"collect"``, then ``"collect-2"``, unless named)."""
        if isinstance(sink, str):
            found = self.sinks.get(sink)
            if not isinstance(found, CollectSink):
                raise ConfigError(f"no collect sink named {sink!r}")
            return found.items
        return sink.items


def _describe(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Executor:
    """A compiled Job: operators, push chain, watermarks, sinks and dead letters."""

    def __init__(
        self,
        job: Job,
        backend: StateBackend,
        *,
        max_parallelism: int = 128,
        ttl_config: TtlConfig | None = None,
        clock: Callable[[], int] | None = None,
        dead_sink: Sink | None = None,
        cache_entries: int | None = None,
        builders: Mapping[str, Builder] | None = None,
    ) -> None:
        if not isinstance(job, Job):
            raise ConfigError(f"expected an eddies.Job, got {job!r}")
        if cache_entries is not None and cache_entries < 1:
            raise ConfigError(f"cache_entries must be at least 1, got {cache_entries}")
        self.job = job
        self.backend = backend
        self.cache_entries = cache_entries
        self.max_parallelism = max_parallelism
        self.ttl_config = ttl_config
        self.clock = clock or wall_ms
        self.stats = RunStats()
        self.builders: dict[str, Builder] = {**BUILDERS, **(builders or {})}
        """Node kind -> builder of its push (see ``builders.py``): the default table plus
        the driver's own kinds (the Kafka worker's ``repartition``)."""
        self.late_dropped_before = 0
        """Events windows dropped as too late before this run resumed (from the checkpoint);
        the window functions count this run's."""
        self.counts: dict[str, list[int]] = {}
        """Events [in, out] per source, keyed operator and sink node (for metrics)."""
        self.on_event_time: dict[str, list[float]] = {}
        """Per keyed operator, [seconds in on_event, events timed]: whole batches where the
        keyed batch path runs, one event in 64 otherwise (for metrics)."""
        self.dead: list[dict[str, Any]] = []
        """The first dead letters, up to 100,000 and 16 MiB of raw text and reasons; the
        sink gets every one and ``stats.dead_letters`` counts every one."""
        self.dead_bytes = 0
        self._dead_full = False
        self._dead_sink = dead_sink
        self._dead_buffer: list[dict[str, Any]] = []
        self._dead_buffer_bytes = 0
        self.cur_source: str | None = None
        """The source whose records are being pushed (None while timers fire)."""
        self._cur_locate: Locate | None = None
        self.cur_index = 0
        """The index of the record being pushed in its source's read (for dead letters)."""
        # Called once with the time the first record has gone through the operators.
        self.on_first_event: Callable[[], None] | None = None
        # Event time between records (see _push_timed): the operators each source feeds,
        # and the flag their registrations of due work raise.
        self._downstream: dict[Node, list[tuple[Node, KeyedOperator]]] = {}
        self._upstream: dict[Node, list[tuple[Node, KeyedOperator]]] = {}
        self._cut = BatchCut()
        self._compile()

    # -- compile -----------------------------------------------------------------------------
    def _compile(self) -> None:
        job = self.job
        nodes = job.nodes
        children: dict[Node, list[tuple[Node, int]]] = {n: [] for n in nodes}
        for n in nodes:
            for i, parent in enumerate(n.inputs):
                children[parent].append((n, i))
        self.children = children
        self.operators: dict[Node, KeyedOperator] = {}
        self.sink_nodes: list[tuple[Node, Sink, list[Any]]] = []
        self.wm: dict[Node, int] = {n: MIN_TIME for n in nodes}
        self.idle: dict[Node, bool] = {n: False for n in nodes}
        self.timer_emit: dict[Node, Callable[[Any, Any], None]] = {}
        state_owner: dict[str, str] = {}
        for n in nodes:
            if n.kind in KEYED_KINDS:
                for desc in declared_states(n.params["fn"]).values():
                    owner = state_owner.setdefault(desc.name, n.name)
                    if owner != n.name:
                        raise ConfigError(
                            f"job {job.name!r}: operators {owner!r} and {n.name!r} both declare "
                            f"state {desc.name!r}; state names must be unique in a job (they "
                            "name column families and changelog topics); rename one"
                        )
        if not any(n.kind == "source" for n in nodes):
            raise ConfigError(f"job {job.name!r} has no source; add job.source(...)")
        if not any(n.kind == "sink" for n in nodes):
            raise ConfigError(f"job {job.name!r} has no sink; end a stream with .sink(...)")
        pushes: dict[tuple[Node, int], Callable[[Any, Any], None]] = {}
        self.pushes = pushes
        self.batch_pushes: dict[tuple[Node, int], Callable[..., int]] = {}
        for n in reversed(nodes):
            main = [pushes[(c, i)] for c, i in children[n] if c.kind != "side_output"]
            emit = fan_out(main)
            for i in range(max(1, len(n.inputs))):
                build = self.builders.get(n.kind)
                if build is None:
                    raise ConfigError(f"operator {n.name!r}: no builder for node kind "
                                      f"{n.kind!r}; known: {', '.join(sorted(self.builders))}")
                pushes[(n, i)] = build(self, n, i, emit)
        self.source_emits: dict[Node, Callable[[Any, Any], None]] = {
            n: fan_out([pushes[(c, i)] for c, i in children[n]])
            for n in nodes if n.kind == "source"
        }
        # A source whose only consumer is key_by -> process takes batches straight into the
        # keyed operator (KeyedPush.batch, see KeyedOperator.compile).
        self.source_batches: dict[Node, Callable[..., int]] = {}
        for n in nodes:
            if n.kind != "source" or len(children[n]) != 1:
                continue
            key_node, _ = children[n][0]
            if key_node.kind != "key_by" or len(children[key_node]) != 1:
                continue
            proc, port = children[key_node][0]
            batch_push = self.batch_pushes.get((proc, port))
            if batch_push is not None:
                self.source_batches[n] = batch_push

    def pin_key_group(self, group: int | None) -> None:
        """Give the keys the next records bring the key group ``group`` in every keyed
        operator (Kafka: the partition being pushed, so that one partition's state is one
        key-group range); None: back to ``crc32 % max_parallelism``."""
        for op in self.operators.values():
            op.store.key_group = group

    def pushes_for_side(self, side_node: Node) -> Callable[[Any, Any], None]:
        """The pushes of ``side_node``'s children, fanned out (for its operator's
        ``ctx.output``)."""
        return fan_out([self.pushes[(c, i)] for c, i in self.children[side_node]])

    def record_failed(self, exc: Exception, value: Any, key: Any, ts: Any,
                      operator: str) -> None:
        """What an exception while handling ``value`` leads to: a record the state cannot
        hold (its key or a value it sets) goes to dead letters and the job goes on;
        anything else fails the job, naming the operator, key and record."""
        if isinstance(exc, (StateSerializationError, KeyEncodingError)):
            self.dead_letter(self._record_letter(value, str(exc), operator))
            return
        if isinstance(exc, EddiesError):
            if not isinstance(exc, UserFunctionError):
                exc.add_note(f"in operator {operator!r} on key {key!r}, for record "
                             f"{_describe(value)} (timestamp {ts})")
            raise exc
        raise self.user_error(operator, key, value, ts, exc) from exc

    def reject(self, value: Any, reason: str, operator: str) -> None:
        """Send the record being pushed to dead letters with ``reason``."""
        self.dead_letter(self._record_letter(value, reason, operator))

    def user_error(self, op: str, key: Any, value: Any, ts: Any, exc: Exception, *,
                   where: str | None = None, call: str = "on_timer") -> Exception:
        """The UserFunctionError for ``exc`` raised by user code of operator ``op`` (or of
        what ``where`` names) on ``key`` for record ``value`` (``_TIMER``: in ``call``, the
        timer or on_expire call, at ``ts``; ``ts`` ``_NO_TIMESTAMP``: the record has none
        yet). An EddiesError other than a UserFunctionError is returned as it is."""
        if isinstance(exc, EddiesError) and not isinstance(exc, UserFunctionError):
            return exc
        if where is None:
            where = f"operator {op!r}" + (f" on key {key!r}" if key is not None else "")
        what = (f"in {call} at {ts}" if value is _TIMER
                else f"for record {_describe(value)}"
                + ("" if ts is _NO_TIMESTAMP else f" (timestamp {ts})"))
        return UserFunctionError(
            f"{where} failed {what}: "
            f"{type(exc).__name__}: {exc}. The last checkpoint is intact: fix the job and run "
            "it again on the same state to resume."
        )

    def _record_letter(self, value: Any, reason: str, operator: str) -> DeadLetter:
        """A dead letter for the record being handled, with its source, position and raw text
        when it came straight from a source (records made by timers have neither)."""
        locate = self._cur_locate
        if locate is not None and self.cur_source is not None:
            located = locate(self.cur_index)
            if located is not None:
                position, raw = located
                return DeadLetter(self.cur_source, position,
                                  _describe(value) if raw is None else raw, reason)
        return DeadLetter(operator, None, _describe(value), reason)

    def dead_letter(self, letter: DeadLetter) -> None:
        """Count ``letter``, keep it (up to the bounds of :attr:`dead`) and send it to the
        dead-letter sink."""
        self.stats.dead_letters += 1
        record = letter.to_dict()
        size = len(letter.raw) + len(letter.reason)
        if not self._dead_full:
            if (len(self.dead) < _DEAD_LETTER_KEEP
                    and self.dead_bytes + size <= _DEAD_LETTER_KEEP_BYTES):
                self.dead.append(record)
                self.dead_bytes += size
            else:  # keep a prefix: once full, later (even small) letters are counted only
                self._dead_full = True
        if self._dead_sink is not None:
            buffer = self._dead_buffer
            if not buffer:  # written by flush_sinks since
                self._dead_buffer_bytes = 0
            buffer.append(record)
            self._dead_buffer_bytes += size
            if self._dead_buffer_bytes > _DEAD_LETTER_KEEP_BYTES:
                # Spill before the end of the batch: the sink gets every letter, memory
                # holds a bounded part (outputs are written too, keeping their order).
                self.flush_sinks()

    # -- time ----------------------------------------------------------------------------------
    def advance_time(self, by_source: SourceWatermarks, now: int | None = None) -> None:
        """Propagate source watermarks through the graph in topological order, firing due
        event-time and processing-time timers; a source missing from ``by_source`` counts as
        finished (+infinity)."""
        self._advance(by_source, self.clock() if now is None else now)

    def take_watermarks(self, by_source: SourceWatermarks, now: int | None = None) -> None:
        """:meth:`advance_time` for restored state: operators take the watermarks that
        ``by_source`` gives them without firing event-time work at or below them. The
        checkpoint the state came from was written after everything due by its watermark
        had fired, except what was registered below the watermark since (a timer set in the
        past, a value written already expired): that waits for the next advance of event
        time, as it would have had the job not stopped. Processing-time timers due at
        ``now`` fire."""
        self._advance(by_source, self.clock() if now is None else now, fire=False)

    def _watermarks(self, by_source: SourceWatermarks) -> tuple[dict[Node, int], dict[Node, bool]]:
        """Each node's watermark and idleness were ``by_source`` propagated (nothing moves)."""
        wm: dict[Node, int] = {}
        idle: dict[Node, bool] = {}
        current = self.wm
        for n in self.job.nodes:
            if n.kind == "source":
                merged = merge_watermarks(by_source.get(n, [(MAX_TIME, False)]))
            else:
                merged = merge_watermarks((wm[p], idle[p]) for p in n.inputs)
            idle[n] = merged is None
            old = current[n]
            wm[n] = merged if merged is not None and merged > old else old
        return wm, idle

    def _advance(self, by_source: SourceWatermarks, now: int | None,
                 fire: bool = True) -> None:
        """advance_time; ``now`` None moves event time only (between records of a batch);
        ``fire`` False sets each operator's watermark without firing event-time work (see
        take_watermarks)."""
        wm, idle = self._watermarks(by_source)
        self.wm.update(wm)
        self.idle.update(idle)
        for n in self.job.nodes:  # topological: timer outputs reach operators not yet moved
            op = self.operators.get(n)
            if op is not None:
                watermark = None if idle[n] else wm[n]
                if not fire and watermark is not None:
                    op.set_watermark(watermark)
                    watermark = None
                self._advance_op(n, op, watermark, now)
        self._note_time(wm)

    def _advance_op(self, n: Node, op: KeyedOperator, watermark: int | None,
                    now: int | None) -> None:
        """Move ``op`` to ``watermark`` (None: idle) and processing time to ``now`` (None:
        not), firing its due timers; a failure names the operator, key and timer."""
        out: list[Any] = []
        emit = self.timer_emit[n]
        try:
            if watermark is not None:
                op.advance_watermark(watermark, out, emit)
            if now is not None:
                # Wall-clock timers fire while event time is idle too: that is when
                # timeouts matter most.
                op.advance_processing_time(now, out, emit)
        except Exception as exc:
            error = self.timer_error(op, exc)
            if error is exc:
                raise
            raise error from exc
        if op.emitted:  # timer outputs, counted per firing by the operator
            self.counts[n.name][1] += op.emitted
            op.emitted = 0

    def timer_error(self, op: KeyedOperator, exc: Exception) -> Exception:
        """What to raise for ``exc`` out of ``op``'s timers: an EddiesError as it is, with
        a note naming the operator, key and timer (a UserFunctionError already names
        them); anything else as a UserFunctionError."""
        expiring, op.expiring = op.expiring, None
        call = "on_timer" if expiring is None else f"on_expire of state {expiring!r}"
        if isinstance(exc, EddiesError):
            if not isinstance(exc, UserFunctionError):
                exc.add_note(f"in operator {op.name!r} on key {op.ctx.key!r}, in "
                             f"{call} at {op.ctx.timestamp}")
            return exc
        return self.user_error(op.name, op.ctx.key, _TIMER, op.ctx.timestamp, exc, call=call)

    def _note_time(self, wm: dict[Node, int]) -> None:
        """The stats that follow event time: windows' dropped events, the sinks' watermark."""
        self.stats.late_dropped = self.late_dropped_before + sum(
            getattr(op.function, "late_dropped", 0) for op in self.operators.values()
        )
        sinks_wm = [wm[n] for n, _, _ in self.sink_nodes]
        self.stats.watermark = min(sinks_wm) if sinks_wm else MIN_TIME

    def flush_sinks(self) -> None:
        """Write buffered outputs and dead letters to their sinks."""
        for node, sink, buffer in self.sink_nodes:
            if buffer:
                refused: list[DeadLetter] = []
                try:
                    sink.write(buffer)
                except OSError as exc:
                    raise io_error(f"writing sink {node.name!r} ({sink!r})", exc) from exc
                except (TypeError, ValueError):
                    # A value the sink cannot write (one JSON cannot hold): one at a time,
                    # the others written in order and the refused ones to dead letters.
                    refused = self._write_each(node, sink, buffer)
                written = len(buffer) - len(refused)
                self.stats.events_out += written
                count = self.counts.setdefault(node.name, [0, 0])
                count[0] += written
                count[1] += written
                buffer.clear()
                for letter in refused:  # (after the clear: a letter may flush the sinks)
                    self.dead_letter(letter)
        if self._dead_sink is not None and self._dead_buffer:
            try:
                self._dead_sink.write(self._dead_buffer)
            except OSError as exc:
                raise io_error(f"writing dead letters ({self._dead_sink!r})", exc) from exc
            self._dead_buffer.clear()

    def _write_each(self, node: Node, sink: Sink, values: list[Any]) -> list[DeadLetter]:
        """Write ``values`` to ``sink`` one at a time (a sink's ``write`` of a list it
        refuses writes none of it); returns a dead letter for each value it refused."""
        refused = []
        for value in values:
            try:
                sink.write([value])
            except OSError as exc:
                raise io_error(f"writing sink {node.name!r} ({sink!r})", exc) from exc
            except (TypeError, ValueError) as exc:
                refused.append(DeadLetter(
                    node.name, None, _describe(value),
                    f"sink {node.name!r} ({sink!r}) cannot write it: {type(exc).__name__}: "
                    f"{exc}; give the sink JSON's types (str dict keys, valid Unicode)"))
        return refused

    def push_records(
        self, node: Node, values: list[Any], locate: Locate | None = None, now: int = 0,
        *, mark: PartitionWatermark | None = None, others: SourceWatermarks | None = None,
    ) -> int | None:
        """Push a batch of records of source ``node`` down the graph; returns the highest
        timestamp among them (None if they have none). ``locate(i)`` gives the position and
        raw text of record ``i`` for dead letters.

        With ``mark``, the watermark of the partition the records come from (not moved here:
        the driver observes the returned timestamp afterwards, as before), event time
        advances between the records as if after each one, ``others`` holding the
        ``(watermark, idle)`` of every other partition. Without it, records are judged
        against the operators' watermarks as they stand, and time moves at
        :meth:`advance_time` only."""
        count = self.counts.setdefault(node.name, [0, 0])
        count[0] += len(values)
        count[1] += len(values)
        self.cur_source = node.name
        self._cur_locate = locate
        timing = None
        if mark is not None and node.params["timestamp"] is not None:
            ops = self._downstream_ops(node)
            if ops:
                timing = _EventTime(node, mark, others or {}, ops)
        try:
            if self.on_first_event is not None and values:
                # Startup metrics: the first record alone, so its time is known exactly.
                first, self.on_first_event = self.on_first_event, None
                head = self._push_range(node, values, 0, 1, timing)
                first()
                rest = self._push_range(node, values, 1, len(values), timing)
                top = rest if head is None or (rest is not None and rest > head) else head
            else:
                top = self._push_range(node, values, 0, len(values), timing)
            if timing is not None and timing.settle is not None:
                self._settle(timing)
            return top
        finally:
            self.cur_source = None  # records made by timers have no source position
            self._cur_locate = None

    def _push_range(
        self, node: Node, values: list[Any], lo: int, hi: int, timing: _EventTime | None = None
    ) -> int | None:
        """push_records for ``values[lo:hi]``."""
        emit = self.source_emits[node]
        tsfn = node.params["timestamp"]
        if tsfn is None:
            for i in range(lo, hi):
                self.cur_index = i
                emit(values[i], None)
            return None
        dead = self.dead_letter
        record_letter = self._record_letter
        field_name = getattr(tsfn, "field", None)
        tsget = itemgetter(field_name) if field_name is not None else tsfn
        batch_push = self.source_batches.get(node)
        if (batch_push is not None or timing is not None) and hi > lo:
            # Timestamps in one C-level pass; when every one is an int in range, the batch
            # goes on whole (to the keyed operator, if that is all the source feeds).
            # Anything else takes the per-record path, which sends each bad record to dead
            # letters with its reason.
            chunk = values[lo:hi] if lo or hi != len(values) else values
            try:
                stamps = list(map(tsget, chunk))
            except Exception:  # the loop below tells bad records from a bug, one by one
                stamps = None
            if (stamps is not None and set(map(type, stamps)) == {int}
                    and min(stamps) >= -_TS_LIMIT and max(stamps) <= _TS_LIMIT):
                if timing is not None:
                    self._push_timed(chunk, stamps, lo, timing, batch_push, emit)
                else:
                    batch_push(chunk, stamps, lo)  # type: ignore[misc]
                return max(stamps)
        max_ts = MIN_TIME
        # With timing, the valid records between bad ones go on as runs.
        run: list[Any] = []
        run_stamps: list[int] = []
        run_lo = lo
        for i in range(lo, hi):
            value = values[i]
            self.cur_index = i
            try:
                ts = tsget(value)
            except RECORD_ERRORS as exc:
                reason = (f"no timestamp ({getattr(tsfn, '__name__', 'timestamp')}): "
                          f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug in the timestamp function: the job stops
                if run:  # after the records before it, as record at a time
                    self._push_timed(run, run_stamps, run_lo, timing, batch_push,  # type: ignore[arg-type]
                                     emit)
                    self.cur_index = i
                raise self.user_error(
                    node.name, None, value, _NO_TIMESTAMP, exc,
                    where=(f"source {node.name!r} (timestamp function "
                           f"{getattr(tsfn, '__name__', 'timestamp')!r})")) from exc
            else:
                try:
                    ts = record_timestamp(ts)
                except ValueError as exc:
                    reason = str(exc)
                else:
                    if ts > max_ts:
                        max_ts = ts
                    if timing is None:
                        emit(value, ts)
                    else:
                        if not run:
                            run_lo = i
                        run.append(value)
                        run_stamps.append(ts)
                    continue
            if run:
                self._push_timed(run, run_stamps, run_lo, timing, batch_push,  # type: ignore[arg-type]
                                 emit)
                run, run_stamps = [], []
                self.cur_index = i
            dead(record_letter(value, reason, node.name))
        if run:
            self._push_timed(run, run_stamps, run_lo, timing, batch_push, emit)  # type: ignore[arg-type]
        return max_ts if max_ts != MIN_TIME else None

    def _upstream_ops(self, node: Node) -> list[tuple[Node, KeyedOperator]]:
        """The keyed operators that feed, directly or not, an operator source ``node``
        feeds, without ``node`` feeding them (the other side of a join downstream)."""
        ops = self._upstream.get(node)
        if ops is None:
            fed = {n for n, _ in self._downstream_ops(node)}
            above: set[Node] = set()
            stack = list(fed)
            while stack:
                for parent in stack.pop().inputs:
                    if parent not in above:
                        above.add(parent)
                        stack.append(parent)
            ops = self._upstream[node] = [
                (n, op) for n, op in self.operators.items() if n in above and n not in fed]
        return ops

    def _upstream_due(self, node: Node, wm: dict[Node, int]) -> bool:
        """Whether an operator of :meth:`_upstream_ops` has event-time work due at or below
        the watermark ``wm`` gives it (its inputs moved since it last did)."""
        for n, op in self._upstream_ops(node):
            due = op.next_event_time()
            if due is not None and op.watermark < wm[n] and due <= wm[n]:
                return True
        return False

    def _downstream_ops(self, node: Node) -> list[tuple[Node, KeyedOperator]]:
        """The keyed operators fed by source ``node``, directly or not, in graph order."""
        ops = self._downstream.get(node)
        if ops is None:
            reached = set()
            stack = [node]
            while stack:
                for child, _ in self.children[stack.pop()]:
                    if child not in reached:
                        reached.add(child)
                        stack.append(child)
            ops = self._downstream[node] = [
                (n, op) for n, op in ((n, self.operators.get(n)) for n in self.job.nodes)
                if op is not None and n in reached]
            for op in self.operators.values():
                op.cut = self._cut
        return ops

    def _push_timed(
        self, values: list[Any], stamps: list[int], lo: int, timing: _EventTime,
        batch_push: Callable[..., int] | None, emit: Callable[[Any, Any], None],
    ) -> None:
        """Push records whose timestamps are checked ints, with event time advanced between
        them as if after every one (see the module docstring). ``lo``: the index of
        ``values[0]`` in the source's read, for dead letters.

        The watermark each record is handled under comes from C-level passes: per
        operator, ``max(its watermark, min(partition watermark, bound))``, where the bound
        (the other inputs hold it back) is computed once per push: ``others`` is fixed
        for the push and no watermark moved in it exceeds the bound. Before a record whose
        watermark reaches some operator's next event-time work (a timer, a window end),
        time is advanced, firing that work (:meth:`_advance_to`). Work registered during
        the push at a time it reaches (``KeyedOperator.horizon``) raises the cut flag after
        the record that registered it, and the next due time is read again."""
        ys = timing.mark.watermarks_before(stamps, timing.watermark)
        timing.watermark = ys.pop()  # after the last record
        if timing.bounds is None:
            wm, _ = self._watermarks(timing.with_partition_at(MAX_TIME))
            timing.bounds = [wm[n] for n, _ in timing.ops]
            if not timing.advanced and self._upstream_due(timing.node, wm):
                # The bounds count on operators the partition does not feed: their outputs
                # must reach the operators below them before the records move those past
                # their times. Time goes through the whole graph first, as it would have
                # after the last record of their inputs.
                self._advance_to(timing, ys[0])
        ops = timing.ops
        last = ys[-1]
        for (_, op), bound in zip(ops, timing.bounds, strict=True):
            high = last if last < bound else bound
            current = op.watermark
            op.horizon = high if high > current else current
        try:
            if batch_push is not None and len(ops) == 1:
                op = ops[0][1]
                due_at = op.due_watermark

                def advance(j: int) -> int:
                    self._advance_to(timing, ys[j])
                    return due_at()

                direct_at = batch_push(values, stamps, lo,
                                       _span(ys, op.watermark, timing.bounds[0]), advance,
                                       timing)
                if direct_at >= 0:
                    timing.settle = ys[direct_at]
            else:
                self._push_run(values, stamps, lo, ys, timing, emit)
        finally:
            for _, op in ops:
                op.horizon = MIN_TIME

    def _push_run(
        self, values: list[Any], stamps: list[int], lo: int, ys: list[int],
        timing: _EventTime, emit: Callable[[Any, Any], None],
    ) -> None:
        """_push_timed one record at a time down the graph, each operator following the
        record's watermark (``ys``: the partition's before each record)."""
        cut = self._cut
        ops = timing.ops
        bounds = timing.bounds
        assert bounds is not None
        n = len(ys)
        # The operators whose watermark the records move, each with its watermark per record.
        spans = [_span(ys, op.watermark, bound) if op.horizon > op.watermark else None
                 for (_, op), bound in zip(ops, bounds, strict=True)]
        follows = [(op.follow, span) for (_, op), span in zip(ops, spans, strict=True)
                   if span is not None]
        limit = self._next_due(timing)
        for j in range(n):
            if ys[j] >= limit:
                self._advance_to(timing, ys[j])
                for i, (_, op) in enumerate(ops):
                    span = spans[i]
                    current = op.watermark
                    if span is not None and current > span[j]:
                        # Another input's watermark took the operator beyond the planned
                        # ones: it follows from where it is.
                        spans[i] = span[:j] + list(map(max, repeat(current, n - j),
                                                       islice(span, j, None)))
                        if current > op.horizon:
                            op.horizon = current
                        follows = [(o.follow, s) for (_, o), s in zip(ops, spans, strict=True)
                                   if s is not None]
                limit = self._next_due(timing)
            self.cur_index = lo + j
            for follow, span in follows:
                follow(span[j])
            emit(values[j], stamps[j])
            if cut.due:
                cut.due = False
                limit = self._next_due(timing)

    def _next_due(self, timing: _EventTime) -> int:
        """The lowest watermark of the partition being pushed at which some operator it
        feeds has event-time work due (NEVER_DUE: none)."""
        limit = NEVER_DUE
        for (_, op), bound in zip(timing.ops, timing.bounds, strict=True):  # type: ignore[arg-type]
            due = op.next_event_time()
            if due is None:
                continue
            # Work at or below the operator's watermark waits for the watermark to move.
            current = op.watermark
            at = due if due > current else current + 1
            if at <= bound and at < limit:
                limit = at
        return limit

    def _advance_to(self, timing: _EventTime, watermark: int) -> None:
        """Advance event time to the partition being at ``watermark``, between records.

        The first time in a push, through the whole graph (:meth:`_advance`). After that,
        only the operators the partition feeds can move: each one's watermark is then
        ``max(its last one, min(watermark, its bound))`` (a min over inputs of maxes and
        mins with the same partition watermark in them keeps that form), so they are moved
        directly, in graph order; :meth:`_settle` brings the other nodes' watermarks up at
        the end of the push."""
        # As when the driver advances time after a batch: no key group pinned (Kafka), so
        # timers of every partition fire under their own, and records made by timers have
        # no source position.
        pinned = timing.pinned
        if pinned is None:
            pinned = timing.pinned = [(op.store, op.store.key_group)
                                      for op in self.operators.values()
                                      if op.store.key_group is not None]
        for store, _ in pinned:
            store.key_group = None
        source = self.cur_source
        self.cur_source = None
        try:
            if not timing.advanced:
                self._advance(timing.with_partition_at(watermark), None)
                timing.advanced = True
                return
            timing.settle = watermark
            wm = self.wm
            for (n, op), bound in zip(timing.ops, timing.bounds, strict=True):  # type: ignore[arg-type]
                target = watermark if watermark < bound else bound
                if target > wm[n]:
                    wm[n] = target
                    if target > op.watermark:
                        self._advance_op(n, op, target, None)
        finally:
            self.cur_source = source
            for store, group in pinned:
                store.key_group = group

    def _settle(self, timing: _EventTime) -> None:
        """After a push that advanced operators directly: every node's watermark as the
        whole-graph advance to the last watermark would have left it."""
        assert timing.settle is not None
        wm, idle = self._watermarks(timing.with_partition_at(timing.settle))
        self.wm.update(wm)
        self.idle.update(idle)
        self._note_time(wm)

    # -- lifecycle -----------------------------------------------------------------------------
    def open_operators(self, meta: dict[bytes, bytes] | None = None,
                       first: dict[KeyedOperator, list[Any]] | None = None
                       ) -> dict[str, float]:
        """Restore every operator's timers, watermark and broadcast state, then call the
        functions' open(). ``meta``: the ``__meta__`` column family, if already read;
        ``first``: keys by operator whose state to read ahead (``runtime/preload.py``).
        Returns each operator's preload seconds."""
        preloaded = preload_operators(self.operators.values(), first)
        for op in self.operators.values():
            op.restore(meta, preloaded=True)
            try:
                op.function.open()
            except EddiesError:
                raise
            except Exception as exc:
                raise UserFunctionError(
                    f"operator {op.name!r} failed in open(): {type(exc).__name__}: {exc}"
                ) from exc
        return preloaded

    def checkpoint_ops(self, batch: Batch) -> None:
        """Add every operator's expired-entry deletions, then its dirty state and timers."""
        for op in self.operators.values():
            op.checkpoint(batch)

    def cache_full(self) -> bool:
        """True when a state cache holds over twice its ``cache_entries``: checkpoint early,
        after which its clean entries can be dropped (dirty ones cannot). Likewise for the
        timers buffered beyond the in-memory window."""
        for op in self.operators.values():
            store = op.store
            if store.cached_entries() > 2 * store.cache_entries or op.timers.buffer_full():
                return True
        return False

    def sweep(self, groups: Iterable[int] | None = None) -> int:
        """Delete everything expired, in steps of bounded memory (after a checkpoint is
        written). Sweeping to the end each time keeps up with any write rate: a fixed number
        of entries per checkpoint would fall behind a job writing more TTL entries than that
        between checkpoints, and expired entries would pile up. ``groups``: only these key
        groups' entries (a Kafka worker's owned ones, not its standby or revoked copies)."""
        return sum(op.backend.sweep_all(groups) for op in self.operators.values())


class _EventTime:
    """The partition being pushed: its watermark before the next record, the other
    partitions' ``(watermark, idle)``, the keyed operators it feeds, and what one push
    computes once (see Executor._push_timed and Executor._advance_to)."""

    __slots__ = ("node", "mark", "watermark", "others", "ops", "bounds", "pinned", "advanced",
                 "settle")

    def __init__(self, node: Node, mark: PartitionWatermark, others: SourceWatermarks,
                 ops: list[tuple[Node, KeyedOperator]]) -> None:
        self.node = node
        self.mark = mark
        self.watermark = mark.watermark
        self.others = others
        self.ops = ops
        self.bounds: list[int] | None = None
        """Per operator, the highest watermark the partition can bring it to (the other
        inputs hold it back): fixed for the push, as ``others`` is."""
        self.pinned: list[tuple[Any, int]] | None = None
        """The stores with a key group pinned, and the group (fixed for the push)."""
        self.advanced = False
        """Time was advanced through the whole graph once in this push."""
        self.settle: int | None = None
        """The last watermark operators were moved to directly (see Executor._settle)."""

    def with_partition_at(self, watermark: int) -> SourceWatermarks:
        """The source watermarks with this partition at ``watermark`` (and not idle)."""
        by_source = dict(self.others)
        by_source[self.node] = [*self.others.get(self.node, ()), (watermark, False)]
        return by_source


def _span(ys: list[int], low: int, bound: int) -> list[int]:
    """An operator's watermark for each record: ``max(low, min(y, bound))`` per ``ys``
    (nondecreasing); ``ys`` itself when no value changes.

    >>> _span([5, 7, 9, 12], 6, 10)
    [6, 7, 9, 10]
    >>> _span([5, 7], 9, 8)
    [9, 9]
    """
    n = len(ys)
    if not n or (ys[0] >= low and ys[-1] <= bound):
        return ys
    if low >= bound:
        return [low] * n
    # ys is sorted: a run below low, the ys within [low, bound], a run above bound.
    i = bisect_left(ys, low)
    j = bisect_right(ys, bound, i)
    return [low] * i + ys[i:j] + [bound] * (n - j)
