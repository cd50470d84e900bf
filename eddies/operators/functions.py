"""What users subclass to process keyed events: process functions, their context, output tags.

State is declared as class attributes; the runtime binds a handle per declaration to the key
of each event before calling ``on_event``. Outputs are what the method yields (or returns as a
list); ``ctx.output(tag, value)`` sends a value to a side output.

>>> import eddies as ed
>>> class Count(ed.KeyedProcessFunction):
...     n = ed.ValueState("n", default=0)
...     def on_event(self, event, ctx):
...         self.n.set(self.n.get() + 1)
...         yield {"key": ctx.key, "n": self.n.get()}
>>> h = ed.testing.Harness(Count())
>>> h.event("x", key="a"), h.event("y", key="a")
([{'key': 'a', 'n': 1}], [{'key': 'a', 'n': 2}])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

__all__ = [
    "Context",
    "KeyedBroadcastProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "OutputTag",
    "TimerService",
]


class OutputTag:
    """Names a side output: ``ctx.output(tag, value)`` then ``stream.side_output(tag)``.

    >>> OutputTag("late") == OutputTag("late")
    True
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            from eddies.errors import ConfigError

            raise ConfigError(f"OutputTag needs a non-empty str name, got {name!r}")
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutputTag) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("OutputTag", self.name))

    def __repr__(self) -> str:
        return f"OutputTag({self.name!r})"


class TimerService(Protocol):
    """Timers of the current key, reached as ``ctx.timers``.

    A timer is identified by (key, time): registering the same one twice fires it once.
    Event-time timers fire when the watermark reaches their time; processing-time timers when
    the wall clock (or the harness' processing time) does. Both are checkpointed with state.
    """

    def register_event_time(self, timestamp: int) -> None: ...
    def register_processing_time(self, timestamp: int) -> None: ...
    def delete_event_time(self, timestamp: int) -> None: ...
    def delete_processing_time(self, timestamp: int) -> None: ...
    def current_processing_time(self) -> int: ...
    def current_watermark(self) -> int: ...


class Context:
    """Short-lived view of the record or timer being handled. Do not keep it past the call.

    ``key`` is the current key, ``timestamp`` the event (or timer) time in ms or None,
    ``watermark`` the operator's event-time watermark, ``timers`` the :class:`TimerService`.
    """

    __slots__ = ("key", "timestamp", "watermark", "timers", "_emit_side", "time_domain")

    def __init__(self, timers: TimerService, emit_side: Any) -> None:
        self.key: Any = None
        self.timestamp: int | None = None
        self.watermark: int = -(2**63)
        self.timers = timers
        self.time_domain = "event"
        self._emit_side = emit_side

    def output(self, tag: OutputTag, value: Any) -> None:
        """Send ``value`` to the side output named by ``tag``."""
        self._emit_side(tag, value)

    def current_processing_time(self) -> int:
        return self.timers.current_processing_time()


class KeyedProcessFunction:
    """Base class for a function over a keyed stream, with keyed state and timers.

    Override ``on_event``; override ``on_timer`` if you register timers; ``open`` runs once
    before the first event, with state bound.
    """

    def open(self) -> None:
        """Called once after state is bound, before any event."""

    def on_event(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """Handle one event of key ``ctx.key``; yield (or return a list of) outputs."""
        raise NotImplementedError(f"{type(self).__name__} must define on_event(self, event, ctx)")

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        """Handle a timer of key ``ctx.key`` firing at ``timestamp``; yield outputs."""
        return None


class KeyedBroadcastProcessFunction(KeyedProcessFunction):
    """A keyed function that also receives a broadcast stream (rules, configuration).

    ``on_broadcast`` runs on every parallel instance for each broadcast event and may write
    BroadcastState; in ``on_event`` that state is read-only. There is no current key in
    ``on_broadcast``, so keyed state is not available there.
    """

    def on_broadcast(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """Handle one broadcast event; write BroadcastState here."""
        raise NotImplementedError(
            f"{type(self).__name__} must define on_broadcast(self, event, ctx)"
        )


class KeyedCoProcessFunction:
    """Base class for a function over two keyed streams connected on the same key:
    ``a.key_by(k).connect(b.key_by(k)).process(fn)``.

    ``on_event1`` handles the first stream's events, ``on_event2`` the second's; both see
    the function's declared states and timers for the event's key, and ``on_timer`` fires
    for either side's timers. The operator's watermark is the minimum of its two inputs'.
    In :class:`~eddies.testing.Harness`, ``event(value, key=..., input=2)`` feeds the
    second input.

    >>> import eddies as ed
    >>> class Enrich(ed.KeyedCoProcessFunction):
    ...     profile = ed.ValueState("profile")
    ...     def on_event1(self, order, ctx):
    ...         yield {"order": order, "profile": self.profile.get()}
    ...     def on_event2(self, profile, ctx):
    ...         self.profile.set(profile)
    >>> h = ed.testing.Harness(Enrich())
    >>> h.event("gold", key="c1", input=2)
    []
    >>> h.event(42, key="c1")
    [{'order': 42, 'profile': 'gold'}]
    """

    def open(self) -> None:
        """Called once after state is bound, before any event."""

    def on_event1(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """Handle one event of the first input for key ``ctx.key``; yield outputs."""
        raise NotImplementedError(
            f"{type(self).__name__} must define on_event1(self, event, ctx)"
        )

    def on_event2(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """Handle one event of the second input for key ``ctx.key``; yield outputs."""
        raise NotImplementedError(
            f"{type(self).__name__} must define on_event2(self, event, ctx)"
        )

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        """Handle a timer of key ``ctx.key`` firing at ``timestamp``; yield outputs."""
        return None
