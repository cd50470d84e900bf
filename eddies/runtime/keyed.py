"""KeyedOperator: runs one keyed process function over its state store and timers.

It is the piece both the test harness and the job executor drive: set the key, call user
code, gather outputs, fire timers as time advances, and put its state, timers and watermark
into the checkpoint batch.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Callable
from types import GeneratorType
from typing import Any, Protocol

from eddies.errors import ConfigError, KeyEncodingError
from eddies.operators.functions import (
    Context,
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
)
from eddies.runtime.timers import EVENT, PROCESSING, Timers
from eddies.state.backend import Batch, StateBackend
from eddies.state.descriptors import declared_states
from eddies.state.keys import encode_key, state_key
from eddies.state.store import KeyedStateStore
from eddies.state.ttl import MIN_TIME, TtlConfig
from eddies.state.values import pack, unpack

__all__ = ["BatchCut", "EventTimeHook", "KeyedOperator", "META_CF", "NEVER_DUE", "emit_into"]

META_CF = "__meta__"
NEVER_DUE = 2**63
"""Above every watermark (see :meth:`KeyedOperator.due_watermark`)."""


def emit_into(out: list[Any], result: Any) -> None:
    """Add what a user method returned or yielded to ``out``."""
    if result is None:
        return
    if type(result) is list or type(result) is tuple or type(result) is GeneratorType:
        out.extend(result)
    else:
        out.append(result)


def _wall_ms() -> int:
    return _time.time_ns() // 1_000_000


class _KeyTimers:
    """``ctx.timers``: the timer service of the operator's current key."""

    __slots__ = ("_op",)

    def __init__(self, op: KeyedOperator) -> None:
        self._op = op

    def register_event_time(self, timestamp: int) -> None:
        """Fire ``on_timer`` for this key once the watermark reaches ``timestamp``."""
        op = self._op
        time = int(timestamp)
        op.timers.register(EVENT, time, op.store.key)
        if time <= op.horizon:  # due within the records being pushed: cut the batch
            op.cut.due = True

    def register_processing_time(self, timestamp: int) -> None:
        """Fire ``on_timer`` for this key once processing time reaches ``timestamp``."""
        self._op.timers.register(PROCESSING, int(timestamp), self._op.store.key)

    def delete_event_time(self, timestamp: int) -> None:
        self._op.timers.delete(EVENT, int(timestamp), self._op.store.key)

    def delete_processing_time(self, timestamp: int) -> None:
        self._op.timers.delete(PROCESSING, int(timestamp), self._op.store.key)

    def current_processing_time(self) -> int:
        return self._op.processing_time()

    def current_watermark(self) -> int:
        return self._op.ctx.watermark


class EventTimeHook(Protocol):
    """What ``function._attach_operator(op)`` returns: work due at event times of its own
    (window ends), which ``advance_watermark`` interleaves with the timers in time order."""

    def next_time(self) -> int | None:
        """The earliest time with work due, or None."""

    def fire_next(self, time: int, out: list[Any]) -> None:
        """Do the work due at ``time`` (== ``next_time()``), outputs to ``out``."""


class BatchCut:
    """Raised flag: event-time work was registered at a time the records being pushed take
    the watermark to, so the executor must stop after the current record and advance time
    before the next (see :attr:`KeyedOperator.horizon`). One is shared by an executor's
    operators, so a record whose outputs reach several of them needs one check."""

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = False


class KeyedOperator:
    """One keyed function bound to state over ``backend``, with its timers and watermark."""

    def __init__(
        self,
        name: str,
        function: KeyedProcessFunction | KeyedCoProcessFunction,
        backend: StateBackend,
        *,
        max_parallelism: int = 128,
        ttl_config: TtlConfig | None = None,
        clock: Callable[[], int] | None = None,
        side_output: Callable[[OutputTag, Any], None] | None = None,
        cache_entries: int | None = None,
    ) -> None:
        if not isinstance(function, (KeyedProcessFunction, KeyedCoProcessFunction)):
            raise ConfigError(
                f"operator {name!r}: {function!r} is not a KeyedProcessFunction; subclass "
                "eddies.KeyedProcessFunction and define on_event(self, event, ctx)"
            )
        self.name = name
        self.function = function
        self._clock = clock or _wall_ms
        config = ttl_config or TtlConfig()
        if config.clock is None:
            config = dataclasses.replace(config, clock=self.processing_time)
        self.store = KeyedStateStore(
            backend, max_parallelism=max_parallelism, operator=name, ttl_config=config,
            **({} if cache_entries is None else {"cache_entries": cache_entries}),
        )
        self.backend = self.store.backend
        self.handles = {}
        for attr, descriptor in declared_states(function).items():
            handle = self.store.bind(descriptor)
            self.handles[descriptor.name] = handle
            setattr(function, attr, handle)
        # The nearest timers in memory, as many as the state cache keeps keys; the rest are
        # in the store and read in ranges as time advances (see timers.py).
        self.timers = Timers(name, self.store.prefix, limit=self.store.cache_entries)
        self.timers.on_key = self._timer_key_read
        self.side: dict[OutputTag, list[Any]] = {}
        self.ctx = Context(_KeyTimers(self), side_output or self._collect_side)
        self.watermark = MIN_TIME
        self.horizon = MIN_TIME
        """The highest watermark the records being pushed now bring this operator to, with
        nothing due at or below it when they started (the executor sets it per run of
        records). Event-time work registered at or below it sets ``cut.due``."""
        self.cut = BatchCut()
        self._meta_key = encode_key(("watermark", name))
        self.is_broadcast = isinstance(function, KeyedBroadcastProcessFunction)
        # An internal function (the window operator) may take part in the runtime: keep an
        # index of its own, fired in time order with the timers (see EventTimeHook).
        attach = getattr(function, "_attach_operator", None)
        self._hook: EventTimeHook | None = attach(self) if attach is not None else None
        self.inputs = 2 if isinstance(function, KeyedCoProcessFunction) else 1
        """Keyed inputs: 2 for a KeyedCoProcessFunction (on_event1, on_event2)."""
        self._on_events = ((function.on_event1, function.on_event2)
                           if isinstance(function, KeyedCoProcessFunction)
                           else (function.on_event,))
        self._on_event = self._on_events[0]
        self._on_timer = function.on_timer
        self.emitted = 0
        """Outputs handed to ``emit`` by timers and event-time work (for metrics; the
        executor takes and resets it)."""

    def _collect_side(self, tag: OutputTag, value: Any) -> None:
        self.side.setdefault(tag, []).append(value)

    def processing_time(self) -> int:
        return self._clock()

    def _timer_key_read(self, key: Any, prefix: bytes) -> None:
        # A timer read from the store keeps the key group it is stored under when the runtime
        # pins groups (Kafka: the input partition), as the keys loaded at restore do.
        store = self.store
        if store.key_group is not None:
            store._prefixes.setdefault(key, prefix)

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Restore timers and the watermark, then call the function's open()."""
        self.restore()
        self.function.open()

    def restore(self, meta: dict[bytes, bytes] | None = None) -> None:
        """Load timers (one range scan), the watermark and broadcast state.

        ``meta`` is the checkpoint metadata column family already read in bulk by the
        driver; without it the watermark costs one point read.
        """
        self.timers.load(self.backend.inner)
        if meta is None:
            data = self.backend.inner.get(META_CF, self._meta_key)
        else:
            data = meta.get(self._meta_key)
        if data is not None:
            self.set_watermark(unpack(data))
        for handle in self.handles.values():
            preload = getattr(handle, "preload", None)
            if preload is not None:
                preload()

    def checkpoint(self, batch: Batch) -> None:
        """Add dirty state, timer changes and the watermark to ``batch``."""
        self.store.collect(batch)
        self.timers.collect(batch)
        batch.put(META_CF, self._meta_key, pack(self.watermark))

    # -- processing ----------------------------------------------------------------------------
    def on_event_of(self, input: int = 1) -> Callable[[Any, Context], Any]:
        """The user method for events of keyed input ``input`` (1, or 2 for a
        KeyedCoProcessFunction's ``on_event2``)."""
        if not 1 <= input <= self.inputs:
            raise ConfigError(
                f"operator {self.name!r}: {type(self.function).__name__} has no keyed input "
                f"{input!r}" + ("; a KeyedCoProcessFunction has inputs 1 and 2"
                                if self.inputs == 2 else "; it has one keyed input (1)")
            )
        return self._on_events[input - 1]

    def process(self, event: Any, key: Any, timestamp: int | None, out: list[Any],
                input: int = 1) -> None:
        """Run ``on_event`` (``on_event2`` for ``input=2`` of a KeyedCoProcessFunction) for
        one event of ``key``; outputs go to ``out``."""
        on_event = self._on_event if input == 1 else self.on_event_of(input)
        store = self.store
        k = state_key(key)
        # Validate before user code runs: a key the codec cannot store (a list, a dict) raises
        # KeyEncodingError here, and the record goes to dead letters untouched.
        self.validate_key(key, k)
        store.key = k
        store.timestamp = timestamp
        ctx = self.ctx
        ctx.key = key
        ctx.timestamp = timestamp
        emit_into(out, on_event(event, ctx))

    def validate_key(self, key: Any, k: Any) -> None:
        """Raise KeyEncodingError unless ``k`` (``key`` as a state_key) can be stored; caches its
        stored-key prefix for the state handles that follow."""
        try:
            self.store.prefix(k)
        except KeyEncodingError:
            raise
        except TypeError as exc:  # unhashable: the key cache cannot even look it up
            raise KeyEncodingError(
                f"operator {self.name!r}: key {key!r} cannot be stored ({exc}); a key is a "
                "None, bool, int, float, str or bytes, or a tuple of those"
            ) from exc

    def process_broadcast(self, event: Any, timestamp: int | None, out: list[Any]) -> None:
        """Run ``on_broadcast`` with BroadcastState writable."""
        store = self.store
        store.broadcast_writable = True
        store.timestamp = timestamp
        ctx = self.ctx
        ctx.key = None
        ctx.timestamp = timestamp
        try:
            emit_into(out, self.function.on_broadcast(event, ctx))  # type: ignore[union-attr]
        finally:
            store.broadcast_writable = False

    def _fire(self, time: int, key: Any, domain: str, out: list[Any]) -> None:
        store = self.store
        store.key = key
        store.timestamp = time
        ctx = self.ctx
        ctx.key = key[0] if type(key) is tuple and len(key) == 1 else key
        ctx.timestamp = time
        ctx.time_domain = domain
        try:
            emit_into(out, self._on_timer(time, ctx))
        finally:
            ctx.time_domain = "event"

    def next_event_time(self) -> int | None:
        """The earliest event time with work due (a timer or the hook's), or None."""
        at = self.timers.event.peek_time()
        if self._hook is not None:
            hook_at = self._hook.next_time()
            if hook_at is not None and (at is None or hook_at < at):
                return hook_at
        return at

    def due_watermark(self) -> int:
        """The lowest watermark at which event-time work is due: the time of the earliest
        (:meth:`next_event_time`), or the watermark plus one when that is at or below the
        watermark (such work waits for the watermark to move); ``NEVER_DUE`` when none."""
        if self._hook is None:
            heap = self.timers.event
            times = heap.times
            if times and heap.buckets.get(times[0]):  # next_time's answer, without the call
                at: int | None = times[0]
            else:
                at = heap.next_time()
        else:
            at = self.next_event_time()
        if at is None:
            return NEVER_DUE
        current = self.watermark
        return at if at > current else current + 1

    def note_event_time(self, time: int) -> None:
        """Event-time work was just registered at ``time`` outside the timers (a window's
        end): cut the batch if the records being pushed reach it (see ``horizon``)."""
        if time <= self.horizon:
            self.cut.due = True

    def follow(self, watermark: int) -> None:
        """Move event time to ``watermark`` with nothing due at or below it, for the record
        about to be handled: what it reads, TTL expiry included, is as of that watermark."""
        self.watermark = self.ctx.watermark = self.backend.watermark = watermark

    def set_watermark(self, watermark: int) -> None:
        if watermark > self.watermark:
            self.watermark = watermark
            self.ctx.watermark = watermark
            self.backend.set_watermark(watermark)

    def advance_watermark(
        self, watermark: int, out: list[Any], emit: Callable[[Any, int], None] | None = None
    ) -> int:
        """Move event time to ``watermark``, firing due event-time timers in time order;
        returns :meth:`due_watermark` after (the executor's batch loop compares each
        record's watermark with it).

        Outputs go to ``out``; with ``emit``, each timer's outputs are passed on as
        ``emit(value, timer_time)`` right after it fires and ``out`` is emptied.
        """
        if watermark <= self.watermark:
            return self.due_watermark()
        if self._hook is not None:
            self._advance_with_hook(watermark, out, emit)
            return self.due_watermark()
        heap = self.timers.event
        pop_due = heap.pop_due
        ctx = self.ctx
        store = self.store
        on_timer = self._on_timer
        set_clock = self.backend.set_watermark
        current = self.watermark
        last = None
        emitted = 0  # a local while timers fire (see self.emitted)
        while True:
            due = pop_due(watermark)
            if due is None:
                break
            time, key = due
            if time != last:
                # Timers see the watermark at their own time, as in Flink, and so does TTL
                # state: an entry due to expire at the timer's time is gone in on_timer,
                # however the input happened to be batched.
                last = time
                ctx.watermark = current if current > time else time
                set_clock(ctx.watermark)
            # _fire for the event domain (ctx.time_domain is "event" between firings).
            store.key = key
            store.timestamp = time
            ctx.key = key[0] if type(key) is tuple and len(key) == 1 else key
            ctx.timestamp = time
            result = on_timer(time, ctx)
            if result is not None:  # emit_into, inlined
                t = type(result)
                if t is list or t is tuple or t is GeneratorType:
                    out.extend(result)
                else:
                    out.append(result)
            if emit is not None and out:
                emitted += len(out)
                for value in out:
                    emit(value, time)
                out.clear()
        if emitted:
            self.emitted += emitted
        # set_watermark, inlined: this runs between records of a batch (see the executor).
        self.watermark = ctx.watermark = watermark
        set_clock(watermark)
        # due_watermark, inlined: pop_due just found nothing due, so the next live timer
        # is beyond the watermark.
        times = heap.times
        at = times[0] if times and heap.buckets.get(times[0]) else heap.next_time()
        return NEVER_DUE if at is None else at

    def _advance_with_hook(
        self, watermark: int, out: list[Any], emit: Callable[[Any, int], None] | None
    ) -> None:
        """advance_watermark for a function with an EventTimeHook: timers due at or before
        the hook's next time fire first, then the hook's work at that time, and so on."""
        hook = self._hook
        assert hook is not None
        next_time = hook.next_time
        fire_next = hook.fire_next
        pop_due = self.timers.event.pop_due
        ctx = self.ctx
        set_clock = self.backend.set_watermark
        current = self.watermark
        while True:
            at = next_time()
            if at is not None and at > watermark:
                at = None
            due = pop_due(watermark if at is None else at)
            if due is not None:
                time = due[0]
            elif at is not None:
                time = at
            else:
                break
            ctx.watermark = current if current > time else time
            set_clock(ctx.watermark)
            if due is not None:
                self._fire(time, due[1], "event", out)
            else:
                fire_next(time, out)
            if emit is not None and out:
                self.emitted += len(out)
                for value in out:
                    emit(value, time)
                out.clear()
        self.set_watermark(watermark)

    def advance_processing_time(
        self, now: int, out: list[Any], emit: Callable[[Any, int], None] | None = None
    ) -> None:
        """Fire processing-time timers due at ``now`` (outputs as in advance_watermark)."""
        heap = self.timers.processing
        while True:
            due = heap.pop_due(now)
            if due is None:
                return
            self._fire(due[0], due[1], "processing", out)
            if emit is not None and out:
                self.emitted += len(out)
                for value in out:
                    emit(value, due[0])
                out.clear()

    def sweep(self, limit: int | None = None) -> int:
        """Physically delete up to ``limit`` expired entries; returns how many."""
        return self.backend.sweep(limit)
