"""Interval and as-of joins of two keyed streams, built on :class:`KeyedCoProcessFunction`.

``left.interval_join(right, lower=, upper=)`` and ``left.join_asof(right, how=)`` (on
:class:`~eddies.KeyedStream`) build one of these functions; users do not subclass them.
Results depend only on the events and their timestamps, never on how the two inputs
interleave or how they are batched:

- Interval join: every pair with ``left.ts + lower <= right.ts <= left.ts + upper`` (both
  bounds inclusive, as in Flink) is emitted once, with timestamp ``max(left.ts, right.ts)``.
  A pair whose later timestamp is the side that arrived first waits in state until the
  watermark reaches that timestamp; every other pair goes out when its second event arrives.
  Buffered events sit in a MapState by the time they can be dropped (a list of events per
  timestamp and side), and an event-time timer drops them once the watermark makes a match
  impossible: a left event at ``t`` at watermark ``t + upper``, a right one at ``t`` at
  ``t - lower``. No TTL is involved and nothing is left once input ends.
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
  ``{"key": key, "left": left, "right": right}``.

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

__all__ = [
    "AsOfJoinFunction",
    "IntervalJoinFunction",
    "asof_join_function",
    "interval_join_function",
]

_TS_LIMIT = 2**62
END = _TS_LIMIT + 1
"""An event-time timer that fires only at the end of input: timestamps are at most 2**62, so
no watermark reaches it before the final one (as-of: the last right version goes then)."""

Joiner = Callable[[Any, Any], Any]


def _no_time(kind: str) -> ConfigError:
    return ConfigError(f"{kind} needs event time: give both sources timestamp=... "
                       "(a field name or a function returning epoch ms)")


class _Join(KeyedCoProcessFunction):
    """What both joins share: the output shape and late events."""

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


class IntervalJoinFunction(_Join):
    """The interval join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.interval_join` through :func:`interval_join_function`, which
    names its state after the operator.

    State per key: one MapState ``buffer`` keyed by the time its entry is due, the
    watermark at which it goes: ``[lefts, rights, pairs]`` holds the left events at
    ``due - upper``, the right events at ``due + lower`` (each list in arrival order, None
    when empty) and the pairs whose timestamp is ``due``, held for it. One event-time timer
    per entry, at its key, emits the pairs and drops the entry. Both sides' matches for an
    event at ``t`` lie in the entries due in ``[t, t + upper - lower]``: one range read.
    """

    buffer: Any

    def __init__(self, lower: int, upper: int, fn: Joiner | None = None,
                 late: OutputTag | None = None) -> None:
        for what, bound in (("lower", lower), ("upper", upper)):
            if type(bound) is not int or not -_TS_LIMIT < bound < _TS_LIMIT:
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
        lower, upper = self.lower, self.upper
        # This event's entry is due at t + upper (left) or t - lower (right); the other
        # side's events it matches sit in the entries due in [t, t + upper - lower], at
        # their timestamp plus upper (left) or minus lower (right).
        due = t + upper if side == 0 else t - lower
        last = t + upper - lower
        other = 1 - side
        shift = lower if side == 0 else -upper  # from an entry's key to the other's ts
        buffer = self.buffer
        own = None
        out: list[Any] | None = None
        later: list[tuple[int, Any]] | None = None
        for k, entry in buffer.entries(start=min(t, due), end=max(last, due) + 1):
            if k == due:
                own = entry
            matches = entry[other]
            if matches is None or k < t or k > last:
                continue
            ts = k + shift
            if ts <= t:  # the pair's timestamp is this event's: out now
                if out is None:
                    out = []
                out.extend(self._pairs(ctx.key, event, matches, side))
            else:  # the pair's timestamp is the other event's, not reached yet
                if later is None:
                    later = []
                later.append((ts, matches))
        if own is None:
            own = [None, None, None]
            own[side] = [event]
            ctx.timers.register_event_time(due)
        elif own[side] is None:
            own[side] = [event]
        else:
            own[side].append(event)
        buffer.put(due, own)
        if later is not None:
            for ts, matches in later:
                pairs = ([[event, m] for m in matches] if side == 0
                         else [[m, event] for m in matches])
                held = buffer.get(ts)
                if held is None:
                    buffer.put(ts, [None, None, pairs])
                    ctx.timers.register_event_time(ts)
                else:
                    if held[2] is None:
                        held[2] = pairs
                    else:
                        held[2].extend(pairs)
                    buffer.put(ts, held)
        return out

    def _pairs(self, key: Any, event: Any, matches: list[Any], side: int) -> list[Any]:
        fn = self.fn
        if side == 0:
            if fn is None:
                return [{"key": key, "left": event, "right": m} for m in matches]
            return [fn(event, m) for m in matches]
        if fn is None:
            return [{"key": key, "left": m, "right": event} for m in matches]
        return [fn(m, event) for m in matches]

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        buffer = self.buffer
        entry = buffer.get(timestamp)
        if entry is None:
            return None
        buffer.remove(timestamp)
        pairs = entry[2]
        if pairs is None:
            return None
        fn = self.fn
        if fn is None:
            key = ctx.key
            return [{"key": key, "left": a, "right": b} for a, b in pairs]
        return [fn(a, b) for a, b in pairs]


class AsOfJoinFunction(_Join):
    """The as-of join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.join_asof` through :func:`asof_join_function`, which names
    its state after the operator.

    State per key: one MapState ``buffer`` keyed by timestamp, ``[lefts, has_right,
    right]``: the left events waiting at that time (None when none) and the right version
    at it (the last to arrive). One event-time timer per timestamp emits its left events and
    drops the versions before the latest one at or below it; one at the end of input
    (registered when a key's first version is kept) drops the last.
    """

    buffer: Any

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
        buffer = self.buffer
        entry = buffer.get(t)
        if entry is None:
            buffer.put(t, [[event], False, None])
            ctx.timers.register_event_time(t)
        else:
            if entry[0] is None:
                entry[0] = [event]
            else:
                entry[0].append(event)
            buffer.put(t, entry)
        return None

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("join_asof")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        buffer = self.buffer
        entry = buffer.get(t)
        if entry is None:
            buffer.put(t, [None, True, event])
            # Older versions go once the watermark reaches t.
            ctx.timers.register_event_time(t)
        else:
            entry[1] = True
            entry[2] = event
            buffer.put(t, entry)
        return None

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        buffer = self.buffer
        if timestamp == END:
            buffer.clear()
            return None
        # At or below the watermark there is this timer's entry and, before it, at most the
        # one kept version (every other entry went at its own, earlier, timer).
        newest = list(buffer.entries(end=timestamp + 1, reverse=True, limit=2))
        if not newest or newest[0][0] != timestamp:
            return None
        entry = newest[0][1]
        lefts = entry[0]
        older = newest[1] if len(newest) > 1 else None
        if entry[1]:  # a version at this time: it is the latest; the older one goes
            match, found = entry[2], True
            if older is not None:
                buffer.remove(older[0])
            else:  # the key's first kept version: it goes at the end of input
                ctx.timers.register_event_time(END)
            if lefts is not None:
                buffer.put(timestamp, [None, True, match])
        else:
            buffer.remove(timestamp)
            found, match = False, None
            if older is not None and older[1][1]:
                found, match = True, older[1][2]
        if lefts is None or not (found or self.how == "left"):
            return None
        fn = self.fn
        if fn is None:
            key = ctx.key
            return [{"key": key, "left": a, "right": match} for a in lefts]
        return [fn(a, match) for a in lefts]


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
