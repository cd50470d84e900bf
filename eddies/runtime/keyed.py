"""KeyedOperator: runs one keyed function (process, broadcast, co-process) over its state
store and timers.

:meth:`KeyedOperator.compile` builds the push functions every event goes through, in the
executor, the Kafka worker and ``eddies.testing.Harness`` alike: validate the key, bind it,
call user code, pass the outputs on. The operator also fires timers as time advances and
puts its state, timers and watermark into the checkpoint batch. The output dispatch
(:func:`emit_into`) and the firing of a timer (``_fire``) are inlined in the per-event and
per-timer loops (``compile``, ``advance_watermark``), where a call per event is the cost
that matters.
"""

from __future__ import annotations

import dataclasses
import time as _time
from collections.abc import Callable
from itertools import islice, repeat
from operator import itemgetter, le
from types import GeneratorType
from typing import Any, NamedTuple, Protocol

from eddies.errors import ConfigError, KeyEncodingError
from eddies.operators.functions import (
    Context,
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
)
from eddies.runtime.timers import EVENT, PROCESSING, Timers, wall_ms
from eddies.state.backend import Batch, StateBackend
from eddies.state.descriptors import declared_states
from eddies.state.handles import MISSING as _MISSING
from eddies.state.keys import encode_key, state_key
from eddies.state.store import KeyedStateStore
from eddies.state.ttl import MIN_TIME, TtlConfig
from eddies.state.values import pack, unpack

__all__ = [
    "BatchCut",
    "EventTimeHook",
    "KeyedDriver",
    "KeyedOperator",
    "KeyedPush",
    "META_CF",
    "NEVER_DUE",
    "RECORD_ERRORS",
    "emit_into",
]

META_CF = "__meta__"
NEVER_DUE = 2**63
"""Above every watermark (see :meth:`KeyedOperator.due_watermark`)."""
RECORD_ERRORS = (KeyError, TypeError, IndexError, AttributeError, ValueError)
"""What extracting a key or a timestamp from a malformed record raises (rather than a bug):
such a record goes to dead letters."""
_NO_KEY: Any = object()  # push(value, ts) without a key: the key function reads it


def emit_into(out: list[Any], result: Any) -> None:
    """Add what a user method returned or yielded to ``out``."""
    if result is None:
        return
    if type(result) is list or type(result) is tuple or type(result) is GeneratorType:
        out.extend(result)
    else:
        out.append(result)


class _KeyTimers:
    """``ctx.timers``: the timer service of the operator's current key."""

    __slots__ = ("_op",)

    def __init__(self, op: KeyedOperator) -> None:
        self._op = op

    def register_event_time(self, timestamp: int) -> None:
        """Fire ``on_timer`` for this key once the watermark reaches ``timestamp``."""
        op = self._op
        time = int(timestamp)
        store = op.store
        key = store.key
        # Timers.register, inlined (one call less per registration). The key is hashable:
        # validated before on_event, or a timer's.
        prefix = store.cached_prefixes.get(key)
        op.timers.event.register(EVENT, time, key, prefix or store.prefix(key))
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
    """Work due at event times of its own (window ends), which ``advance_watermark``
    interleaves with the timers in time order (see
    :meth:`KeyedOperator.add_event_time_hook`)."""

    def next_time(self) -> int | None:
        """The earliest time with work due, or None."""

    def fire_next(self, time: int, out: list[Any]) -> None:
        """Do the work due at ``time`` (== ``next_time()``), outputs to ``out``."""


class KeyedDriver(Protocol):
    """What feeds a KeyedOperator's compiled pushes (the executor, the test harness): where
    the record being pushed comes from, and what becomes of one that cannot be handled."""

    cur_index: int
    """The index of the record being pushed in its source's read (for dead letters)."""
    cur_source: str | None
    """The source being pushed (None while timers fire: their records have no position)."""
    stats: Any
    """Counters; ``stats.late_events`` counts events at or behind the watermark."""

    def reject(self, value: Any, reason: str, operator: str) -> None:
        """Send the record being pushed to dead letters with ``reason``."""

    def record_failed(self, exc: Exception, value: Any, key: Any, ts: Any,
                      operator: str) -> None:
        """Handling ``value`` raised ``exc``: dead-letter the record or raise."""

    def user_error(self, op: str, key: Any, value: Any, ts: Any, exc: Exception, *,
                   where: str | None = None, call: str = "on_timer") -> Exception:
        """The exception to raise for ``exc`` out of user code on ``value``."""
        ...

    def timer_error(self, op: KeyedOperator, exc: Exception) -> Exception:
        """The exception to raise for ``exc`` out of ``op``'s timers."""
        ...


class KeyedPush(NamedTuple):
    """One keyed input of a compiled operator (see :meth:`KeyedOperator.compile`)."""

    event: Callable[..., None]
    """``event(value, ts)``, or ``event(value, ts, key)`` with the key given."""
    batch: Callable[..., int]
    """``batch(values, stamps, lo, watermarks=None, advance=None, timing=None)``: a batch
    whose timestamps are checked ints."""


class BatchCut:
    """Raised flag: event-time work was registered at a time the records being pushed take
    the watermark to, so the executor must stop after the current record and advance time
    before the next (see :attr:`KeyedOperator.horizon`). One is shared by an executor's
    operators, so a record whose outputs reach several of them needs one check."""

    __slots__ = ("due",)

    def __init__(self) -> None:
        self.due = False


def _lowered(timers: Any, time: int, limit: int) -> int:
    """The limit of a pass of expiries at ``time`` (up to ``limit``) once an ``on_expire``
    call registered a timer: the timer's time if it comes before ``limit`` (not before
    ``time``: the expiries at ``time`` go first), else ``limit``."""
    at = timers.next_time()
    if at is None or at >= limit:
        return limit
    return at if at > time else time


class _Expiries:
    """The event-time work of states declared with ``on_expire=True``: each handle's
    ``expiring`` queue holds one live entry at or before each stored value's stamp (a
    rewrite with a later stamp adds none; the entry finds the later stamp in its key's slot
    when it comes due and moves to it). Due entries fire in (time, stored key, state name) order, so the calls
    depend on the input alone, not on batches, checkpoints or restarts; the heaps are
    rebuilt from the stored stamps whenever timers are loaded (restore, Kafka partitions)."""

    def __init__(self, op: KeyedOperator, handles: list[Any]) -> None:
        on_expire = getattr(op.function, "on_expire", None)
        if not callable(on_expire):
            names = ", ".join(repr(h.name) for h in handles)
            raise ConfigError(
                f"operator {op.name!r}: state {names} is declared with on_expire=True, so "
                f"{type(op.function).__name__} must define on_expire(self, state_name, value, "
                "ctx)")
        self.op = op
        self.handles = handles
        self.on_expire = on_expire
        for handle in handles:
            handle.on_arm = op.note_event_time
        if len(handles) == 1:  # the common case: no loop over the handles per pass
            self.next_time = handles[0].next_live_time  # type: ignore[method-assign]
            self.fire_until = self._single_pass()  # type: ignore[method-assign,assignment]

    @staticmethod
    def loader(handles: list[Any]) -> Callable[[Any, bytes | None, bytes | None], int]:
        def load(backend: Any, lower: bytes | None, upper: bytes | None) -> int:
            return sum(h.load_expiring(backend, lower, upper) for h in handles)
        return load

    def next_time(self) -> int | None:
        at = None
        for handle in self.handles:
            time = handle.next_live_time()
            if time is not None and (at is None or time < at):
                at = time
        return at

    def fire_until(self, limit: int, out: list[Any],
                   emit: Callable[[Any, int], None] | None) -> None:
        """Fire every expiry at or before ``limit`` in order (one state: in one pass), with
        the TTL clock at each one's time; outputs as in ``advance_watermark``."""
        for handle in self.handles:  # reads during the calls check stamps
            handle.hold_checks()
        try:
            self._fire_until(limit, out, emit)
            self.op.expiring = None  # left set by an error, for the message
        finally:
            for handle in self.handles:
                handle.release_checks()

    def _fire_until(self, limit: int, out: list[Any],
                    emit: Callable[[Any, int], None] | None) -> None:
        # An on_expire call may register a timer before ``limit``: the pass then stops
        # after the expiries at the current time, and the timer fires next (the caller
        # goes on in time order). Such a timer is at a time new to the heap (every time
        # in it is at or after the limit), which counts it in ``new_times``.
        op = self.op
        timers = op.timers.event
        seen = timers.new_times
        while (at := self.next_time()) is not None and at <= limit:
            op.ctx.watermark = at if at > op.watermark else op.watermark
            op.backend.set_watermark(op.ctx.watermark)
            self.fire_next(at, out)
            if emit is not None and out:
                op.emitted += len(out)
                for value in out:
                    emit(value, at)
                out.clear()
            if timers.new_times != seen:
                seen = timers.new_times
                limit = _lowered(timers, at, limit)

    def _single_pass(self) -> Callable[[int, list[Any], Any], None]:
        """``fire_until`` for one state, in one pass, with its closures made once (a pass
        runs each time the watermark reaches the next expiry). ``fire`` is called by
        ``expire_until`` for each value that expires, with its key current."""
        op = self.op
        store = op.store
        ctx = op.ctx
        on_expire = self.on_expire
        handle = self.handles[0]
        name = handle.name
        expire_until = handle.expire_until
        hold_checks = handle.hold_checks
        release_checks = handle.release_checks
        clock = op.backend
        timers = op.timers.event
        seen = current = floor = cap = emitted = 0
        out: list[Any] = []
        emit: Any = None

        def fire(time: int, key: Any, value: Any) -> int | None:
            nonlocal emitted, seen, cap
            # The TTL clock moves as the batch loop moves it per record (one attribute
            # store, never back); set_watermark catches its event horizon up after the pass.
            wm = ctx.watermark = current if current > time else time
            clock.watermark = wm if wm > floor else floor
            store.timestamp = time
            ctx.key = key[0] if type(key) is tuple and len(key) == 1 else key
            ctx.timestamp = time
            result = on_expire(name, value, ctx)
            if result is not None:
                t = type(result)
                if t is list or t is tuple or t is GeneratorType:
                    out.extend(result)
                else:
                    out.append(result)
                if emit is not None and out:
                    emitted += len(out)
                    for item in out:
                        emit(item, time)
                    out.clear()
            if timers.new_times == seen:
                return None
            seen = timers.new_times
            lowered = _lowered(timers, time, cap)
            if lowered == cap:
                return None
            cap = lowered
            return lowered

        def fire_until(limit: int, into: list[Any], emit_to: Any) -> None:
            nonlocal timers, seen, current, floor, cap, emitted, out, emit
            hold_checks()  # reads during the calls check stamps
            try:
                timers = op.timers.event
                seen = timers.new_times
                current = op.watermark
                floor = clock.watermark
                cap = limit
                emitted = 0
                out = into
                emit = emit_to
                op.expiring = name
                expire_until(limit, fire)
                clock.set_watermark(clock.watermark)
                op.emitted += emitted
                op.expiring = None  # left set by an error, for the message
            finally:
                release_checks()

        return fire_until

    def fire_next(self, time: int, out: list[Any]) -> None:
        due = []
        for handle in self.handles:
            queue = handle.expiring
            while (entry := queue.peek()) is not None and entry[0] == time:
                at, prefix, key, slot = queue.pop()
                due.append((prefix, handle.name, key, handle, slot, at))
        if len(self.handles) > 1:
            due.sort(key=itemgetter(0, 1))
        op = self.op
        store = op.store
        ctx = op.ctx
        on_expire = self.on_expire
        for _, name, key, handle, slot, at in due:
            store.key = key
            store.timestamp = time
            # (at: the entry's own time, the object its slot holds if it is live)
            value = handle.take_expired(key, at, slot)
            if value is _MISSING:
                continue
            ctx.key = key[0] if type(key) is tuple and len(key) == 1 else key
            ctx.timestamp = time
            op.expiring = name
            result = on_expire(name, value, ctx)
            if result is not None:
                t = type(result)
                if t is list or t is tuple or t is GeneratorType:
                    out.extend(result)
                else:
                    out.append(result)


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
        self._clock = clock or wall_ms
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
        self.hook: EventTimeHook | None = None
        """Event-time work of the function's own (see :meth:`add_event_time_hook`)."""
        expiring = [h for h in self.handles.values() if getattr(h, "expiring", None) is not None]
        if expiring:
            self.add_event_time_hook(_Expiries(self, expiring), loader=_Expiries.loader(expiring))
        # An internal function (the window operator) may take part in the runtime: it gets
        # the operator, its state bound, before the first event (add_event_time_hook).
        attach = getattr(function, "attach_operator", None)
        if attach is not None:
            attach(self)
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
        self.expiring: str | None = None
        """The state whose ``on_expire`` calls are being made, until they all return: an
        error out of the timers names it (see ``Executor.timer_error``)."""

    def add_event_time_hook(self, hook: EventTimeHook, *, handle: Any = None,
                            loader: Callable[[Any, bytes | None, bytes | None], int] | None
                            = None) -> None:
        """Fire ``hook``'s work in time order with the timers as the watermark moves (the
        window operator's window ends). ``handle`` replaces the state handle bound under its
        name (the hook's own table, as ``WindowState``); ``loader(backend, lower, upper)``
        runs whenever timers are loaded from the store (restore, Kafka partitions), to
        rebuild the hook's index. The hook tells :meth:`note_event_time` the time of each
        piece of work it registers."""
        if self.hook is not None:
            raise ConfigError(f"operator {self.name!r} already has an event-time hook")
        self.hook = hook
        if handle is not None:
            self.store.handles[handle.name] = handle
            self.handles[handle.name] = handle
        if loader is not None:
            self.timers.loaders.append(loader)

    def _collect_side(self, tag: OutputTag, value: Any) -> None:
        self.side.setdefault(tag, []).append(value)

    def processing_time(self) -> int:
        return self._clock()

    def _timer_key_read(self, key: Any, prefix: bytes) -> None:
        # A timer read from the store keeps the key group it is stored under when the runtime
        # pins groups (Kafka: the input partition), as the keys loaded at restore do. Timers
        # fire unpinned, so the pin is not what tells.
        store = self.store
        if store.groups_pinned:
            store.pin_prefix(key, prefix, replace=False)

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Restore timers and the watermark, then call the function's open()."""
        self.restore()
        self.function.open()

    def restore(self, meta: dict[bytes, bytes] | None = None, *,
                preloaded: bool = False) -> None:
        """Load timers (one range scan), the watermark and broadcast state.

        ``meta`` is the checkpoint metadata column family already read in bulk by the
        driver; without it the watermark costs one point read. ``preloaded``: timers and
        broadcast state were loaded with every operator's (``runtime/preload.py``).
        """
        if not preloaded:
            self.timers.load(self.backend.inner)
        if meta is None:
            data = self.backend.inner.get(META_CF, self._meta_key)
        else:
            data = meta.get(self._meta_key)
        if data is not None:
            self.set_watermark(unpack(data))
        for handle in () if preloaded else self.handles.values():
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
        at = self.timers.event.next_time()
        if self.hook is not None:
            hook_at = self.hook.next_time()
            if hook_at is not None and (at is None or hook_at < at):
                return hook_at
        return at

    def due_watermark(self) -> int:
        """The lowest watermark at which event-time work is due: the time of the earliest
        (:meth:`next_event_time`), or the watermark plus one when that is at or below the
        watermark (such work waits for the watermark to move); ``NEVER_DUE`` when none."""
        if self.hook is None:
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
        if self.hook is not None:
            self._advance_with_hook(watermark, out, emit)
            return self.due_watermark()
        heap = self.timers.event
        ctx = self.ctx
        store = self.store
        on_timer = self._on_timer
        set_clock = self.backend.set_watermark
        current = self.watermark
        last = None
        emitted = 0  # a local while timers fire (see self.emitted)
        for time, key in heap.due(watermark):
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
        # due_watermark, inlined: nothing is left due, so the next live timer is beyond the
        # watermark.
        times = heap.times
        at = times[0] if times and heap.buckets.get(times[0]) else heap.next_time()
        return NEVER_DUE if at is None else at

    def _advance_with_hook(
        self, watermark: int, out: list[Any], emit: Callable[[Any, int], None] | None
    ) -> None:
        """advance_watermark for a function with an EventTimeHook: timers due at or before
        the hook's next time fire first, then the hook's work at that time, and so on."""
        hook = self.hook
        assert hook is not None
        next_time = hook.next_time
        fire_next = hook.fire_next
        pop_due = self.timers.event.pop_due
        ctx = self.ctx
        set_clock = self.backend.set_watermark
        current = self.watermark
        fire_until = getattr(hook, "fire_until", None)
        next_timer = self.timers.event.next_time
        while True:
            at = next_time()
            if at is not None and at > watermark:
                at = None
            if at is not None and fire_until is not None:
                # Expiries up to the next timer in one pass; at one time, expiries go first,
                # so that timers see no expired value of a state with on_expire.
                timer_at = next_timer()
                if timer_at is None or timer_at >= at:
                    fire_until(watermark if timer_at is None or timer_at > watermark
                               else timer_at, out, emit)
                    continue
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
        for time, key in self.timers.processing.due(now):
            self._fire(time, key, "processing", out)
            if emit is not None and out:
                self.emitted += len(out)
                for value in out:
                    emit(value, time)
                out.clear()

    # -- compiled pushes -----------------------------------------------------------------------
    def compile(
        self,
        emit: Callable[[Any, Any], None],
        driver: KeyedDriver,
        *,
        input: int = 1,
        key_fn: Callable[[Any], Any] | None = None,
        key_where: str | None = None,
        counts: list[int] | None = None,
        timed: list[float] | None = None,
    ) -> KeyedPush:
        """The push functions of keyed input ``input``: every event the executor, the Kafka
        worker and :class:`~eddies.testing.Harness` hand this operator goes through them.

        ``emit(value, ts)`` receives the outputs; ``key_fn`` reads a record's key (the
        key_by's, which ``key_where`` describes in errors), unless the push is given one.
        ``counts`` (``[in, out]``) and ``timed`` (``[seconds in on_event, events timed]``:
        whole batches, one event in 64 otherwise) are the metrics' cells.
        """
        op = self
        name = self.name
        on_event = self.on_event_of(input)
        on_timer = self._on_timer
        op_count = counts if counts is not None else [0, 0]
        op_time = timed if timed is not None else [0.0, 0]
        stats = driver.stats
        reject = driver.reject
        record_failed = driver.record_failed
        keyget: Callable[[Any], Any]
        keyfn: Callable[[Any], Any]
        if key_fn is None:
            def no_key(value: Any) -> Any:
                raise ConfigError(f"operator {name!r}: a push without a key function needs "
                                  "the key: push(value, ts, key)")
            keyfn = keyget = no_key
        else:
            keyfn = key_fn
            # A field name reads through operator.itemgetter (C, same errors as
            # record[name]); keyfn itself stays for the messages.
            field_name = getattr(keyfn, "field", None)
            keyget = itemgetter(field_name) if field_name is not None else keyfn
        where = key_where or f"operator {name!r} (key function)"
        out: list[Any] = []
        store = self.store
        prefixes = store.cached_prefixes
        ctx = self.ctx
        validate_key = self.validate_key
        extend = out.extend
        append = out.append
        timer_out: list[Any] = []  # timers' outputs, passed on as each one fires
        perf = _time.perf_counter

        def failed(exc: Exception, value: Any, key: Any, ts: Any) -> None:
            out.clear()
            record_failed(exc, value, key, ts, name)

        def push_keyed(value: Any, ts: Any, key: Any = _NO_KEY) -> None:
            op_count[0] += 1
            if key is _NO_KEY:
                try:
                    key = keyget(value)
                except RECORD_ERRORS as exc:
                    reject(value, f"no key for operator {name!r} "
                           f"({getattr(keyfn, '__name__', 'key')}): "
                           f"{type(exc).__name__}: {exc}", name)
                    return
                except Exception as exc:  # a bug in the key function: the job stops
                    raise driver.user_error(name, None, value, ts, exc, where=where) from exc
            if ts is not None and ts <= op.watermark:
                stats.late_events += 1
            if type(key) is str and key.isascii() and not store.groups_pinned:
                # An ASCII str always encodes (an O(1) flag check): no lookup. Handles and
                # timers compute and cache its stored-key prefix when they need it, which
                # gives the same prefix unless key groups are pinned (Kafka: the partition
                # being pushed), when it has to be taken now. State holds it bare (see
                # state_key).
                k = key
                new = False
            else:
                k = state_key(key)
                try:
                    new = k not in prefixes
                except TypeError:  # unhashable: validate_key says what is wrong with it
                    new = True
            try:
                if new:
                    # Validate before user code runs: a key the codec cannot store (a list,
                    # a dict) raises KeyEncodingError and the record goes to dead letters.
                    validate_key(key, k)
                store.key = k
                store.timestamp = ts
                ctx.key = key
                ctx.timestamp = ts
                if op_count[0] & 63:
                    result = on_event(value, ctx)
                else:  # one event in 64 is timed (see ``timed``)
                    started = perf()
                    result = on_event(value, ctx)
                    op_time[0] += perf() - started
                    op_time[1] += 1
                if result is not None:  # emit_into, inlined: this is the per-event cost
                    t = type(result)
                    if t is list or t is tuple or t is GeneratorType:
                        extend(result)
                    else:
                        append(result)
            except Exception as exc:
                failed(exc, value, key, ts)
                return
            if out:
                op_count[1] += len(out)
                for result in out:
                    emit(result, ts)
                out.clear()

        due_at = op.due_watermark

        def respan(j: int, wms: list[int]) -> list[int]:
            """``wms`` raised from ``j`` on to the operator's watermark: an advance took it
            beyond them (another input's watermark moved it)."""
            current = op.watermark
            if current > op.horizon:
                op.horizon = current
            return wms[:j] + list(map(max, repeat(current, len(wms) - j),
                                      islice(wms, j, None)))

        def push_keyed_batch(values: list[Any], stamps: list[int], lo: int,
                             watermarks: list[int] | None = None,
                             advance: Callable[[int], int] | None = None,
                             timing: Any = None) -> int:
            """push_keyed over a batch whose timestamps are checked ints: the keys are read
            in one C-level pass, and when all are ASCII str (no validation needed, see
            push_keyed) the loop does nothing per event but bind the key and the watermark
            and call on_event. ``lo`` is the batch's first index in the source's read, for
            dead letters. ``watermarks``: the operator's watermark for each record (default:
            its watermark now, for all); the TTL clock follows it.

            ``advance(j)``, given when event time moves inside the batch (see
            Executor._push_timed), advances event time to record ``j``'s watermark and
            returns the operator's next due watermark (``due_watermark``): it is called
            before each record whose watermark reaches the operator's next event-time work,
            with the operator at the previous record's watermark. Work registered at a
            watermark the batch reaches raises ``op.cut``, and the next due watermark is
            read again. Once ``timing`` says time went through the whole graph in this push
            (and no key group is pinned), this operator, the only one the source feeds, is
            advanced here directly (see Executor._advance_to); returns the last record
            index that was done for (-1: none)."""
            count = len(values)
            direct_at = -1
            if not count:
                return direct_at
            wms = watermarks if watermarks is not None else [op.watermark] * count
            cut = op.cut
            due = due_at() if advance is not None else NEVER_DUE
            keys: list[Any] = []
            try:
                keys = list(map(keyget, values))
                fast = set(map(type, keys)) == {str} and all(map(str.isascii, keys))
            except Exception:  # push_keyed tells a bad record from a bug, record by record
                fast = False
            if fast and store.groups_pinned:
                # Pinned key groups (Kafka: the partition being pushed): no key is looked
                # up here. A new key takes the group pinned when its prefix is first
                # needed (a store read, a timer), or, written blind, the group of the first
                # batch it came in since the last checkpoint (see defer_prefixes). The group
                # stays the same through the batch (advance() unpins it only while timers
                # fire, and those pin nothing then), so the batch is noted under it.
                store.defer_prefixes(keys)
            if not fast:
                follow = op.follow
                for j in range(count):
                    if wms[j] >= due:
                        due = advance(j)  # type: ignore[misc]
                        if op.watermark > wms[j]:
                            wms = respan(j, wms)
                    driver.cur_index = lo + j
                    follow(wms[j])
                    push_keyed(values[j], stamps[j])
                    if cut.due:
                        cut.due = False
                        due = due_at()
                return direct_at
            clock = op.backend  # the TTL layer: its clock is the watermark
            started = perf()
            emitted = 0  # outputs, a local until the batch ends (cheaper than the cell)
            start = 0
            direct = False  # advance this operator here (see the docstring)
            set_clock = clock.set_watermark
            expiries = isinstance(op.hook, _Expiries)
            emitted_timers = 0
            timers = 0  # advancing (1: directly, 2: through advance()): an error is a timer's
            source = driver.cur_source
            while start < count:
                j = start
                try:
                    for j in range(start, count):
                        watermark = wms[j]
                        if watermark >= due:
                            if j:
                                op.watermark = wms[j - 1]
                            if direct:
                                # Executor._advance_to for this operator alone (the record's
                                # watermark is where the partition's takes it), with
                                # advance_watermark inlined: this runs before nearly every
                                # record when each one's watermark reaches a timer. The TTL
                                # clock is left at the last timer's time: the record sets it
                                # (as after every record, see TtlStateBackend.set_watermark).
                                timers = 1
                                driver.cur_source = None  # records made by timers have none
                                if expiries:  # timers and on_expire calls in time order
                                    self._advance_with_hook(watermark, timer_out, emit)
                                    due = due_at()
                                else:
                                    heap = op.timers.event
                                    current = op.watermark
                                    last = None
                                    for time, key in heap.due(watermark):
                                        if time != last:
                                            last = time
                                            ctx.watermark = (current if current > time
                                                             else time)
                                            set_clock(ctx.watermark)
                                        store.key = key
                                        store.timestamp = time
                                        ctx.key = (key[0] if type(key) is tuple
                                                   and len(key) == 1 else key)
                                        ctx.timestamp = time
                                        result = on_timer(time, ctx)
                                        if result is not None:
                                            t = type(result)
                                            if (t is list or t is tuple
                                                    or t is GeneratorType):
                                                timer_out.extend(result)
                                            else:
                                                timer_out.append(result)
                                            if timer_out:
                                                emitted_timers += len(timer_out)
                                                for item in timer_out:
                                                    emit(item, time)
                                                timer_out.clear()
                                    op.watermark = watermark
                                    # due_watermark, inlined: nothing is due at the
                                    # watermark now.
                                    times = heap.times
                                    at = (times[0] if times and heap.buckets.get(times[0])
                                          else heap.next_time())
                                    due = NEVER_DUE if at is None else at
                                driver.cur_source = source
                                direct_at = j
                                timers = 0
                            else:
                                timers = 2
                                due = advance(j)  # type: ignore[misc]
                                timers = 0
                                direct = (timing is not None and timing.advanced
                                          and not timing.pinned
                                          and (op.hook is None or expiries))
                                if op.watermark > watermark:
                                    wms = respan(j, wms)
                                    watermark = wms[j]
                        key = keys[j]
                        ts = stamps[j]
                        store.key = key
                        store.timestamp = ts
                        ctx.key = key
                        ctx.timestamp = ts
                        ctx.watermark = clock.watermark = watermark
                        result = on_event(values[j], ctx)
                        if result is not None:
                            t = type(result)
                            if t is list or t is tuple or t is GeneratorType:
                                extend(result)
                            else:
                                append(result)
                            if out:
                                driver.cur_index = lo + j  # what follows may dead-letter
                                emitted += len(out)
                                for item in out:
                                    emit(item, ts)
                                out.clear()
                        if cut.due:
                            cut.due = False
                            op.watermark = watermark
                            due = due_at()
                    break
                except Exception as exc:
                    if timers == 1:
                        timer_out.clear()
                        error = driver.timer_error(op, exc)
                        if error is exc:
                            raise
                        raise error from exc
                    if timers:
                        raise
                    driver.cur_index = lo + j
                    failed(exc, values[j], keys[j], stamps[j])
                    if cut.due:
                        cut.due = False
                        op.watermark = wms[j]
                        due = due_at()
                    start = j + 1
            op_count[1] += emitted_timers
            op.watermark = wms[count - 1]
            if min(stamps) <= wms[count - 1]:
                stats.late_events += sum(map(le, stamps, wms))
            op_count[0] += count
            op_count[1] += emitted
            op_time[0] += perf() - started
            op_time[1] += count
            return direct_at

        return KeyedPush(push_keyed, push_keyed_batch)

    def compile_broadcast(
        self, emit: Callable[[Any, Any], None], driver: KeyedDriver,
        counts: list[int] | None = None,
    ) -> Callable[[Any, Any], None]:
        """The push function of the broadcast input (``on_broadcast``, BroadcastState
        writable); as :meth:`compile`."""
        op_count = counts if counts is not None else [0, 0]
        name = self.name
        process_broadcast = self.process_broadcast

        def push_broadcast(value: Any, ts: Any) -> None:
            op_count[0] += 1
            out: list[Any] = []
            try:
                process_broadcast(value, ts, out)
            except Exception as exc:
                raise driver.user_error(name, None, value, ts, exc) from exc
            op_count[1] += len(out)
            for result in out:
                emit(result, ts)

        return push_broadcast
