"""The local runner: runs a Job in this process over files, with checkpoints and resume.

It reads a micro-batch from every source partition, pushes each record through the compiled
operator chain, then advances watermarks (firing timers in topological order), writes sink
output, and every ``checkpoint_interval`` events writes one atomic checkpoint: dirty state,
timers, watermarks, source positions and sink lengths. Restarting on the same RocksDB dir
resumes from the last checkpoint, so state is exactly-once over replayable sources and file
sinks are cut back to their checkpointed length (no doubled or torn lines).

Decisions users see:

- Dead letters are ``{"source", "position", "raw", "reason"}``. A record whose key or
  timestamp turns out missing after parsing keeps the position and raw line it was read from
  (``{"file", "offset", "line"}`` for files), so every dead letter points at its input line.
- A timestamp is an int, or a finite float, of ms within 2**62 of the epoch; anything else
  is a bad timestamp (a dead letter), never a crash at the next checkpoint.
- Processing-time timers fire while every input is idle too; event time waits.
- While it runs, the cyclic garbage collector's young-generation threshold is raised to
  100,000 allocations (see ``_GC_YOUNG``), and restored afterwards.
- Sources and sinks without ``name=`` are named after their file (or ``iterable``,
  ``collect``); a second one of the same name becomes ``name-2``, in graph order. Names key
  the checkpoint, so give ``name=`` before reordering a job whose state should resume.
- A state dir belongs to one job: each checkpoint records the job's name, its keyed
  operators and states, and its input files' fingerprints (``identity.py``). A run of
  another job, or over replaced input, stops before the first event and before any sink is
  opened; so does a run over input that grew after a run that ended its event time, while a
  run over the same ended input says there is nothing to do and reads nothing.
- ``follow=True`` (``eddies run --follow``) reads every file source as ``tail -f``: the run
  ends only on :meth:`LocalRunner.request_stop` (a signal under the CLI), with a final
  checkpoint, and a later run on the same dir goes on from there. While the files are quiet
  it polls them every 0.1 s, advancing processing time (idleness, processing-time timers),
  and takes a checkpoint when it has caught up with them after new events or outputs, so
  that what a followed job writes reaches its sinks' files while the input is quiet.
- ``from_savepoint=`` (``eddies run --from-savepoint``) restores a savepoint into a new,
  empty state dir before the first event; a changed job maps its states by operator and
  state name (``restore.py`` has the rules), and the dir then belongs to the new job.
"""

from __future__ import annotations

import gc
import logging
import time as _time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eddies.errors import ConfigError, StateIdentityError
from eddies.operators.sinks import Sink
from eddies.operators.sinks import jsonl as jsonl_sink
from eddies.operators.sources import SourceReader
from eddies.runtime.executor import Executor, RunResult, RunStats, SourceWatermarks
from eddies.runtime.failures import io_error
from eddies.runtime.graph import Job, Node
from eddies.runtime.identity import (
    IDENTITY_KEY,
    RESTORE_KEYS_KEY,
    RESTORING_KEY,
    PartitionInput,
    check_ended,
    check_identity,
    check_max_parallelism,
    decode_identity,
    encode_identity,
    job_identity,
    stored_job_names,
)
from eddies.runtime.keyed import META_CF
from eddies.runtime.observe import Observer, listen_inspector
from eddies.runtime.preload import first_keys
from eddies.runtime.watermarks import MAX_TIME, BoundedOutOfOrderness, PartitionWatermark
from eddies.state import open_backend
from eddies.state.backend import Batch, StateBackend
from eddies.state.keys import encode_key
from eddies.state.ttl import TtlConfig
from eddies.state.values import pack, unpack

__all__ = ["LocalRunner", "RunResult", "RunStats", "run_local", "runs_started"]

log = logging.getLogger("eddies.runner")

_runs_started = 0


def runs_started() -> int:
    """How many runs this process has started (``LocalRunner.run``, ``run_local``): the CLI
    compares it before and after importing a job's module, to tell a module that runs its job
    at import time."""
    return _runs_started

_FOLLOW_POLL_S = 0.1
"""Seconds between reads of followed files that had nothing new."""

_GC_YOUNG = 100_000
"""The cyclic GC's young-generation threshold while a run is in progress (Python's default
is 700): a stream job allocates state, timers and outputs that live on, and at the default
every few thousand events trigger collections that walk them, a fifth to a quarter of a
window or TTL job's time at 1M events. Garbage in cycles waits for at most 100,000
allocations. The threshold the process had is put back when the run ends."""


class _Partition:
    __slots__ = ("reader", "node", "wm", "meta_key", "wm_key")

    def __init__(self, reader: SourceReader, node: Node, index: int, now: int) -> None:
        self.reader = reader
        self.node = node
        self.wm = PartitionWatermark(node.params["watermarks"] or BoundedOutOfOrderness(0), now)
        self.meta_key = encode_key(("source", node.name, index))
        self.wm_key = encode_key(("source-wm", node.name, index))


class LocalRunner(Executor):
    """Runs a Job in-process over its file (or iterable) sources. Prefer :func:`run_local`;
    the CLI uses this class for progress and for stopping on a signal."""

    stop_requested: bool = False
    """Set by :meth:`request_stop`; the run loop reads it between rounds."""

    def __init__(
        self,
        job: Job,
        state: str | StateBackend = "memory",
        *,
        checkpoint_interval: int = 100_000,
        batch_size: int = 2_000,
        dead_letters: str | Path | Sink | None = None,
        durability: bool = False,
        rocksdb_profile: str | None = None,
        max_parallelism: int = 128,
        ttl_config: TtlConfig | None = None,
        clock: Callable[[], int] | None = None,
        on_progress: Callable[[RunStats], None] | None = None,
        cache_entries: int | None = None,
        metrics_port: int | None = None,
        bind: str = "127.0.0.1",
        token: str | None = None,
        follow: bool = False,
        from_savepoint: str | Path | None = None,
        allow_non_restored_state: bool = False,
    ) -> None:
        self._t0 = _time.perf_counter()
        self.from_savepoint = from_savepoint
        self.allow_non_restored_state = allow_non_restored_state
        self.dropped_states: list[str] = []
        """Saved states a restore from a savepoint dropped (allow_non_restored_state)."""
        self.observer: Observer | None = None
        self.operator_startup: dict[str, dict[str, float]] = {}
        """Startup per keyed operator, by name, once its first event is processed: the
        job's ``open_s`` and ``restore_s``, its own ``preload_s`` (its longest read in the
        preload), ``first_event_s`` and the backend ``round_trips`` made until then."""
        self._inspector = None
        self.nothing_to_do: str | None = None
        """Set when the run found its state dir at the end of input that has not grown: why
        it read nothing (the CLI prints it)."""
        if not isinstance(job, Job):
            raise ConfigError(f"run_local takes an eddies.Job, got {job!r}")
        if checkpoint_interval <= 0 or batch_size <= 0:
            raise ConfigError("checkpoint_interval and batch_size must be positive")
        self.durability = durability
        self.checkpoint_interval = checkpoint_interval
        # A round never reads more than one checkpoint interval, so checkpoints come as often
        # as asked (they are taken between rounds).
        self.batch_size = min(batch_size, checkpoint_interval)
        self.on_progress = on_progress
        dead_sink = None
        if dead_letters is not None:
            dead_sink = (
                dead_letters if isinstance(dead_letters, Sink)
                else jsonl_sink(dead_letters, name="__dead_letters__")
            )
        self._job_key = encode_key(("job", job.name))
        self.partitions: list[_Partition] = []
        # The inspector's address is checked and its port taken before any file exists.
        self._inspector = listen_inspector(metrics_port, bind, token)
        try:
            backend = open_backend(state, durability=durability, rocksdb_profile=rocksdb_profile)
        except BaseException:
            if self._inspector is not None:
                self._inspector.stop()
            raise
        self._open_s = _time.perf_counter() - self._t0
        self._round_trips0 = backend.round_trips
        try:
            super().__init__(job, backend, max_parallelism=max_parallelism,
                             ttl_config=ttl_config, clock=clock, dead_sink=dead_sink,
                             cache_entries=cache_entries)
            now = self.clock()
            for n in job.nodes:
                if n.kind == "source":
                    for index, reader in enumerate(n.params["source"].partitions()):
                        self.partitions.append(_Partition(reader, n, index, now))
                        if follow and reader.can_follow:
                            reader.follow = True
            if follow and not any(p.reader.follow for p in self.partitions):
                raise ConfigError(
                    f"follow: job {job.name!r} has no file source to follow (sources: "
                    f"{', '.join(repr(p.node.params['source']) for p in self.partitions)}); "
                    "follow reads growing files given with ed.sources.jsonl or ed.sources.csv")
            path = getattr(backend, "path", None)
            self._where = f"state dir {path}" if path is not None else "the state backend"
        except BaseException:
            # Else a RocksDB dir stays locked until garbage collection. A close failing too
            # must not hide the error being raised.
            steps = [part.reader.close for part in self.partitions] + [backend.close]
            if self._inspector is not None:
                steps.append(self._inspector.stop)
            for close in steps:
                try:
                    close()
                except Exception as exc:
                    log.debug("cleanup after a failed start failed too: %r", exc)
            raise

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop after the current round: it then writes a final checkpoint,
        closes everything and returns with ``stats.stopped`` set. Safe to call from a signal
        handler or another thread; a later run on the same state resumes from there."""
        self.stop_requested = True

    # -- checkpoints ---------------------------------------------------------------------------
    def _all_sinks(self) -> list[tuple[str, Sink]]:
        """Every sink with the name its position is checkpointed under."""
        sinks = [(node.name, sink) for node, sink, _ in self.sink_nodes]
        if self._dead_sink is not None:
            sinks.append(("__dead_letters__", self._dead_sink))
        return sinks

    def _check_identity(self, stored: dict[bytes, bytes]) -> None:
        """Refuse a checkpoint of another job or of other input (see ``identity.py``), and
        what an interrupted savepoint restore left."""
        restoring = stored.get(RESTORING_KEY)
        if restoring is not None:
            path = unpack(restoring)
            raise StateIdentityError(
                f"{self._where} holds a restore of savepoint {path!r} that was interrupted "
                "(kill -9, power loss) before it finished: its state is partial. Run again "
                f"with --from-savepoint {path} (the restore starts over), or on a new state dir")
        data = stored.get(IDENTITY_KEY)
        if data is not None:
            readers: dict[str, list[SourceReader]] = {}
            for part in self.partitions:
                readers.setdefault(part.node.name, []).append(part.reader)
            check_identity(decode_identity(data, self._where), self.job, readers, self._where)
            # Its keys' groups: the same max_parallelism (a restore with no job checkpoint
            # yet says which it placed them with).
            if self._job_key in stored:
                check_max_parallelism(unpack(stored[self._job_key]).get("max_parallelism"),
                                      self.max_parallelism, self.job, self._where)
            elif RESTORE_KEYS_KEY in stored:
                check_max_parallelism(unpack(stored[RESTORE_KEYS_KEY]), self.max_parallelism,
                                      self.job, self._where)
            return
        # Written before identities were: its checkpoint is under its job's name.
        others = [name for name in stored_job_names(stored) if name != self.job.name]
        if others and self._job_key not in stored:
            raise StateIdentityError(
                f"{self._where} belongs to job {others[0]!r}, not to job {self.job.name!r}: "
                "a state dir holds one job's state, timers and input positions. Run "
                f"{self.job.name!r} on a new state dir (--state rocksdb:NEW_DIR), or keep the "
                f"name (ed.Job({others[0]!r})) to resume it")

    def _check_ended(self, stored: dict[bytes, bytes], events: int) -> None:
        """Refuse input grown after the checkpoint ended its event time; note when there is
        nothing to do (``nothing_to_do``)."""
        parts = []
        for part in self.partitions:
            position = stored.get(part.meta_key)
            wm = stored.get(part.wm_key)
            parts.append(PartitionInput(
                part.node.name, part.reader, part.node.params["timestamp"] is not None,
                None if position is None else unpack(position),
                wm is not None and unpack(wm) == MAX_TIME))
        self.nothing_to_do = check_ended(parts, self.job, self._where, events)

    def _restore(self, stored: dict[bytes, bytes]) -> dict[str, Any] | None:
        """Seek sources and restore partition watermarks from the checkpoint metadata."""
        data = stored.get(self._job_key)
        if data is None:
            return None
        meta = unpack(data)
        for part in self.partitions:
            position = stored.get(part.meta_key)
            if position is not None:
                part.reader.seek(unpack(position))
            wm = stored.get(part.wm_key)
            if wm is not None:
                part.wm.restore(unpack(wm))
        return meta

    def _restore_savepoint(self, path: str | Path) -> None:
        """Write the savepoint at ``path`` into the (empty) backend (``savepoint.py``)."""
        from eddies.runtime.restore import restore_savepoint

        readers: dict[str, list[SourceReader]] = {}
        for part in self.partitions:
            readers.setdefault(part.node.name, []).append(part.reader)
        self.dropped_states = restore_savepoint(
            path, self.job, self.backend, {op.name: op for op in self.operators.values()},
            readers, max_parallelism=self.max_parallelism,
            allow_non_restored_state=self.allow_non_restored_state, where=self._where)
        for dropped in self.dropped_states:
            log.warning("not restored (allow_non_restored_state): %s", dropped)

    def checkpoint(self) -> None:
        """Write state, timers, positions, watermarks and sink lengths as one batch."""
        started = _time.perf_counter()
        batch = Batch()
        self.checkpoint_ops(batch)
        fingerprints: dict[str, list[dict[str, Any] | None]] = {}
        for part in self.partitions:
            batch.put(META_CF, part.meta_key, pack(part.reader.position))
            batch.put(META_CF, part.wm_key, pack(part.wm.watermark))
            fingerprints.setdefault(part.node.name, []).append(part.reader.fingerprint())
        batch.put(META_CF, IDENTITY_KEY, encode_identity(job_identity(self.job, fingerprints)))
        sinks = {}
        for name, sink in self._all_sinks():
            try:
                sinks[name] = sink.position()  # flushes the sink's buffer
            except OSError as exc:
                raise io_error(f"writing sink {name!r} ({sink!r})", exc) from exc
        stats = self.stats
        stats.checkpoints += 1
        meta = {
            "sinks": sinks,
            "stats": [stats.events_in, stats.events_out, stats.dead_letters, stats.late_events,
                      stats.checkpoints, stats.late_dropped],
            # The key groups' layout (crc32 % max_parallelism): a savepoint restored with
            # the same one keeps its stored keys as they are.
            "max_parallelism": self.max_parallelism,
        }
        batch.put(META_CF, self._job_key, pack(meta))
        self.backend.write(batch, sync=self.durability)
        self.sweep()
        for op in self.operators.values():
            op.store.trim()  # everything is clean now: the caches go back to their limit
        duration = _time.perf_counter() - started
        log.debug("checkpoint %d: ops=%d seconds=%.4f", stats.checkpoints, len(batch),
                  duration)
        if self.observer is not None:
            size = batch.size_bytes()
            self.observer.after_checkpoint(duration, size)

    # -- run -----------------------------------------------------------------------------------
    def _source_watermarks(self, now: int) -> SourceWatermarks:
        by_source: SourceWatermarks = {}
        for part in self.partitions:
            by_source.setdefault(part.node, []).append((part.wm.watermark, part.wm.idle(now)))
        return by_source

    def _read_round(self, first: list[tuple[list[Any], list[Any]] | None] | None = None) -> int:
        """Read and push one batch per partition (``first``: the batches already read, by
        partition, for startup's preload)."""
        n_read = 0
        batch_size = self.batch_size
        now = self.clock()
        dead = self.dead_letter
        for i, part in enumerate(self.partitions):
            reader = part.reader
            read = None if first is None else first[i]
            if read is None:
                if reader.done:  # done before it was ever read (an empty partition) too
                    part.wm.finish()
                    continue
                read = reader.read(batch_size)
            values, bad = read
            for letter in bad:
                dead(letter)
            n_read += len(values) + len(bad)
            # Event time advances between the records as if after every one (executor.py):
            # the push needs this partition's watermark and every other one's.
            others: SourceWatermarks = {}
            for other in self.partitions:
                if other is not part:
                    others.setdefault(other.node, []).append(
                        (other.wm.watermark, other.wm.idle(now)))
            max_ts = self.push_records(part.node, values, reader.locate, now, mark=part.wm,
                                       others=others)
            if part.node.params["timestamp"] is not None:
                part.wm.observe(max_ts, now)
            if reader.done:
                part.wm.finish()
        self.stats.events_in += n_read
        return n_read

    def run(self) -> RunResult:
        """Run to the end of (bounded) input; returns the result."""
        global _runs_started
        _runs_started += 1
        started = _time.perf_counter()
        stats = self.stats
        gc_threshold = gc.get_threshold()
        if gc_threshold[0] < _GC_YOUNG:
            gc.set_threshold(_GC_YOUNG, *gc_threshold[1:])
        try:
            # Startup reads in bulk: the checkpoint metadata (positions, watermarks, sink
            # lengths) in one range read, then per operator one timer scan and its
            # broadcast tables. Keyed state is read lazily, key by key, as events need it.
            t = _time.perf_counter()
            if self.from_savepoint is not None:
                self._restore_savepoint(self.from_savepoint)
            stored = dict(self.backend.iterate(META_CF))
            # Before anything runs or any sink is opened: a dir of another job or of other
            # input is refused, and one at the end of unchanged input has nothing to do.
            self._check_identity(stored)
            job_meta = stored.get(self._job_key)
            if job_meta is not None:
                self._check_ended(stored, unpack(job_meta)["stats"][0])
                if self.nothing_to_do is not None:
                    return self._done_already(unpack(job_meta), gc_threshold)
            restore_s = _time.perf_counter() - t
            t = _time.perf_counter()
            meta = self._restore(stored)
            positions = (meta or {}).get("sinks", {})
            for name, sink in self._all_sinks():
                try:
                    sink.open(positions.get(name) if meta is not None else None)
                except OSError as exc:
                    raise io_error(f"opening sink {name!r} ({sink!r})", exc) from exc
            if meta is not None:
                self._resume_stats(meta)
            restore_s += _time.perf_counter() - t
            # The first round is read before the preload, which reads ahead the state of
            # its keys (runtime/preload.py); its reading counts towards the first event.
            t = _time.perf_counter()
            first_read = [None if p.reader.done else p.reader.read(self.batch_size)
                          for p in self.partitions]
            read_s = _time.perf_counter() - t
            records: dict[Any, list[Any]] = {}
            for part, read in zip(self.partitions, first_read, strict=True):
                if read is not None:
                    records.setdefault(part.node, []).extend(read[0])
            t = _time.perf_counter()
            by_op = self.open_operators(stored, first_keys(self.operators, records))
            preload_s = _time.perf_counter() - t
            stats.startup = {"open_s": self._open_s, "restore_s": restore_s,
                             "preload_s": preload_s}
            ready = _time.perf_counter() - read_s
            # Per operator: the job's open and restore, its own reads in the preload, and
            # its first event, seen at the job's first event or else after the round it
            # came in (see operator_startup).
            waiting = {name: {"open_s": self._open_s, "restore_s": restore_s,
                              "preload_s": seconds} for name, seconds in by_op.items()}

            def operators_started() -> None:
                now = _time.perf_counter()
                for name in [n for n in waiting if self.counts.get(n, (0,))[0]]:
                    phases = self.operator_startup[name] = waiting.pop(name)
                    phases["first_event_s"] = now - ready
                    phases["round_trips"] = self.backend.round_trips - self._round_trips0
                    if self.observer is not None:
                        self.observer.operator_startup(
                            name, {k.removesuffix("_s"): v for k, v in phases.items()
                                   if k.endswith("_s")}, int(phases["round_trips"]))

            if self._inspector is not None:
                self.observer = Observer(self, self.backend, server=self._inspector)

            def first_event() -> None:
                now = _time.perf_counter()
                stats.startup["first_event_s"] = now - ready
                stats.startup["total_s"] = now - self._t0
                stats.startup["round_trips"] = self.backend.round_trips - self._round_trips0
                log.info("job %s started: %s", self.job.name,
                         " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in stats.startup.items()))
                if self.observer is not None:
                    self.observer.startup(
                        {k.removesuffix("_s"): v for k, v in stats.startup.items()
                         if k.endswith("_s") and k != "total_s"},
                        int(stats.startup["round_trips"]))
                operators_started()

            self.on_first_event = first_event
            following = any(p.reader.follow for p in self.partitions)
            total = [p.reader.size_hint() for p in self.partitions]
            stats.bytes_total = (sum(t for t in total if t) if all(total) and not following
                                 else None)
            first: list[tuple[list[Any], list[Any]] | None] | None = list(first_read)
            since_checkpoint = 0
            out_at_checkpoint = stats.events_out
            while True:
                n = self._read_round(first)
                first = None
                if waiting and self.on_first_event is None:
                    operators_started()
                since_checkpoint += n
                done = all(p.reader.done for p in self.partitions)
                self.advance_time(self._source_watermarks(self.clock()))
                self.flush_sinks()
                stats.elapsed_s = _time.perf_counter() - started
                if self.observer is not None:
                    self.observer.after_batch()
                if done:
                    break
                if self.stop_requested:
                    stats.stopped = True
                    break  # the final checkpoint below
                # Following, a round that read nothing has caught up with the files: a
                # checkpoint then makes what came since (events, or outputs of time passing:
                # idleness, processing time) durable and visible in the sinks' files.
                caught_up = following and n == 0 and (
                    since_checkpoint > 0 or stats.events_out != out_at_checkpoint)
                if since_checkpoint >= self.checkpoint_interval or caught_up or (
                    since_checkpoint and self.cache_full()
                ):
                    self.checkpoint()
                    since_checkpoint = 0
                    out_at_checkpoint = stats.events_out
                if self.on_progress is not None:
                    stats.bytes_read = self._bytes_read()
                    self.on_progress(stats)
                if following and n == 0 and not self.stop_requested:
                    _time.sleep(_FOLLOW_POLL_S)
            self.checkpoint()
            stats.elapsed_s = _time.perf_counter() - started
            stats.bytes_read = self._bytes_read()
            if self.on_progress is not None:
                self.on_progress(stats)
        except BaseException:
            gc.set_threshold(*gc_threshold)
            self.close(failed=True)  # the first error is the one to report
            raise
        gc.set_threshold(*gc_threshold)
        self.close()
        return RunResult(stats, self.dead, dict(self._all_sinks()))

    def _resume_stats(self, meta: dict[str, Any]) -> None:
        """The counters of the checkpoint a run resumes from."""
        stats = self.stats
        stats.resumed = True
        counts = meta["stats"]
        (stats.events_in, stats.events_out, stats.dead_letters, stats.late_events,
         stats.checkpoints) = counts[:5]
        # Checkpoints written before late_dropped was kept have five counts.
        self.late_dropped_before = stats.late_dropped = counts[5] if len(counts) > 5 else 0
        stats.before = {"events_in": stats.events_in, "events_out": stats.events_out,
                        "dead_letters": stats.dead_letters, "late_events": stats.late_events,
                        "checkpoints": stats.checkpoints, "late_dropped": stats.late_dropped}

    def _done_already(self, meta: dict[str, Any], gc_threshold: tuple[int, ...]) -> RunResult:
        """End a run that has nothing to do (``nothing_to_do``): no operator is opened, no
        sink touched, nothing written."""
        self._resume_stats(meta)
        self.stats.watermark = MAX_TIME
        log.info("%s", self.nothing_to_do)
        gc.set_threshold(*gc_threshold)
        self.close()
        return RunResult(self.stats, self.dead, dict(self._all_sinks()))

    def _bytes_read(self) -> int:
        total = 0
        for part in self.partitions:
            pos = part.reader.position
            if isinstance(pos, list) and pos and isinstance(pos[0], int):
                total += pos[0]
            elif isinstance(pos, int):
                total += pos
        return total

    def close(self, failed: bool = False) -> None:
        """Close the inspector, sinks, sources and backend, each even if another one fails.

        The first failure is raised once all are closed; with ``failed`` (cleaning up after
        an error, which is the one to report) failures are logged at debug level instead: a
        full disk fails the write and then the close's flush again.
        """
        first: BaseException | None = None
        steps: list[tuple[str, Callable[[], None]]] = []
        observer = self.observer
        if observer is not None:
            self.observer = None
            steps.append(("the inspector", observer.close))  # before the backend: 503s
        elif self._inspector is not None:  # the run ended before it served
            steps.append(("the inspector", self._inspector.stop))
        steps.extend((f"sink {name!r} ({sink!r})", sink.close) for name, sink in self._all_sinks())
        steps.extend((f"source {part.node.name!r}", part.reader.close)
                     for part in self.partitions)
        steps.append(("the state backend", self.backend.close))
        for what, close in steps:
            try:
                close()
            except Exception as exc:
                if failed or first is not None:
                    log.debug("closing %s after an earlier error failed too: %r", what, exc)
                    continue
                first = io_error(f"closing {what}", exc) if isinstance(exc, OSError) else exc
                if first is not exc:
                    first.__cause__ = exc
        if first is not None:
            raise first


def run_local(
    job: Job,
    state: str | StateBackend = "memory",
    *,
    checkpoint_interval: int = 100_000,
    dead_letters: str | Path | Sink | None = None,
    follow: bool = False,
    **options: Any,
) -> RunResult:
    """Run ``job`` here to the end of its input; resume if ``state`` holds a checkpoint.

    ``state`` is ``"memory"`` or ``"rocksdb:DIR"``; ``checkpoint_interval`` counts events;
    ``dead_letters`` is a JSONL path (or sink) for malformed records, which are also in
    ``result.dead_letters``. ``cache_entries`` (default 200,000) bounds the keys each state
    keeps cached; a cache that grows past twice that between checkpoints brings the next
    checkpoint forward. Join buffers are held in memory whole (``eddies.state.buffers``). ``result.stats.startup`` holds the startup phases.
    ``rocksdb_profile="small"|"medium"|"large"`` sizes a ``"rocksdb:DIR"`` state for a
    machine class (see ``eddies.state.rocksdb``); without it RocksDB keeps its default options.

    ``follow=True`` keeps reading the job's files as they grow (``tail -f``) until
    :meth:`LocalRunner.request_stop`: build a :class:`LocalRunner` to be able to call it.
    A state dir of another job or of replaced input raises ``StateIdentityError`` before
    the first event (see the module docstring); one whose run ended the same input returns
    at once without reading or writing (``stats.this_run("events_in") == 0``, and the
    reason in ``LocalRunner.nothing_to_do``).

    ``from_savepoint=PATH`` starts from a savepoint (``eddies.runtime.savepoint``) in a new,
    empty ``state``; ``allow_non_restored_state=True`` drops saved states and sources the job
    no longer has instead of refusing them.
    """
    return LocalRunner(job, state, checkpoint_interval=checkpoint_interval,
                       dead_letters=dead_letters, follow=follow, **options).run()
