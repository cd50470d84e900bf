"""Interval and as-of joins of two keyed streams, built on :class:`KeyedCoProcessFunction`.

``left.interval_join(right, lower=, upper=)`` and ``left.join_asof(right, how=)`` (on
:class:`~eddies.KeyedStream`) build one of these functions; users do not subclass them.
Results depend only on the events and their timestamps, never on how the two inputs
interleave or how they are batched, for events within their source's bound (an event
beyond it may find the other input's watermark already past it, or not yet: see below):

- Interval join: every pair with ``left.ts + lower <= right.ts <= left.ts + upper`` (both
  bounds inclusive, as in Flink) is emitted once, with timestamp ``max(left.ts, right.ts)``.
  A pair whose later timestamp is the side that arrived first waits in state until the
  watermark reaches that timestamp; every other pair goes out when its second event arrives.
  Buffered events sit in a MapState, one entry each, by side and the time they can be
  dropped, and go once the watermark makes a match impossible: a left event at ``t`` at
  watermark ``t + upper``, a right one at ``t`` at ``t - lower``. No TTL is involved and
  nothing is left once input ends.
- As-of join: a left event at ``t`` is joined with the right event of its key with the
  greatest timestamp ``<= t`` (several at that timestamp: the last in the right input's
  order), once the watermark reaches ``t``, so a right version that arrives after the left
  event but before the watermark passes ``t`` is used. ``how="left"`` also emits left events
  with no right version, with ``right`` = None. Of the right versions at or below the
  watermark only the latest is kept (no later left event can use an older one); at the end of
  input it goes too.
- An event at or below the operator's watermark (the minimum of the two inputs') is late:
  it goes, as it is, to the ``late`` side output, or is dropped and counted in
  ``RunStats.late_dropped``. A result is ``fn(left, right)``, or by default
  ``{"key": key, "left": left, "right": right}``, ``key`` as the state holds it (keys equal
  in Python are one key: ``1``, ``1.0`` and ``True`` come out as ``1``), whichever input
  came last.
- Buffers hold each event as its msgpack bytes, and every result gets copies decoded for it
  alone (as Flink copies records between operators; tuples in an event come out as lists,
  as state gives values back, whichever input came first): what ``fn`` or a later operator
  does to a result never shows in another one, and results are the same whether the
  buffers stayed cached or were read back. An event the state cannot hold (a set, a
  datetime) goes to dead letters before anything is buffered, leaving the others at its key
  and time as they were.
- No timer per key: the buffer is a :class:`~eddies.state.buffers.JoinBuffers`, which holds
  the entries in memory by key and indexes them by the time they are due; the operator
  takes the due times in order as the watermark passes, across keys, as windows fire. A
  checkpoint writes the entries added since the last one and deletes the stored ones
  dropped since: an entry that comes and goes between two checkpoints never reaches the
  backend. A restore rebuilds the index with one scan of the buffer's key groups.

>>> import eddies as ed
>>> h = ed.testing.Harness(interval_join_function("ij", lower=-5, upper=5))
>>> h.event({"imp": 1}, key="ad", timestamp=100)
[]
>>> h.event({"click": 1}, key="ad", timestamp=103, input=2)
[{'key': 'ad', 'left': {'imp': 1}, 'right': {'click': 1}}]
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from eddies.errors import ConfigError
from eddies.operators.functions import Context, KeyedCoProcessFunction, OutputTag
from eddies.state.buffers import Held, JoinBuffers
from eddies.state.descriptors import MapState
from eddies.state.store import check_value
from eddies.state.values import pack, unpack

__all__ = [
    "AsOfJoinFunction",
    "IntervalJoinFunction",
    "asof_join_function",
    "interval_join_function",
]

TS_LIMIT = 2**62
"""Timestamps must lie within +-2**62 ms: watermarks, timer keys and TTL stamps are int64
(the runtime dead-letters records beyond it)."""
END = TS_LIMIT + 1
"""A due time reached only at the end of input: timestamps are at most 2**62, so
no watermark reaches it before the final one (as-of: the last right version goes then)."""

_PAIR = 2
"""The side number of a held pair's entries (0 and 1 are the left and right events')."""

Joiner = Callable[[Any, Any], Any]

# Map keys: one int per entry (an int encodes in one element, several times cheaper than a
# tuple of three, and this is the hot path), sorting as the tuple it packs:
#
#   interval: side (2 bits) | due + 2**64 (66 bits) | seq (32 bits)
#   as-of:    time + 2**64 (66 bits) | kind (1 bit: 0 left event, 1 right version) | seq (32)
#
# ``seq`` numbers the entries of one (side, due) or one time in arrival order; a time is
# within +-2**63 (timestamps within +-TS_LIMIT, bounds below it), so ``+ 2**64`` is positive.
_SEQ_BITS = 32
_OFFSET = 2**64
_TIME_MASK = 2**66 - 1


def interval_key(side: int, due: int, seq: int = 0) -> int:
    """The interval join's map key of an entry (see the layout above).

    >>> interval_key(1, 110, 2) < interval_key(1, 111) < interval_key(2, -(2**63))
    True
    >>> split_interval_key(interval_key(1, -110, 2))
    (1, -110, 2)
    """
    return (side << 98) | ((due + _OFFSET) << _SEQ_BITS) | seq


def split_interval_key(key: int) -> tuple[int, int, int]:
    """``(side, due, seq)`` of an interval join's map key."""
    return key >> 98, ((key >> _SEQ_BITS) & _TIME_MASK) - _OFFSET, key & 0xFFFFFFFF


def asof_key(t: int, kind: int, seq: int = 0) -> int:
    """The as-of join's map key of an entry: kind 0 a left event, 1 the right version.

    >>> split_asof_key(asof_key(-5, 1)), asof_key(7, 0, 3) < asof_key(7, 1) < asof_key(8, 0)
    ((-5, 1, 0), True)
    """
    return ((t + _OFFSET) << (_SEQ_BITS + 1)) | (kind << _SEQ_BITS) | seq


def split_asof_key(key: int) -> tuple[int, int, int]:
    """``(time, kind, seq)`` of an as-of join's map key."""
    return ((key >> (_SEQ_BITS + 1)) - _OFFSET, (key >> _SEQ_BITS) & 1,
            key & 0xFFFFFFFF)


def _no_time(kind: str) -> ConfigError:
    return ConfigError(f"{kind} needs event time: give both sources timestamp=... "
                       "(a field name or a function returning epoch ms)")


_SEQ = 1 << _SEQ_BITS
_VERSION = 1 << _SEQ_BITS  # the kind bit of an as-of right version's key
_AFTER = _OFFSET + 1  # asof_key(t + 1, 0) == (t + _AFTER) << 33


def _public(key: Any) -> Any:
    """A state key as results carry it (keys equal in Python are one key: ``1.0`` and
    ``True`` come out as ``1``), whichever input or time is handled."""
    return key[0] if type(key) is tuple and len(key) == 1 else key


class _Join(KeyedCoProcessFunction):
    """What both joins share: the output shape, late events, events kept as bytes, and the
    buffers (a :class:`~eddies.state.buffers.JoinBuffers` in place of the declared MapState
    once an operator runs the function), whose due times the operator takes in time order
    as the watermark passes (this function is its ``EventTimeHook``): no timer per key."""

    buffer: Any

    def __init__(self, fn: Joiner | None, late: OutputTag | None) -> None:
        if fn is not None and not callable(fn):
            raise ConfigError(f"join fn must be a function fn(left, right), got {fn!r}")
        if late is not None and not isinstance(late, OutputTag):
            raise ConfigError(f"late must be an eddies.OutputTag, got {late!r}")
        self.fn = fn
        self.late_tag = late
        self.late_dropped = 0
        """Late events dropped (no ``late`` tag); the runtime adds them to its counters."""
        self._op: Any = None

    def attach_operator(self, op: Any) -> None:
        """Called by the KeyedOperator that runs this function, with its state bound: the
        buffer becomes a JoinBuffers, which the operator drains as the watermark passes
        (``op.add_event_time_hook``)."""
        handle = self.buffer
        state = JoinBuffers(op.store, handle.descriptor)
        state.note_due = op.note_event_time
        state.on_load = self._index_loaded
        op.add_event_time_hook(self, handle=state, loader=state.load)
        self.buffer = state
        self._op = op

    # -- EventTimeHook -------------------------------------------------------------------------
    def next_time(self) -> int | None:
        """The earliest time an entry is due, or None."""
        return self.buffer.next_time()  # type: ignore[no-any-return]

    def fire_next(self, time: int, out: list[Any]) -> None:
        """Emit and drop what is due at ``time`` (== ``next_time()``)."""
        due = self.buffer.pop_due(time)
        if due is not None:
            out.extend(self._fire(*due))

    def fire_until(self, limit: int, out: list[Any],
                   emit: Callable[[Any, int], None] | None) -> None:
        """Every due time at or before ``limit`` in order, in one pass; each one's results
        go to ``emit(value, time)`` (to ``out`` without ``emit``)."""
        pop_due = self.buffer.pop_due
        fire = self._fire
        emitted = 0
        while (due := pop_due(limit)) is not None:
            results = fire(*due)
            if results:
                if emit is None:
                    out.extend(results)
                else:
                    emitted += len(results)
                    time = due[0]
                    for value in results:
                        emit(value, time)
        if emitted:
            self._op.emitted += emitted

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        """Nothing: the buffers' due times are the operator's event-time hook."""
        return None

    def _fire(self, time: int, items: list[Any]) -> list[Any]:
        """Do what is due at ``time`` for ``items`` (as the join indexed them); results."""
        raise NotImplementedError

    def _index_loaded(self, held: Held, mk: int) -> None:
        """Index the entry ``mk`` of ``held`` read back from the backend (a restore)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def _late(self, event: Any, ctx: Context) -> None:
        if self.late_tag is not None:
            ctx.output(self.late_tag, event)
        else:
            self.late_dropped += 1

    def _encode(self, event: Any, side: str) -> bytes:
        """``event`` as the msgpack bytes its buffer holds. An event state cannot hold raises
        :class:`~eddies.errors.StateSerializationError` here, before any state changed: the
        record goes to dead letters and the others at its key and time are untouched."""
        try:
            return pack(event)  # type: ignore[no-any-return]
        except (TypeError, ValueError, OverflowError):
            buffer = self.buffer
            check_value(event, lambda: f"{buffer.store.where(buffer.descriptor)}, {side} event")
            raise

    def _results(self, key: Any, lefts: list[bytes], right: bytes | None) -> list[Any]:
        """One result per left event, each with copies of its own (nothing shared with the
        buffers, the inputs or another result)."""
        fn = self.fn
        if right is None:
            if fn is None:
                key = _public(key)
                return [{"key": key, "left": unpack(a), "right": None} for a in lefts]
            return [fn(unpack(a), None) for a in lefts]
        if fn is None:
            key = _public(key)
            return [{"key": key, "left": unpack(a), "right": unpack(right)} for a in lefts]
        return [fn(unpack(a), unpack(right)) for a in lefts]

    def _pairs(self, key: Any, pairs: list[tuple[bytes, bytes]]) -> list[Any]:
        fn = self.fn
        if fn is None:
            key = _public(key)
            return [{"key": key, "left": unpack(a), "right": unpack(b)} for a, b in pairs]
        return [fn(unpack(a), unpack(b)) for a, b in pairs]


class IntervalJoinFunction(_Join):
    """The interval join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.interval_join` through :func:`interval_join_function`, which
    names its state after the operator.

    State per key: one MapState ``buffer`` keyed by ``(side, due, seq)`` (packed in one
    int: :func:`interval_key`), ``due`` being the watermark at which the entry goes: a left
    event at ``t`` (side 0) is due at ``t + upper``, a right one (side 1) at ``t - lower``,
    a held pair (side 2, the two events' bytes) at its timestamp; ``seq`` numbers the
    entries of one ``(side, due)`` in arrival order. Each entry is indexed at its due time
    (see :class:`_Join`): a pair goes out then, every entry is dropped then. An event at
    ``t`` finds its matches in the other side's entries due in ``[t, t + upper - lower]``,
    contiguous by the key order: one range of the key's sorted map keys, as wide as the
    interval.
    """

    def __init__(self, lower: int, upper: int, fn: Joiner | None = None,
                 late: OutputTag | None = None) -> None:
        for what, bound in (("lower", lower), ("upper", upper)):
            if type(bound) is not int or not -TS_LIMIT < bound < TS_LIMIT:
                raise ConfigError(f"interval_join: {what} must be an int of ms, got {bound!r}")
        if lower > upper:
            raise ConfigError(f"interval_join: lower={lower} is above upper={upper}; a right "
                              "event matches when left.ts + lower <= right.ts <= left.ts + upper")
        super().__init__(fn, late)
        self.lower = lower
        self.upper = upper

    def on_event1(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        return self._on_event(event, ctx, 0)

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        return self._on_event(event, ctx, 1)

    def _on_event(self, event: Any, ctx: Context, side: int) -> list[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("interval_join")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        data = self._encode(event, "right" if side else "left")
        lower, upper = self.lower, self.upper
        buffer = self.buffer
        key = buffer.store.key
        held = buffer.held.get(key)
        if held is None:  # nothing to match: the event is the key's one entry
            due = t - lower if side else t + upper
            mk = (side << 98) | ((due + _OFFSET) << _SEQ_BITS)
            held = buffer.new(key)
            buffer.insert(held, 0, mk, data)
            buffer.at(due, (held, mk))
            return None
        mks = held.mks
        now: list[bytes] | None = None
        later: dict[int, list[bytes]] | None = None
        other = (1 - side) << 98
        i = bisect_left(mks, other | ((t + _OFFSET) << _SEQ_BITS))
        j = bisect_left(mks, other | ((t + upper - lower + 1 + _OFFSET) << _SEQ_BITS), i)
        if i < j:
            shift = (-upper if side else lower) - _OFFSET  # from an entry's due to its ts
            vals = held.vals
            for x in range(i, j):
                m = vals[x]
                ts = ((mks[x] >> _SEQ_BITS) & _TIME_MASK) + shift
                if ts <= t:  # the pair's timestamp is this event's: out now
                    if now is None:
                        now = [m]
                    else:
                        now.append(m)
                else:  # the pair's timestamp is the other event's, not reached yet
                    if later is None:
                        later = {}
                    waiting = later.get(ts)
                    if waiting is None:
                        later[ts] = [m]
                    else:
                        waiting.append(m)
        due = t - lower if side else t + upper
        base = (side << 98) | ((due + _OFFSET) << _SEQ_BITS)
        i = bisect_left(mks, base)
        j = bisect_left(mks, base + _SEQ, i) if i < len(mks) else i
        mk = base + j - i  # entries of one (side, due) are numbered 0..n-1 in arrival order
        buffer.insert(held, j, mk, data)
        buffer.at(due, (held, mk))
        if later is not None:
            for ts, ms in later.items():
                base = (_PAIR << 98) | ((ts + _OFFSET) << _SEQ_BITS)
                i = bisect_left(mks, base)
                j = bisect_left(mks, base + _SEQ, i) if i < len(mks) else i
                mk = base + j - i
                for m in ms:
                    buffer.insert(held, j, mk, [m, data] if side else [data, m])
                    buffer.at(ts, (held, mk))
                    mk += 1
                    j += 1
        if now is None:
            return None
        if side:
            return self._pairs(key, [(m, data) for m in now])
        return self._pairs(key, [(data, m) for m in now])

    def _fire(self, time: int, items: list[Any]) -> list[Any]:
        """Drop the entries due at ``time``; the held pairs among them go out."""
        remove = self.buffer.remove
        out: list[Any] | None = None
        for held, mk in items:
            value = remove(held, mk)
            if value is not None and mk >> 98 == _PAIR:
                results = self._pairs(held.key, [value])
                if out is None:
                    out = results
                else:
                    out += results
        return out or []

    def _index_loaded(self, held: Held, mk: int) -> None:
        self.buffer.at(((mk >> _SEQ_BITS) & _TIME_MASK) - _OFFSET, (held, mk))


class AsOfJoinFunction(_Join):
    """The as-of join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.join_asof` through :func:`asof_join_function`, which names
    its state after the operator.

    State per key: one MapState ``buffer`` (keys packed in one int: :func:`asof_key`): the
    left events waiting at ``t`` under ``(t, 0, seq)`` (numbered in arrival order) and the
    right version at ``t`` under ``(t, 1)`` (the last to arrive), so that the key's sorted
    map keys just below ``(t + 1, 0)`` hold a due time's left events, its version and the
    version kept from before. The key is indexed (see :class:`_Join`) at each time it has
    entries: its left events there go out and the versions before the latest one at or
    below it are dropped; and at the end of input once it keeps a version, which goes then.
    """

    def __init__(self, how: str = "inner", fn: Joiner | None = None,
                 late: OutputTag | None = None) -> None:
        if how not in ("inner", "left"):
            raise ConfigError(f'join_asof: how must be "inner" or "left", got {how!r}')
        super().__init__(fn, late)
        self.how = how

    def on_event1(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("join_asof")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        data = self._encode(event, "left")
        buffer = self.buffer
        key = buffer.store.key
        base = (t + _OFFSET) << (_SEQ_BITS + 1)
        held = buffer.held.get(key)
        if held is None:
            held = buffer.new(key)
            buffer.insert(held, 0, base, data)
            buffer.at(t, held)  # the key's first entry at t
            return None
        mks = held.mks
        i = bisect_left(mks, base)
        if i == len(mks) or mks[i] > base | _VERSION:
            buffer.at(t, held)  # the key's first entry at t
            j = i
        else:  # entries at t (left events, the version): indexed already
            j = bisect_left(mks, base | _VERSION, i)
        buffer.insert(held, j, base + j - i, data)  # left events numbered in arrival order
        return None

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("join_asof")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        data = self._encode(event, "right")
        buffer = self.buffer
        key = buffer.store.key
        base = (t + _OFFSET) << (_SEQ_BITS + 1)
        vkey = base | _VERSION
        held = buffer.held.get(key)
        if held is None:
            held = buffer.new(key)
            i = 0
        else:
            mks = held.mks
            i = bisect_left(mks, base)
            if i < len(mks) and mks[i] <= vkey:  # entries at t: indexed already
                j = bisect_left(mks, vkey, i)
                if j < len(mks) and mks[j] == vkey:  # the version at t: this one replaces it
                    buffer.replace(held, j, data)
                else:
                    buffer.insert(held, j, vkey, data)
                return None
        buffer.at(t, held)  # the key's first entry at t
        buffer.insert(held, i, vkey, data)
        return None

    def _fire(self, time: int, items: list[Held]) -> list[Any]:
        buffer = self.buffer
        remove_at = buffer.remove_at
        out: list[Any] = []
        if time == END:  # no left event can come: the kept versions go
            for held in items:
                mks = held.mks
                while mks:
                    remove_at(held, len(mks) - 1)
            return out
        lowest = (time + _OFFSET) << (_SEQ_BITS + 1)
        vkey = lowest | _VERSION
        inner = self.how == "inner"
        for held in items:
            mks = held.mks
            # At or below the time there are its entries and, before them, at most the one
            # kept version (every other entry went at its own, earlier, time).
            i = bisect_left(mks, lowest)
            j = bisect_left(mks, vkey, i)
            vals = held.vals
            lefts = vals[i:j]
            if j < len(mks) and mks[j] == vkey:  # a version at this time: the latest
                match = vals[j]
                if i:  # the older one goes
                    remove_at(held, i - 1)
                    i -= 1
                else:  # the key's first kept version: it goes at the end of input
                    buffer.at(END, held)
            else:
                match = vals[i - 1] if i else None
            if not lefts:
                continue
            for _ in lefts:
                remove_at(held, i)
            if match is None and inner:
                continue
            out += self._results(held.key, lefts, match)
        return out

    def _index_loaded(self, held: Held, mk: int) -> None:
        t = (mk >> (_SEQ_BITS + 1)) - _OFFSET
        if mk & _VERSION:
            self.buffer.at(END, held)  # a kept version goes at the end of input
            mks = held.mks
            i = bisect_left(mks, mk ^ _VERSION)
            if mks[i] != mk:
                return  # indexed with its left events
        elif mk & 0xFFFFFFFF:
            return  # indexed with the first at its time
        self.buffer.at(t, held)


def interval_join_function(name: str, lower: int, upper: int, fn: Joiner | None = None,
                           late: OutputTag | None = None) -> IntervalJoinFunction:
    """An :class:`IntervalJoinFunction` whose state is named after operator ``name``
    (``<name>.buffer``)."""
    cls = type("IntervalJoinFunction", (IntervalJoinFunction,),
               {"buffer": MapState(f"{name}.buffer")})
    return cls(lower, upper, fn, late)


def asof_join_function(name: str, how: str = "inner", fn: Joiner | None = None,
                       late: OutputTag | None = None) -> AsOfJoinFunction:
    """An :class:`AsOfJoinFunction` whose state is named after operator ``name``
    (``<name>.buffer``).

    >>> import eddies as ed
    >>> h = ed.testing.Harness(asof_join_function("prices", how="left"))
    >>> h.event(5.0, key="X", timestamp=100, input=2)
    []
    >>> h.event("buy", key="X", timestamp=150), h.event(6.0, key="X", timestamp=140, input=2)
    ([], [])
    >>> h.event("sell", key="Y", timestamp=160)
    []
    >>> h.watermark(160)
    [{'key': 'X', 'left': 'buy', 'right': 6.0}, {'key': 'Y', 'left': 'sell', 'right': None}]
    """
    cls = type("AsOfJoinFunction", (AsOfJoinFunction,),
               {"buffer": MapState(f"{name}.buffer")})
    return cls(how, fn, late)
