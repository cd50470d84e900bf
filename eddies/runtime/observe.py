"""Feeds a running executor's numbers to :class:`Metrics` and serves the live inspector.

Both drivers (the local runner and the Kafka worker) create one :class:`Observer` when asked
for a metrics port, call :meth:`Observer.after_batch` between micro-batches (which also
answers waiting state queries on the runner thread) and :meth:`Observer.after_checkpoint`
after each checkpoint. Everything reported is computed at batch or checkpoint granularity:
nothing is added to the per-event path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from eddies.runtime.executor import Executor
from eddies.runtime.http import InspectorServer
from eddies.runtime.metrics import Metrics
from eddies.state.backend import StateBackend

__all__ = ["Observer"]

log = logging.getLogger("eddies.metrics")


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
    ) -> None:
        self.executor = executor
        self.backend = backend
        self.metrics = Metrics(executor.job.name)
        self._last: dict[str, int] = {}
        self._last_counts: dict[str, list[int]] = {}
        self._expired = 0
        self._sweeps = 0
        self._hits = 0
        self._misses = 0
        self.server: InspectorServer | None = None
        if port is not None:
            self.server = InspectorServer(self.metrics, backend, host=host, port=port,
                                          token=token, owner=owner).start()
            log.info("metrics and state inspector on %s", self.server.url)

    @property
    def url(self) -> str | None:
        return None if self.server is None else self.server.url

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

    def after_batch(self) -> None:
        """Update flow metrics, then answer waiting state queries (runner thread)."""
        stats = self.executor.stats
        m = self.metrics
        counts = getattr(self.executor, "counts", None)
        if counts:
            for name, (n_in, n_out) in counts.items():
                last = self._last_counts.setdefault(name, [0, 0])
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
        if self.server is not None:
            self.server.queue.drain()

    def after_checkpoint(self, duration_s: float, size_bytes: int) -> None:
        """Checkpoint, TTL, cache and state-size metrics."""
        m = self.metrics
        m.checkpoint(duration_s, size_bytes)
        expired = sweeps = hits = misses = 0
        for op in self.executor.operators.values():
            expired += op.backend.expired_deleted
            sweeps += op.backend.sweeps
            for handle in op.handles.values():
                hits += getattr(handle, "hits", 0)
                misses += getattr(handle, "misses", 0)
        m.ttl_expired(max(0, expired - self._expired))
        m.sweeps(max(0, sweeps - self._sweeps))
        m.cache(max(0, hits - self._hits), max(0, misses - self._misses))
        self._expired, self._sweeps, self._hits, self._misses = expired, sweeps, hits, misses
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
    """(entries, bytes) of a column family: RocksDB's estimates, or exact for memory."""
    estimate = getattr(backend, "estimate", None)
    if estimate is not None:
        return estimate(cf)
    entries = size = 0
    for key, value in backend.iterate(cf):
        entries += 1
        size += len(key) + len(value)
    return entries, size
