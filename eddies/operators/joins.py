"""Interval and as-of joins of two keyed streams, built on :class:`KeyedCoProcessFunction`.

``left.interval_join(right, lower=, upper=)`` and ``left.join_asof(right, how=)`` (on
:class:`~eddies.KeyedStream`) build one of these functions; users do not subclass them.
Results depend only on the events and their timestamps, never on how the two inputs
interleave or how they are batched:

- Interval join: every pair with ``left.ts + lower <= right.ts <= left.ts + upper`` (both
  bounds inclusive, as in Flink) is emitted once, with timestamp ``max(left.ts, right.ts)``.
  A pair whose later timestamp is the side that arrived first waits in state until the
  watermark reaches that timestamp; every other pair goes out when its second event arrives.
  Each side's buffer is a MapState by timestamp (a list of events per timestamp), dropped by
  an event-time timer once the watermark makes a match impossible: a left entry at ``t`` at
  watermark ``t + upper``, a right entry at ``t`` at ``t - lower``. No TTL is involved and
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
    names its states after the operator.

    State per key: ``left`` and ``right`` map a timestamp to the list of that side's events
    at it; ``pending`` maps a timestamp to the pairs that go out when the watermark reaches it.
    """

    left: Any
    right: Any
    pending: Any

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
        t = ctx.timestamp
        if t is None:
            raise _no_time("interval_join")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        left = self.left
        bucket = left.get(t)
        if bucket is None:
            left.put(t, [event])
            ctx.timers.register_event_time(t + self.upper)
        else:
            bucket.append(event)
            left.put(t, bucket)
        out = None
        for rt, rights in self.right.entries(start=t + self.lower, end=t + self.upper + 1):
            if rt <= t:
                if out is None:
                    out = []
                fn = self.fn
                if fn is None:
                    key = ctx.key
                    out.extend([{"key": key, "left": event, "right": r} for r in rights])
                else:
                    out.extend([fn(event, r) for r in rights])
            else:
                self._defer(rt, [[event, r] for r in rights], ctx)
        return out

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("interval_join")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        right = self.right
        bucket = right.get(t)
        if bucket is None:
            right.put(t, [event])
            ctx.timers.register_event_time(t - self.lower)
        else:
            bucket.append(event)
            right.put(t, bucket)
        out = None
        for lt, lefts in self.left.entries(start=t - self.upper, end=t - self.lower + 1):
            if lt <= t:
                if out is None:
                    out = []
                fn = self.fn
                if fn is None:
                    key = ctx.key
                    out.extend([{"key": key, "left": a, "right": event} for a in lefts])
                else:
                    out.extend([fn(a, event) for a in lefts])
            else:
                self._defer(lt, [[a, event] for a in lefts], ctx)
        return out

    def _defer(self, at: int, pairs: list[list[Any]], ctx: Context) -> None:
        """Hold ``pairs`` until the watermark reaches ``at``, their timestamp."""
        pending = self.pending
        held = pending.get(at)
        if held is None:
            pending.put(at, pairs)
            ctx.timers.register_event_time(at)
        else:
            held.extend(pairs)
            pending.put(at, held)

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        out = None
        held = self.pending.get(timestamp)
        if held is not None:
            self.pending.remove(timestamp)
            fn = self.fn
            if fn is None:
                key = ctx.key
                out = [{"key": key, "left": a, "right": b} for a, b in held]
            else:
                out = [fn(a, b) for a, b in held]
        # Entries no event still to come can match: left at t once the watermark reaches
        # t + upper, right at t once it reaches t - lower.
        for side, end in ((self.left, timestamp - self.upper + 1),
                          (self.right, timestamp + self.lower + 1)):
            gone = [t for t, _ in side.entries(end=end)]
            for t in gone:
                side.remove(t)
        return out


class AsOfJoinFunction(_Join):
    """The as-of join's operator function (see the module docstring); built by
    :meth:`~eddies.KeyedStream.join_asof` through :func:`asof_join_function`, which names
    its states after the operator.

    State per key: ``left`` maps a timestamp to the left events waiting at it; ``right``
    maps a timestamp to the right version at it (the last one to arrive).
    """

    left: Any
    right: Any

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
        left = self.left
        bucket = left.get(t)
        if bucket is None:
            left.put(t, [event])
            ctx.timers.register_event_time(t)
        else:
            bucket.append(event)
            left.put(t, bucket)
        return None

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        t = ctx.timestamp
        if t is None:
            raise _no_time("join_asof")
        if t <= ctx.watermark:
            self._late(event, ctx)
            return None
        self.right.put(t, event)
        timers = ctx.timers
        timers.register_event_time(t)  # older versions go once the watermark reaches t
        timers.register_event_time(END)
        return None

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        right = self.right
        if timestamp == END:
            right.clear()
            return None
        # The latest version at or below the watermark stays; no later left event can use
        # an older one.
        versions = list(right.entries(end=timestamp + 1, reverse=True, limit=2))
        if len(versions) > 1:
            for t in list(right.keys(end=versions[0][0])):
                right.remove(t)
        lefts = self.left.get(timestamp)
        if lefts is None:
            return None
        self.left.remove(timestamp)
        if versions:
            match = versions[0][1]
        elif self.how == "inner":
            return None
        else:
            match = None
        fn = self.fn
        if fn is None:
            key = ctx.key
            return [{"key": key, "left": a, "right": match} for a in lefts]
        return [fn(a, match) for a in lefts]


def interval_join_function(name: str, lower: int, upper: int, fn: Joiner | None = None,
                           late: OutputTag | None = None) -> IntervalJoinFunction:
    """An :class:`IntervalJoinFunction` whose states are named after operator ``name``
    (``<name>.left``, ``<name>.right``, ``<name>.pending``)."""
    cls = type("IntervalJoinFunction", (IntervalJoinFunction,), {
        "left": MapState(f"{name}.left"), "right": MapState(f"{name}.right"),
        "pending": MapState(f"{name}.pending")})
    return cls(lower, upper, fn, late)


def asof_join_function(name: str, how: str = "inner", fn: Joiner | None = None,
                       late: OutputTag | None = None) -> AsOfJoinFunction:
    """An :class:`AsOfJoinFunction` whose states are named after operator ``name``
    (``<name>.left``, ``<name>.right``).

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
    cls = type("AsOfJoinFunction", (AsOfJoinFunction,), {
        "left": MapState(f"{name}.left"), "right": MapState(f"{name}.right")})
    return cls(how, fn, late)
