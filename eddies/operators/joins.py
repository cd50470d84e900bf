"""Interval and as-of joins of two keyed streams, built on :class:`KeyedCoProcessFunction`.

``left.interval_join(right, lower=, upper=)`` and ``left.join_asof(right, how=)`` (on
:class:`~eddies.KeyedStream`) build one of these functions; users do not subclass them.
Results depend only on the events and their timestamps, never on how the two inputs
interleave or how they are batched:

- Interval join: every pair with ``left.ts + lower <= right.ts <= left.ts + upper`` (both
  bounds inclusive, as in Flink) is emitted once, with timestamp ``max(left.ts, right.ts)``.
  A pair whose later timestamp is the side that arrived first waits in state until the
  watermark reaches that timestamp; every other pair goes out when its second event arrives.
  Buffered events sit in a MapState, one entry each, by side and the time they can be
  dropped, and an event-time timer drops them once the watermark makes a match impossible:
  a left event at ``t`` at watermark ``t + upper``, a right one at ``t`` at ``t - lower``.
  No TTL is involved and nothing is left once input ends.
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
  buffers stayed cached or were read back. An event the state cannot hold (a set, a datetime) goes
  to dead letters before anything is buffered, leaving the others at its key and time as
  they were.

>>> import eddies as ed
>>> h = ed.testing.Harness(interval_join_function("ij", lower=-5, upper=5))
>>> h.event({"imp": 1}, key="ad", timestamp=100)
[]
>>> h.event({"click": 1}, key="ad", timestamp=103, input=2)
[{'key': 'ad', 'left': {'imp': 1}, 'right': {'click': 1}}]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from eddies.errors import ConfigError
from eddies.operators.functions import Context, KeyedCoProcessFunction, OutputTag
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
"""An event-time timer that fires only at the end of input: timestamps are at most 2**62, so
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


def _next_seq(buffer: Any, base: int) -> int:
    """The first free sequence number of the entries keyed ``base + seq``. They are
    numbered from 0 in arrival order and dropped together, so the numbers in use are
    ``0..n-1``: found with a few lookups (doubling, then bisecting), never a read of them
    all."""
    contains = buffer.contains
    if not contains(base):
        return 0
    lo, hi = 0, 1  # lo in use; hi: the first known free one once the doubling stops
    while contains(base + hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if contains(base + mid):
            lo = mid
        else:
            hi = mid
    return hi


def _take(buffer: Any, base: int) -> list[Any]:
    """Remove the entries keyed ``base + seq``; returns their values in arrival order."""
    get, remove = buffer.get, buffer.remove
    out: list[Any] = []
    k = base
    while True:
        v = get(k)
        if v is None:
            return out
        remove(k)
        out.append(v)
        k += 1


class _Join(KeyedCoProcessFunction):
    """What both joins share: the output shape, late events, and events kept as bytes."""

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

    def _key(self) -> Any:
        """The current key as the state holds it, the same whichever input or timer is
        handled (keys equal in Python are one key: ``1.0`` and ``True`` come out as ``1``)."""
        key = self.buffer.store.key
        return key[0] if type(key) is tuple and len(key) == 1 else key

    def _results(self, lefts: list[bytes], right: bytes | None) -> list[Any]:
        """One result per left event, each with copies of its own (nothing shared with the
        buffers, the inputs or another result)."""
        fn = self.fn
        if right is None:
            if fn is None:
                key = self._key()
                return [{"key": key, "left": unpack(a), "right": None} for a in lefts]
            return [fn(unpack(a), None) for a in lefts]
        if fn is None:
            key = self._key()
            return [{"key": key, "left": unpack(a), "right": unpack(right)} for a in lefts]
        return [fn(unpack(a), unpack(right)) for a in lefts]

    def _pairs(self, pairs: list[tuple[bytes, bytes]]) -> list[Any]:
        fn = self.fn
        if fn is None:
            key = self._key()
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
    entries of one ``(side, due)`` in arrival order. One event-time timer per ``due`` emits
    its pairs and drops its entries. An event at ``t`` finds its matches in the other
    side's entries due in ``[t, t + upper - lower]``, contiguous by the key order:
    one range read as wide as the interval.
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
        due = t - lower if side else t + upper
        other = 1 - side
        shift = -upper if side else lower  # from an entry's due to its event's timestamp
        buffer = self.buffer
        now: list[bytes] | None = None
        later: dict[int, list[bytes]] | None = None
        for k, m in buffer.entries(start=interval_key(other, t),
                                   end=interval_key(other, t + upper - lower + 1)):
            ts = ((k >> _SEQ_BITS) & _TIME_MASK) - _OFFSET + shift
            if ts <= t:  # the pair's timestamp is this event's: out now
                if now is None:
                    now = [m]
                else:
                    now.append(m)
            else:  # the pair's timestamp is the other event's, not reached yet
                if later is None:
                    later = {}
                held = later.get(ts)
                if held is None:
                    later[ts] = [m]
                else:
                    held.append(m)
        base = interval_key(side, due)
        seq = _next_seq(buffer, base)
        buffer.put(base + seq, data)
        if seq == 0:
            ctx.timers.register_event_time(due)
        if later is not None:
            for ts, ms in later.items():
                base = interval_key(_PAIR, ts)
                seq = _next_seq(buffer, base)
                if seq == 0:
                    ctx.timers.register_event_time(ts)
                for m in ms:
                    buffer.put(base + seq, [m, data] if side else [data, m])
                    seq += 1
        if now is None:
            return None
        if side:
            return self._pairs([(m, data) for m in now])
        return self._pairs([(data, m) for m in now])

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        buffer = self.buffer
        bases = [interval_key(side, timestamp) for side in (0, 1, _PAIR)]
        pairs = None
        # One lookup per side (a timer's due usually holds one event of one side).
        for base, first in zip(bases, buffer.get_many(bases), strict=True):
            if first is not None:
                buffer.remove(base)
                more = _take(buffer, base + 1)
                if base == bases[2]:
                    pairs = [first, *more]
        return None if pairs is None else self._pairs(pairs)


class AsOfJoinFunction(_Join):
    """The as-of join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.join_asof` through :func:`asof_join_function`, which names
    its state after the operator.

    State per key: one MapState ``buffer`` (keys packed in one int: :func:`asof_key`): the
    left events waiting at ``t`` under ``(t, 0, seq)`` (numbered in arrival order) and the
    right version at ``t`` under ``(t, 1)`` (the last to arrive), so that one reverse range
    read from ``t`` finds a timer's left events, its version and the version kept from
    before. One event-time timer per timestamp emits its left events and drops the versions
    before the latest one at or below it; one at the end of
    input (registered when a key's first version is kept) drops the last.
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
        base = asof_key(t, 0)
        seq = _next_seq(buffer, base)
        buffer.put(base + seq, data)
        if seq == 0:
            ctx.timers.register_event_time(t)
        return None

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("join_asof")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        self.buffer.put(asof_key(t, 1), self._encode(event, "right"))
        # Older versions go once the watermark reaches t.
        ctx.timers.register_event_time(t)
        return None

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        buffer = self.buffer
        if timestamp == END:
            buffer.clear()
            return None
        # At or below the watermark there are this timer's entries and, before them, at most
        # the one kept version (every other entry went at its own, earlier, timer).
        lefts: list[Any] = []  # keys and values, newest first
        version = older = None
        lowest = asof_key(timestamp, 0)
        for k, v in buffer.entries(end=asof_key(timestamp + 1, 0), reverse=True):
            if k < lowest:
                older = k, v
                break
            if k & (1 << _SEQ_BITS):
                version = v
            else:
                lefts.append(k)
                lefts.append(v)
        if version is not None:  # a version at this time: it is the latest; the older goes
            match = version
            if older is not None:
                buffer.remove(older[0])
            else:  # the key's first kept version: it goes at the end of input
                ctx.timers.register_event_time(END)
        else:
            match = None if older is None else older[1]
        if not lefts:
            return None
        for k in lefts[::2]:
            buffer.remove(k)
        if match is None and self.how == "inner":
            return None
        return self._results(lefts[-1::-2], match)


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
