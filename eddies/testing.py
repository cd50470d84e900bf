"""A deterministic harness to test one keyed function: explicit events, watermarks and clocks.

Nothing runs in the background: each call handles exactly what you give it and returns the
outputs. State goes through the real backend and serializers, so ``snapshot()``/``restore()``
prove that a function's state survives a restart.

>>> import eddies as ed
>>> class Dedup(ed.KeyedProcessFunction):
...     seen = ed.ValueState("seen", ttl=ed.Ttl(seconds=10))
...     def on_event(self, event, ctx):
...         if self.seen.get() is None:
...             self.seen.set(True)
...             yield event
>>> h = Harness(Dedup())
>>> h.event("a", key="k", timestamp=1_000), h.event("a", key="k", timestamp=2_000)
(['a'], [])
>>> h.watermark(10_999); h.state("seen", "k")
[]
True
>>> h.watermark(11_000); h.state("seen", "k") is None
[]
True
>>> h.event("a", key="k", timestamp=12_000)
['a']
"""

from __future__ import annotations

from typing import Any

import msgpack

from eddies.errors import ConfigError, StateError
from eddies.operators.functions import (
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
)
from eddies.runtime.executor import RunStats, record_timestamp
from eddies.runtime.keyed import KeyedOperator, KeyedPush
from eddies.state import open_backend
from eddies.state.backend import Batch, StateBackend
from eddies.state.keys import state_key
from eddies.state.ttl import TtlConfig

__all__ = ["Harness"]

_MISSING: Any = object()
_SNAPSHOT_VERSION = 1


def _checked(timestamp: Any) -> int | None:
    """An event's timestamp as the runners take it (a float cut to its int), or ConfigError
    for one they would dead-letter."""
    if timestamp is None:
        return None
    try:
        return record_timestamp(timestamp)
    except ValueError as exc:
        raise ConfigError(f"{exc}; a runner sends such a record to dead letters") from None


class _Driver:
    """The harness as a :class:`~eddies.runtime.keyed.KeyedDriver`: what the runners
    dead-letter or wrap (a key or value the state cannot hold, an exception out of user
    code) is raised as it is, for the test to see."""

    def __init__(self, stats: RunStats) -> None:
        self.cur_index = 0
        self.cur_source: str | None = None
        self.stats = stats

    def reject(self, value: Any, reason: str, operator: str) -> None:
        raise ConfigError(reason)

    def record_failed(self, exc: Exception, value: Any, key: Any, ts: Any,
                      operator: str) -> None:
        raise exc

    def user_error(self, op: str, key: Any, value: Any, ts: Any, exc: Exception, *,
                   where: str | None = None, call: str = "on_timer") -> Exception:
        raise exc

    def timer_error(self, op: KeyedOperator, exc: Exception) -> Exception:
        return exc


class Harness:
    """Drives one :class:`~eddies.KeyedProcessFunction` (or
    :class:`~eddies.KeyedCoProcessFunction`) by hand.

    ``state`` is ``"memory"``, ``"rocksdb:PATH"`` or a backend object (a
    :class:`~eddies.state.TtlStateBackend` too, whose own config then wins over
    ``ttl_config``). ``ttl_config`` sets backend-wide TTL options (e.g. a default TTL).
    Processing time starts at 0 and moves only when you call :meth:`processing_time`; it
    drives processing-time timers and TTL, unless the TTL config brings its own ``clock``.

    Events go through the same compiled push as in ``run_local`` and ``eddies worker``
    (:meth:`~eddies.runtime.keyed.KeyedOperator.compile`): the same key validation, the
    same outputs. Where a runner sends a record to dead letters (a key or a value the
    state cannot hold), the harness raises the error. ``stats.late_events`` counts events
    at or behind the watermark, and ``stats.late_dropped`` those of them a window or a join
    dropped (no ``late=`` tag), as in ``run_local``.
    """

    def __init__(
        self,
        function: KeyedProcessFunction | KeyedCoProcessFunction,
        state: str | StateBackend = "memory",
        *,
        ttl_config: TtlConfig | None = None,
        max_parallelism: int = 128,
        operator: str = "",
    ) -> None:
        self.backend = open_backend(state)
        self._now = 0
        self.stats = RunStats()
        self._driver = _Driver(self.stats)
        self._out: list[Any] = []
        self._pushes: dict[int, KeyedPush] = {}
        try:
            self.operator = KeyedOperator(
                operator,
                function,
                self.backend,
                max_parallelism=max_parallelism,
                ttl_config=ttl_config,
                clock=lambda: self._now,
            )
            self.function = function
            ttl = self.operator.backend
            # Checkpoints, snapshots and restores move stored bytes as they are: below the TTL
            # layer, which would index entries twice and cannot read internal column families.
            self._raw = ttl.inner
            # A TtlStateBackend passed in without a clock would expire by the wall clock.
            self._pin_ttl_clock = ttl.config.clock is None
            if self._pin_ttl_clock:
                ttl.set_processing_time(self._now)
            self.operator.open()
        except BaseException:
            if state is not self.backend:  # opened here, so released here (a RocksDB lock)
                self.backend.close()
            raise
        self._closed = False

    # -- driving -------------------------------------------------------------------------------
    def event(self, value: Any, key: Any = _MISSING, timestamp: int | None = None, *,
              input: int = 1) -> list[Any]:
        """Handle one event of ``key`` at ``timestamp`` (ms); returns its outputs.

        ``timestamp`` is taken as the runners take a record's: a float is cut to its int, and
        one they would send to dead letters (not a number, beyond +-2**62) raises ConfigError.

        ``input=2`` feeds the second input of a
        :class:`~eddies.KeyedCoProcessFunction` (``on_event2``):

        >>> import eddies as ed
        >>> class Pair(ed.KeyedCoProcessFunction):
        ...     left = ed.ValueState("left")
        ...     def on_event1(self, event, ctx):
        ...         self.left.set(event)
        ...     def on_event2(self, event, ctx):
        ...         yield (self.left.get(), event)
        >>> h = Harness(Pair())
        >>> h.event("a", key="k"), h.event("b", key="k", input=2)
        ([], [('a', 'b')])
        """
        if key is _MISSING:
            raise ConfigError("Harness.event needs key=...: the key the event belongs to")
        timestamp = _checked(timestamp)
        push = self._pushes.get(input)
        if push is None:
            push = self._pushes[input] = self.operator.compile(
                self._collect, self._driver, input=input)
        try:
            push.event(value, timestamp, key)
            return list(self._out)
        finally:
            self._out.clear()
            self._count_late()

    def _count_late(self) -> None:
        # As the runners count them: what the function dropped (windows, joins) so far.
        self.stats.late_dropped = getattr(self.function, "late_dropped", 0)

    def _collect(self, value: Any, ts: Any) -> None:
        self._out.append(value)

    def broadcast(self, value: Any, timestamp: int | None = None) -> list[Any]:
        """Handle one broadcast event (KeyedBroadcastProcessFunction only)."""
        if not self.operator.is_broadcast:
            raise ConfigError(
                f"{type(self.function).__name__} is not a KeyedBroadcastProcessFunction"
            )
        timestamp = _checked(timestamp)
        push = self.operator.compile_broadcast(self._collect, self._driver)
        try:
            push(value, timestamp)
            return list(self._out)
        finally:
            self._out.clear()

    def watermark(self, ms: int) -> list[Any]:
        """Advance event time to ``ms``: fires due event-time timers, expires and sweeps TTL."""
        out: list[Any] = []
        self.operator.advance_watermark(ms, out)
        self.checkpoint()
        self._count_late()
        return out

    def processing_time(self, ms: int) -> list[Any]:
        """Set processing time to ``ms``: fires due processing-time timers, drives TTL."""
        self._now = ms
        if self._pin_ttl_clock:
            self.operator.backend.set_processing_time(ms)
        out: list[Any] = []
        self.operator.advance_processing_time(ms, out)
        self.checkpoint()
        return out

    def checkpoint(self) -> None:
        """Flush state and timers as one atomic batch, then sweep expired entries."""
        batch = Batch()
        self.operator.checkpoint(batch)
        self._raw.write(batch)
        self.operator.backend.sweep_all()

    # -- looking -------------------------------------------------------------------------------
    def state(self, name: str, key: Any) -> Any:
        """The current value of state ``name`` for ``key``, or None if absent or expired.

        A ValueState or ReducingState gives its value, a ListState a list, a MapState (or a
        BroadcastState, whose key is ignored) a dict.
        """
        handle = self.operator.handles.get(name)
        if handle is None:
            known = ", ".join(sorted(self.operator.handles)) or "none"
            raise StateError(f"no state named {name!r} in {type(self.function).__name__}; "
                             f"declared: {known}")
        store = self.operator.store
        saved = store.key
        store.key = state_key(key)
        try:
            return handle.peek()
        finally:
            store.key = saved

    def side_output(self, tag: OutputTag) -> list[Any]:
        """Everything sent to ``tag`` with ``ctx.output`` so far."""
        return list(self.operator.side.get(tag, []))

    def pending_timers(self, key: Any = _MISSING) -> list[tuple[str, int]]:
        """Registered timers as ``(domain, time)`` pairs, for ``key`` if given."""
        only = None if key is _MISSING else state_key(key)
        return [(d, t) for d, t, _ in self.operator.timers.pending(only)]

    # -- persistence ---------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Checkpoint, then return every stored byte (state, timers, watermark) as one blob."""
        self.checkpoint()
        raw = self._raw
        cfs = {cf: [[k, v] for k, v in raw.iterate(cf)] for cf in raw.column_families()}
        return msgpack.packb(
            {"version": _SNAPSHOT_VERSION, "processing_time": self._now, "cfs": cfs},
            use_bin_type=True,
        )

    def restore(self, snapshot: bytes) -> None:
        """Load a :meth:`snapshot` into this (fresh) harness."""
        data = msgpack.unpackb(snapshot, raw=False)
        if data.get("version") != _SNAPSHOT_VERSION:
            raise StateError(f"snapshot version {data.get('version')!r} is not supported "
                             f"(expected {_SNAPSHOT_VERSION})")
        batch = Batch()
        for cf, entries in data["cfs"].items():
            for key, value in entries:
                batch.put(cf, key, value)
        self._raw.write(batch)
        self._now = data["processing_time"]
        if self._pin_ttl_clock:
            self.operator.backend.set_processing_time(self._now)
        self.operator.store.clear_cache()
        self.operator.restore()

    def close(self) -> None:
        """Checkpoint and close the backend."""
        if not self._closed:
            self.checkpoint()
            self.backend.close()
            self._closed = True

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
