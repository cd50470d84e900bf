"""Prometheus metrics of a running job: what the local runner and Kafka workers report.

A :class:`Metrics` holds its own ``CollectorRegistry`` (never the process-global one, so two
jobs in one process, or tests, never share counters). The runner calls the methods below,
typically once per micro-batch with counts since the last call; ``render()`` gives the
Prometheus text exposition that ``GET /metrics`` serves (see ``eddies.runtime.http``).
Every method is thread-safe and cheap (a lock and an add), so scrapes never stall the job.
Counters leave out prometheus_client's ``*_created`` samples.

API the runner calls (``n`` arguments are increments since the last call; ``*_total``
names are counters)::

    m = Metrics("fraud")                      # job label; clock=... for tests (ms)
    m.events_in("Fraud", n)                   # eddies_events_in_total{job,operator}
    m.events_out("Fraud", n)                  # eddies_events_out_total{job,operator}
    m.dead_letters(n)                         # eddies_dead_letters_total{job}
    m.late_events(n)                          # eddies_late_events_total{job}
    m.late_dropped(n)                         # eddies_late_dropped_total{job}
    m.watermark(ms)                           # eddies_watermark_ms{job}, and
                                              # eddies_watermark_lag_ms{job} = now - watermark,
                                              # computed at scrape time so a stuck watermark
                                              # shows a growing lag
    m.state_size("seen", entries, bytes)      # eddies_state_entries / eddies_state_bytes
                                              # {job,state}: gauges, absolute values
    m.ttl_expired(n)                          # eddies_ttl_expired_total{job}
    m.sweeps(n)                               # eddies_ttl_sweeps_total{job}
    m.checkpoint(duration_s, size_bytes)      # eddies_checkpoint_duration_seconds{job}
                                              # (histogram; its _count counts checkpoints),
                                              # eddies_checkpoint_size_bytes{job} (the last),
                                              # eddies_checkpoint_bytes_total{job}
    m.cache(hits, misses)                     # eddies_cache_hits_total / _misses_total{job},
                                              # eddies_cache_hit_ratio{job} (over the run)
    m.state_cache("seen", hits, misses)       # eddies_state_cache_hits_total / _misses_total
                                              # {job,state} (increments)
    m.on_event_latency("Fraud", s, events=n)  # eddies_on_event_seconds{job,operator}:
                                              # histogram of on_event time per event, one
                                              # observation per batch (s: the batch's mean)
    m.startup_phase("restore", seconds)       # eddies_startup_phase_seconds{job,phase}
    m.backend_round_trips(n, phase="startup") # eddies_backend_round_trips_total{job,phase}
    m.operator_startup("Fraud", phases, n)    # eddies_operator_startup_phase_seconds
                                              # {job,operator,phase} and
                                              # eddies_operator_startup_round_trips{job,operator}
    m.consumer_lag({("orders", 3): n})        # eddies_consumer_lag{job,topic,partition}:
                                              # records behind the high watermark (gauges;
                                              # partitions left out of the call are dropped)
    m.flow(records, bytes, paused, pauses)    # Kafka backpressure: eddies_in_flight_records
                                              # / eddies_in_flight_bytes{job} (produced, not
                                              # acknowledged), eddies_fetch_paused{job} (1
                                              # while fetching is paused),
                                              # eddies_fetch_pauses_total{job} (pauses is
                                              # the absolute count)
    m.restore(p, records, seconds)            # eddies_restore_records / _seconds{job,partition}:
                                              # the last restore of a key group (gauges)
    m.standby_lag(p, records)                 # eddies_standby_lag_records{job,partition}: a
                                              # standby copy's changelog records not applied
                                              # yet (None: no longer a standby)
    m.render() -> bytes                       # text exposition; m.content_type for the header

Startup phases are ``open`` (open the backend), ``restore`` (timers, watermarks, positions),
``preload`` (bulk reads of what key groups need) and ``first_event`` (from start to the first
event processed); each is a gauge of seconds, absent until recorded, so a scrape shows which
phases ran. Call ``backend_round_trips(n, phase="startup")`` once startup is done and
with the default ``phase="run"`` afterwards. Per operator, ``operator_startup`` records the
same phases, ``open`` and ``restore`` being the job's (one backend, one metadata read),
``preload`` its own reads within the job's preload and ``first_event`` until its own first
event, with the backend round trips made until then. Watermarks are event-time ms; before the first
one the watermark and lag read NaN, and at the end of bounded input (watermark +infinity)
the watermark reads +Inf and the lag 0.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)

from eddies.errors import ConfigError
from eddies.runtime.timers import wall_ms

__all__ = ["Metrics", "STARTUP_PHASES"]

STARTUP_PHASES = ("open", "restore", "preload", "first_event")
"""The startup phases every runner reports (others may be added, e.g. on a rebalance)."""

_MIN_TIME = -(2**63)  # no watermark yet (eddies.runtime.watermarks.MIN_TIME)
_MAX_TIME = 2**63 - 1  # end of input (eddies.runtime.watermarks.MAX_TIME)
_PHASE = re.compile(r"^[a-z][a-z0-9_]*$")

_CHECKPOINT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ON_EVENT_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2,
                     0.1, 1)


class _WithoutCreated:
    """A registry view without prometheus_client's ``*_created`` samples: in the 0.0.4 text
    format they read as one extra gauge per counter and double the size of a scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """The metrics of one job, in a registry of their own.

    ``job`` labels every sample; ``clock`` returns wall-clock ms (for the watermark lag).

    >>> m = Metrics("demo", clock=lambda: 10_000)
    >>> m.events_in("count", 5); m.late_events(2); m.watermark(9_000)
    >>> text = m.render().decode()
    >>> 'eddies_events_in_total{job="demo",operator="count"} 5.0' in text
    True
    >>> 'eddies_watermark_lag_ms{job="demo"} 1000.0' in text
    True
    >>> m.value("eddies_late_events_total")
    2.0
    """

    content_type = CONTENT_TYPE_LATEST
    """The Content-Type header of :meth:`render`'s output."""

    def __init__(self, job: str, *, clock: Callable[[], float] | None = None) -> None:
        self.job = job
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock or wall_ms
        self._lock = threading.Lock()
        self._watermark = _MIN_TIME
        self._hits = 0
        self._misses = 0
        r = self.registry
        by_op = ["job", "operator"]
        self._events_in = Counter("eddies_events_in", "Events into an operator", by_op,
                                  registry=r)
        self._events_out = Counter("eddies_events_out", "Events out of an operator", by_op,
                                   registry=r)
        self._dead = Counter("eddies_dead_letters", "Malformed records sent to dead letters",
                             ["job"], registry=r).labels(job)
        self._late = Counter("eddies_late_events",
                             "Events at or behind their operator's watermark", ["job"],
                             registry=r).labels(job)
        self._late_dropped = Counter("eddies_late_dropped",
                                     "Late events a window dropped (no late= tag)", ["job"],
                                     registry=r).labels(job)
        wm = Gauge("eddies_watermark_ms", "Event-time watermark of the job's sinks (ms)",
                   ["job"], registry=r).labels(job)
        wm.set_function(self._watermark_value)
        lag = Gauge("eddies_watermark_lag_ms", "Wall clock minus the watermark (ms)", ["job"],
                    registry=r).labels(job)
        lag.set_function(self._lag_value)
        self._state_entries = Gauge("eddies_state_entries", "Stored entries of a state",
                                    ["job", "state"], registry=r)
        self._state_bytes = Gauge("eddies_state_bytes", "Stored bytes of a state (keys and values)",
                                  ["job", "state"], registry=r)
        self._expired = Counter("eddies_ttl_expired", "Expired entries deleted by TTL sweeps",
                                ["job"], registry=r).labels(job)
        self._sweeps = Counter("eddies_ttl_sweeps", "TTL sweep steps run", ["job"],
                               registry=r).labels(job)
        self._cp_duration = Histogram("eddies_checkpoint_duration_seconds",
                                      "Time to write a checkpoint", ["job"], registry=r,
                                      buckets=_CHECKPOINT_BUCKETS).labels(job)
        self._cp_size = Gauge("eddies_checkpoint_size_bytes", "Size of the last checkpoint",
                              ["job"], registry=r).labels(job)
        self._cp_bytes = Counter("eddies_checkpoint_bytes", "Bytes written by checkpoints",
                                 ["job"], registry=r).labels(job)
        self._cache_hits = Counter("eddies_cache_hits", "State cache hits", ["job"],
                                   registry=r).labels(job)
        self._cache_misses = Counter("eddies_cache_misses", "State cache misses", ["job"],
                                     registry=r).labels(job)
        ratio = Gauge("eddies_cache_hit_ratio", "State cache hits / lookups since start",
                      ["job"], registry=r).labels(job)
        ratio.set_function(self._hit_ratio)
        by_state = ["job", "state"]
        self._state_hits = Counter("eddies_state_cache_hits", "State cache hits of a state",
                                   by_state, registry=r)
        self._state_misses = Counter("eddies_state_cache_misses",
                                     "State cache misses of a state (reads the cache could "
                                     "not answer)", by_state, registry=r)
        self._on_event = Histogram("eddies_on_event_seconds",
                                   "on_event time per event, one observation per batch (the "
                                   "batch's mean)", by_op, registry=r,
                                   buckets=_ON_EVENT_BUCKETS)
        self._busy = Counter("eddies_on_event_busy_seconds",
                             "Time spent in on_event (measured per batch)", by_op, registry=r)
        self._phases = Gauge("eddies_startup_phase_seconds", "Duration of a startup phase",
                             ["job", "phase"], registry=r)
        self._round_trips = Counter("eddies_backend_round_trips",
                                    "State backend calls (gets, scans, batch writes)",
                                    ["job", "phase"], registry=r)
        self._round_trips.labels(job, "startup")
        self._round_trips.labels(job, "run")
        self._op_phases = Gauge("eddies_operator_startup_phase_seconds",
                                "Duration of a startup phase of one operator (open and "
                                "restore are the job's)", ["job", "operator", "phase"],
                                registry=r)
        self._consumer_lag = Gauge("eddies_consumer_lag",
                                   "Records of an input partition behind its high watermark "
                                   "(Kafka workers)", ["job", "topic", "partition"], registry=r)
        self._lag_partitions: set[tuple[str, int]] = set()
        by_group = ["job", "partition"]
        self._restore_records = Gauge("eddies_restore_records", "Changelog records the last "
                                      "restore of a key group replayed", by_group, registry=r)
        self._restore_seconds = Gauge("eddies_restore_seconds", "Duration of the last restore "
                                      "of a key group", by_group, registry=r)
        self._standby_lag = Gauge("eddies_standby_lag_records", "Changelog records a standby "
                                  "copy of a key group has not applied yet", by_group, registry=r)
        self._standby_partitions: set[tuple[str, str]] = set()
        self._op_round_trips = Gauge("eddies_operator_startup_round_trips",
                                     "Backend round trips from opening the state until the "
                                     "operator's first event was processed",
                                     ["job", "operator"], registry=r)

    # -- flow ----------------------------------------------------------------------------------
    def events_in(self, operator: str, n: int) -> None:
        """Count ``n`` more events into ``operator``."""
        self._events_in.labels(self.job, operator).inc(n)

    def events_out(self, operator: str, n: int) -> None:
        """Count ``n`` more events out of ``operator`` (for a sink: written)."""
        self._events_out.labels(self.job, operator).inc(n)

    def dead_letters(self, n: int) -> None:
        """Count ``n`` more records sent to dead letters."""
        self._dead.inc(n)

    def late_events(self, n: int) -> None:
        """Count ``n`` more late events (at or behind their operator's watermark)."""
        self._late.inc(n)

    def late_dropped(self, n: int) -> None:
        """Count ``n`` more late events dropped by windows without a late tag."""
        self._late_dropped.inc(n)

    def on_event_latency(self, operator: str, seconds: float, events: int = 1) -> None:
        """Record ``operator``'s mean ``on_event`` time per event over a batch of ``events``:
        one histogram observation, and ``seconds * events`` more busy time."""
        self._on_event.labels(self.job, operator).observe(seconds)
        self._busy.labels(self.job, operator).inc(seconds * events)

    # -- time ----------------------------------------------------------------------------------
    def watermark(self, ms: int) -> None:
        """Set the job's watermark (event-time ms; the runner's MIN/MAX mean none/end)."""
        self._watermark = ms

    def _watermark_value(self) -> float:
        wm = self._watermark
        if wm <= _MIN_TIME:
            return math.nan
        if wm >= _MAX_TIME:
            return math.inf
        return float(wm)

    def _lag_value(self) -> float:
        wm = self._watermark
        if wm <= _MIN_TIME:
            return math.nan
        if wm >= _MAX_TIME:
            return 0.0
        return float(self._clock() - wm)

    # -- state ---------------------------------------------------------------------------------
    def state_size(self, state: str, entries: int, size_bytes: int) -> None:
        """Set ``state``'s stored entry count and bytes (absolute values, not increments)."""
        self._state_entries.labels(self.job, state).set(entries)
        self._state_bytes.labels(self.job, state).set(size_bytes)

    def ttl_expired(self, n: int) -> None:
        """Count ``n`` more expired entries deleted by sweeps."""
        self._expired.inc(n)

    def sweeps(self, n: int) -> None:
        """Count ``n`` more sweep steps."""
        self._sweeps.inc(n)

    def checkpoint(self, duration_s: float, size_bytes: int) -> None:
        """Record one checkpoint: how long it took and how many bytes its batch held."""
        self._cp_duration.observe(duration_s)
        self._cp_size.set(size_bytes)
        self._cp_bytes.inc(size_bytes)

    def cache(self, hits: int, misses: int) -> None:
        """Count ``hits`` and ``misses`` more state cache lookups (increments)."""
        with self._lock:
            self._hits += hits
            self._misses += misses
        self._cache_hits.inc(hits)
        self._cache_misses.inc(misses)

    def state_cache(self, state: str, hits: int, misses: int) -> None:
        """Count ``hits`` and ``misses`` more lookups in ``state``'s cache (increments)."""
        self._state_hits.labels(self.job, state).inc(hits)
        self._state_misses.labels(self.job, state).inc(misses)

    def _hit_ratio(self) -> float:
        with self._lock:
            total = self._hits + self._misses
            return self._hits / total if total else math.nan

    # -- startup -------------------------------------------------------------------------------
    def startup_phase(self, phase: str, seconds: float) -> None:
        """Record how long startup ``phase`` took (see :data:`STARTUP_PHASES`)."""
        if not _PHASE.match(phase):
            raise ConfigError(
                f"startup phase {phase!r}: use a lower_snake_case name such as "
                f"{', '.join(STARTUP_PHASES)}"
            )
        self._phases.labels(self.job, phase).set(seconds)

    def operator_startup(self, operator: str, phases: dict[str, float],
                         round_trips: int) -> None:
        """Record one operator's startup phases (seconds, see :data:`STARTUP_PHASES`) and the
        backend round trips made until its first event."""
        for phase, seconds in phases.items():
            if not _PHASE.match(phase):
                raise ConfigError(
                    f"startup phase {phase!r} of operator {operator!r}: use a "
                    f"lower_snake_case name such as {', '.join(STARTUP_PHASES)}"
                )
            self._op_phases.labels(self.job, operator, phase).set(seconds)
        self._op_round_trips.labels(self.job, operator).set(round_trips)

    def backend_round_trips(self, n: int, phase: str = "run") -> None:
        """Count ``n`` more backend calls, made during ``phase`` ("startup" or "run")."""
        self._round_trips.labels(self.job, phase).inc(n)

    def consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Set each input ``(topic, partition)``'s lag (records behind its high watermark);
        partitions of the previous call that ``lags`` leaves out (revoked) are dropped."""
        gauge = self._consumer_lag
        for topic, partition in self._lag_partitions - lags.keys():
            gauge.remove(self.job, topic, str(partition))
        for (topic, partition), lag in lags.items():
            gauge.labels(self.job, topic, str(partition)).set(lag)
        self._lag_partitions = set(lags)

    def flow(self, records: int, size_bytes: int, paused: bool, pauses: int) -> None:
        """Set the produced records and bytes awaiting acks, whether fetching is paused, and
        how many pauses there were since the start (absolute values)."""
        if not hasattr(self, "_in_flight"):  # registered on first use: Kafka workers only
            r, job = self.registry, self.job
            self._in_flight = Gauge("eddies_in_flight_records", "Produced records not "
                                    "acknowledged yet", ["job"], registry=r).labels(job)
            self._in_flight_bytes = Gauge("eddies_in_flight_bytes", "Produced bytes not "
                                          "acknowledged yet", ["job"], registry=r).labels(job)
            self._paused = Gauge("eddies_fetch_paused", "1 while fetching is paused because "
                                 "produced records await acks (backpressure)", ["job"],
                                 registry=r).labels(job)
            self._pauses = Counter("eddies_fetch_pauses", "Times fetching was paused by "
                                   "backpressure", ["job"], registry=r).labels(job)
            self._pauses_seen = 0
        self._in_flight.set(records)
        self._in_flight_bytes.set(size_bytes)
        self._paused.set(1 if paused else 0)
        if pauses > self._pauses_seen:
            self._pauses.inc(pauses - self._pauses_seen)
            self._pauses_seen = pauses

    def restore(self, partition: int, records: int, seconds: float) -> None:
        """Record the last restore of key group ``partition``: changelog records replayed
        and seconds taken."""
        self._restore_records.labels(self.job, str(partition)).set(records)
        self._restore_seconds.labels(self.job, str(partition)).set(seconds)

    def standby_lag(self, partition: int, records: int | None) -> None:
        """Set a standby key group's lag in changelog records (None: drop the series).

        >>> m = Metrics("demo")
        >>> m.standby_lag(3, 120); m.value("eddies_standby_lag_records", partition="3")
        120.0
        >>> m.standby_lag(3, None); m.value("eddies_standby_lag_records", partition="3")
        """
        if records is None:
            if (self.job, str(partition)) in self._standby_partitions:
                self._standby_lag.remove(self.job, str(partition))
                self._standby_partitions.discard((self.job, str(partition)))
        else:
            self._standby_partitions.add((self.job, str(partition)))
            self._standby_lag.labels(self.job, str(partition)).set(records)

    # -- output --------------------------------------------------------------------------------
    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format (for ``GET /metrics``)."""
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value (``job`` filled in), or None; for tests and progress.

        ``name`` is the sample name as exposed, e.g. ``"eddies_dead_letters_total"``.
        """
        return self.registry.get_sample_value(name, {"job": self.job, **labels})
