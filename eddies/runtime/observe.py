"""Feeds a running executor's numbers to :class:`Metrics` and serves the live inspector.

Both drivers (the local runner and the Kafka worker) create one :class:`Observer` when asked
for a metrics port, call :meth:`Observer.after_batch` between micro-batches (which also
answers waiting state queries on the runner thread) and :meth:`Observer.after_checkpoint`
after each checkpoint. Everything reported is computed at batch or checkpoint granularity
from counters the executor keeps per batch (``Executor.counts``, ``Executor.on_event_time``).

What the per-operator and per-state numbers mean:

- ``eddies_events_in_total`` / ``eddies_events_out_total`` ``{operator}``: records into and
  out of each source, keyed operator (outputs of ``on_event`` and ``on_timer``) and sink.
- ``eddies_on_event_seconds{operator}``: ``on_event`` time per event, one observation per
  batch (the batch's mean, handing outputs on to the next operator included; events that
  do not come straight from a source batch are timed one in 64).
- ``eddies_state_cache_misses_total{state}``: reads the state's cache could not answer.
  ``eddies_state_cache_hits_total{state}`` is the operator's events less those misses
  (exact for a state read once per event, which is the common case: counting every read
  would cost the hot path more than the rest of these metrics together).
- ``eddies_state_entries`` / ``eddies_state_bytes`` ``{state}``: RocksDB's estimates, after
  each checkpoint; on the memory backend the exact count, and bytes estimated from its first
  1,000 entries.

- ``eddies_consumer_lag{topic,partition}`` (Kafka workers): per input partition the worker
  reads, its high watermark as of the last fetch response less the worker's next offset to
  process, set once per round (:meth:`Observer.consumer_lag`); :func:`lag_text` is its
  summary on the worker's progress line.

``/healthz`` answers what the runner's ``health()`` says (``http.Health``): the Kafka worker's
is 503 until its assigned partitions are restored and it is processing them (and again while
a rebalance moves them), then 200. The local runner serves only once restored: 200.

A runner that must fail before creating anything on a bad inspector address calls
:func:`listen_inspector` first and hands its server to the Observer later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from eddies.runtime.executor import Executor
from eddies.runtime.http import Health, InspectorServer
from eddies.runtime.metrics import Metrics
from eddies.state.backend import StateBackend

__all__ = ["Observer", "lag_text", "listen_inspector"]

log = logging.getLogger("eddies.metrics")

_SIZE_SAMPLE = 1_000


def lag_text(lags: Mapping[tuple[str, int], int]) -> str:
    """Consumer lag for a progress line: the total, and the worst partition when several lag.

    >>> lag_text({("orders", 0): 0, ("orders", 1): 1_200, ("orders", 2): 300})
    'lag 1,500 (worst orders[1] 1,200 of 3 partitions)'
    >>> lag_text({("orders", 0): 7}), lag_text({("orders", 0): 0, ("orders", 1): 0})
    ('lag 7 (orders[0])', 'lag 0 (2 partitions)')
    >>> lag_text({})
    'lag - (no partitions)'
    """
    if not lags:
        return "lag - (no partitions)"
    total = sum(lags.values())
    (topic, p), worst = max(lags.items(), key=lambda item: (item[1], item[0]))
    if len(lags) == 1:
        return f"lag {total:,} ({topic}[{p}])"
    if not worst:
        return f"lag 0 ({len(lags)} partitions)"
    return f"lag {total:,} (worst {topic}[{p}] {worst:,} of {len(lags)} partitions)"


def listen_inspector(
    port: int | None, host: str = "127.0.0.1", token: str | None = None
) -> InspectorServer | None:
    """The inspector's server, bound to its port but not serving yet (None without a port).

    Raises ConfigError for an address beyond loopback without a token, or a port that cannot
    be had: a runner calls it before creating any file, then passes it to
    ``Observer(server=...)``, which serves it. Call ``stop()`` on it if the run never starts.
    """
    if port is None:
        return None
    return InspectorServer(host=host, port=port, token=token).listen()


class Observer:
    """Metrics and the HTTP inspector for one executor."""

    def __init__(
        self,
        executor: Executor,
        backend: StateBackend,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        token: str | None = None,
        owner: Callable[[tuple[Any, ...]], str | None] | None = None,
        server: InspectorServer | None = None,
        health: Health | None = None,
    ) -> None:
        """``health()`` answers ``/healthz`` (default: 200 while served); ``owner`` routes
        key queries (see ``InspectorServer``)."""
        self.executor = executor
        self.backend = backend
        self.metrics = Metrics(executor.job.name)
        self._last: dict[str, int] = {}
        self._last_counts: dict[str, list[int]] = {}
        self._last_times: dict[str, list[float]] = {}
        self._last_misses: dict[str, int] = {}
        self._last_handled: dict[str, int] = {}
        self._expired = 0
        self._sweeps = 0
        self.server: InspectorServer | None = None
        if server is None and port is not None:
            server = InspectorServer(host=host, port=port, token=token)
        if server is not None:
            server.metrics = self.metrics
            server.backend = backend
            if owner is not None:
                server.owner = owner
            server.states = self.state_names
            server.checkpoints = self._checkpoints
            if health is not None:
                server.health = health
            self.server = server.start()
            log.info("metrics and state inspector on %s", self.server.url)

    @property
    def url(self) -> str | None:
        return None if self.server is None else self.server.url

    def state_names(self) -> list[str]:
        """The states the job's operators declare (known before their first checkpoint)."""
        return [name for op in self.executor.operators.values() for name in op.handles]

    def _checkpoints(self) -> int:
        return self.executor.stats.checkpoints

    def _delta(self, name: str, value: int) -> int:
        before = self._last.get(name, 0)
        self._last[name] = value
        return max(0, value - before)

    def startup(self, phases: dict[str, float], round_trips: int) -> None:
        """Record startup phase durations (seconds) and backend round trips."""
        for phase, seconds in phases.items():
            self.metrics.startup_phase(phase, seconds)
        self.metrics.backend_round_trips(round_trips, phase="startup")
        log.info("startup phases %s, %d backend round trips",
                 {k: round(v, 4) for k, v in phases.items()}, round_trips)

    def operator_startup(self, operator: str, phases: dict[str, float],
                         round_trips: int) -> None:
        """Record one operator's startup phases (seconds) and round trips until its first
        event (see :meth:`Metrics.operator_startup`)."""
        self.metrics.operator_startup(operator, phases, round_trips)
        log.debug("operator %s started: phases %s, %d backend round trips", operator,
                  {k: round(v, 4) for k, v in phases.items()}, round_trips)

    def after_batch(self) -> None:
        """Update flow metrics, then answer waiting state queries (runner thread)."""
        stats = self.executor.stats
        m = self.metrics
        counts = getattr(self.executor, "counts", None)
        if counts:
            for name, (n_in, n_out) in counts.items():
                last = self._last_counts.get(name)
                if last is None:  # every operator's series shows from the start, at 0
                    last = self._last_counts[name] = [0, 0]
                    m.events_in(name, 0)
                    m.events_out(name, 0)
                if n_in > last[0]:
                    m.events_in(name, n_in - last[0])
                if n_out > last[1]:
                    m.events_out(name, n_out - last[1])
                last[0], last[1] = n_in, n_out
        else:
            m.events_in("sources", self._delta("in", stats.events_in))
            m.events_out("sinks", self._delta("out", stats.events_out))
        m.dead_letters(self._delta("dead", stats.dead_letters))
        m.late_events(self._delta("late", stats.late_events))
        m.late_dropped(self._delta("late_dropped", stats.late_dropped))
        m.watermark(stats.watermark)
        for name, (seconds, timed) in getattr(self.executor, "on_event_time", {}).items():
            last_t = self._last_times.setdefault(name, [0.0, 0])
            events = int(timed - last_t[1])
            if events > 0:
                m.on_event_latency(name, (seconds - last_t[0]) / events, events)
            last_t[0], last_t[1] = seconds, timed
        if self.server is not None:
            self.server.queue.drain()

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Set the lag of each input partition read (the ones left out are dropped)."""
        self.metrics.consumer_lag(lags)

    def after_checkpoint(self, duration_s: float, size_bytes: int) -> None:
        """Checkpoint, TTL, cache and state-size metrics."""
        m = self.metrics
        m.checkpoint(duration_s, size_bytes)
        expired = sweeps = 0
        for op in self.executor.operators.values():
            expired += op.backend.expired_deleted
            sweeps += op.backend.sweeps
        m.ttl_expired(max(0, expired - self._expired))
        m.sweeps(max(0, sweeps - self._sweeps))
        self._expired, self._sweeps = expired, sweeps
        counts = getattr(self.executor, "counts", {})
        hits = misses = 0
        for op in self.executor.operators.values():
            handled = counts.get(op.name, (0, 0))[0]
            events = max(0, handled - self._last_handled.get(op.name, 0))
            self._last_handled[op.name] = handled
            for name, handle in op.handles.items():
                total = getattr(handle, "misses", 0)
                new_misses = max(0, total - self._last_misses.get(name, 0))
                self._last_misses[name] = total
                new_hits = max(0, events - new_misses)  # the events that did not miss
                m.state_cache(name, new_hits, new_misses)
                hits += new_hits
                misses += new_misses
        m.cache(hits, misses)
        m.backend_round_trips(self._delta("round_trips", self.backend.round_trips))
        for op in self.executor.operators.values():
            for name in op.handles:
                entries, size = _state_size(self.backend, name)
                m.state_size(name, entries, size)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def _state_size(backend: StateBackend, cf: str) -> tuple[int, int]:
    """(entries, bytes) of a column family: RocksDB's estimates; elsewhere the exact count
    and the bytes of its first 1,000 entries scaled to it (a checkpoint never scans a whole
    state for a gauge)."""
    estimate = getattr(backend, "estimate", None)
    if estimate is not None:
        return estimate(cf)
    entries = backend.count(cf)
    sampled = size = 0
    for key, value in islice(backend.iterate(cf), _SIZE_SAMPLE):
        sampled += 1
        size += len(key) + len(value)
    return entries, (size * entries // sampled if sampled else 0)
