"""Event-time windows: tumbling, sliding and session, built on keyed MapState and timers.

``keyed.window(assigner, allowed_lateness=ms, late=tag)`` then ``.reduce(fn)``,
``.aggregate(agg)`` or ``.process(fn)``. Every result is a dict
``{"key": ..., "start": ..., "end": ..., "value": ...}``; windows are half-open
``[start, end)`` in ms.

Semantics, as in Flink:

- A window fires when the watermark reaches ``end - 1`` (its last millisecond). The watermark
  moves after every event, however the runner batches them (see ``runtime/executor.py``).
- An event for a window that already fired but is within ``allowed_lateness`` re-fires the
  window at once with the updated value (an updated result, same key/start/end).
- An event is late when every window it belongs to has ``end - 1 + allowed_lateness`` at or
  below the watermark; it goes to the ``late`` side output, or is dropped and counted.
- Session windows start as ``[ts, ts + gap)`` and merge when their intervals overlap or touch
  (``a.start <= b.end and b.start <= a.end``): events closer than or exactly ``gap`` apart share
  a session.
- A window's state and timers are deleted once the watermark passes ``end - 1 +
  allowed_lateness``; no TTL is involved, so closed windows leave no keys behind.
- Results come in window-end order; within one tumbling or sliding window, in the order its
  keys entered it (after a restore, in stored-key order). Those windows need no timer per key:
  see :class:`WindowState`.

>>> import eddies as ed
>>> job = ed.Job("views"); out = ed.sinks.collect()
>>> events = [{"page": "/", "ts": t} for t in (1_000, 59_000, 61_000)]
>>> (job.source(ed.sources.iterable(events), timestamp="ts")
...     .key_by("page").window(ed.Tumbling(60_000)).aggregate(ed.Count()).sink(out))
>>> ed.run_local(job).collected(out)
[{'key': '/', 'start': 0, 'end': 60000, 'value': 2}, {'key': '/', 'start': 60000, 'end': 120000, 'value': 1}]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from eddies.errors import ConfigError
from eddies.operators.functions import Context, KeyedProcessFunction, OutputTag
from eddies.runtime.watermarks import MAX_TIME
from eddies.state.descriptors import MapState
from eddies.state.windows import WindowState

if TYPE_CHECKING:
    pass

__all__ = [
    "Count",
    "Session",
    "Sliding",
    "Sum",
    "Tumbling",
    "Window",
    "WindowAssigner",
]


class Window(NamedTuple):
    """A half-open interval ``[start, end)`` of event time in ms."""

    start: int
    end: int

    @property
    def max_timestamp(self) -> int:
        return self.end - 1


class WindowAssigner:
    """Base of the window assigners."""

    merging = False

    def assign(self, timestamp: int) -> list[Window]:
        raise NotImplementedError


@dataclass(frozen=True)
class Tumbling(WindowAssigner):
    """Fixed, non-overlapping windows of ``size_ms``, aligned to ``offset_ms``.

    >>> Tumbling(60_000).assign(61_000)
    [Window(start=60000, end=120000)]
    """

    size_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ConfigError(f"Tumbling needs size_ms > 0, got {self.size_ms}")

    def assign(self, timestamp: int) -> list[Window]:
        start = timestamp - (timestamp - self.offset_ms) % self.size_ms
        return [Window(start, start + self.size_ms)]


@dataclass(frozen=True)
class Sliding(WindowAssigner):
    """Windows of ``size_ms`` starting every ``slide_ms``; an event is in size/slide of them.

    >>> Sliding(10_000, 5_000).assign(12_000)
    [Window(start=10000, end=20000), Window(start=5000, end=15000)]
    """

    size_ms: int
    slide_ms: int
    offset_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.slide_ms <= 0:
            raise ConfigError("Sliding needs size_ms > 0 and slide_ms > 0")

    def assign(self, timestamp: int) -> list[Window]:
        last = timestamp - (timestamp - self.offset_ms) % self.slide_ms
        out = []
        start = last
        while start > timestamp - self.size_ms:
            out.append(Window(start, start + self.size_ms))
            start -= self.slide_ms
        return out


@dataclass(frozen=True)
class Session(WindowAssigner):
    """Windows of activity separated by at least ``gap_ms`` of silence, per key.

    >>> Session(30_000).assign(5_000)
    [Window(start=5000, end=35000)]
    """

    gap_ms: int
    merging = True

    def __post_init__(self) -> None:
        if self.gap_ms <= 0:
            raise ConfigError(f"Session needs gap_ms > 0, got {self.gap_ms}")

    def assign(self, timestamp: int) -> list[Window]:
        return [Window(timestamp, timestamp + self.gap_ms)]


class Count:
    """Counts events: ``.aggregate(ed.Count())``."""

    def create(self) -> int:
        return 0

    def add(self, acc: int, value: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> int:
        return acc


class Sum:
    """Sums a field (or the values themselves): ``.aggregate(ed.Sum("amount"))``."""

    def __init__(self, field: str | None = None) -> None:
        self.field = field

    def create(self) -> float:
        return 0

    def add(self, acc: float, value: Any) -> float:
        return acc + (value[self.field] if self.field is not None else value)

    def merge(self, a: float, b: float) -> float:
        return a + b

    def result(self, acc: float) -> float:
        return acc


# -- the operator ------------------------------------------------------------------------------
class _Reduce:
    """Adapts a reduce function to the aggregate shape; the accumulator is [value] or []."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def create(self) -> list[Any]:
        return []

    def add(self, acc: list[Any], value: Any) -> list[Any]:
        return [self.fn(acc[0], value)] if acc else [value]

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        if not a or not b:
            return a or b
        return [self.fn(a[0], b[0])]

    def result(self, acc: list[Any]) -> Any:
        return acc[0]


class _Collect:
    """Keeps every element, for ``.process(fn)``; ``fn(key, window, elements)`` makes the value."""

    def __init__(self, fn: Callable[[Any, Window, list[Any]], Any]) -> None:
        self.fn = fn
        self.key: Any = None
        self.window = Window(0, 0)

    def create(self) -> list[Any]:
        return []

    def add(self, acc: list[Any], value: Any) -> list[Any]:
        acc.append(value)
        return acc

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        return a + b

    def result(self, acc: list[Any]) -> Any:
        return self.fn(self.key, self.window, acc)


class WindowFunction(KeyedProcessFunction):
    """Runs one windowed aggregation; built by ``WindowedStream``, not by users.

    State: one MapState ``<operator>.windows`` per key, map key ``(start, end)``, value the
    accumulator. Tumbling and sliding windows keep it in a :class:`WindowState` and fire
    every key of a window in one pass, with no timer per key; session windows (which merge)
    keep a MapState handle and, per key, an event-time timer at ``end - 1`` (fire) and, with
    lateness, one at ``end - 1 + allowed_lateness`` (cleanup).
    """

    windows: Any

    def __init__(
        self,
        assigner: WindowAssigner,
        agg: Any,
        allowed_lateness: int = 0,
        late: OutputTag | None = None,
    ) -> None:
        if allowed_lateness < 0:
            raise ConfigError("allowed_lateness must be >= 0 ms")
        self.assigner = assigner
        self.agg = agg
        self.lateness = allowed_lateness
        self.late_tag = late
        self.late_dropped = 0
        # What WindowState runs (see eddies.state.windows.WindowSpec).
        self.create = agg.create
        self.add = agg.add
        self.result = agg.result
        self.collects = isinstance(agg, _Collect)
        self.size_ms = getattr(assigner, "size_ms", 0)
        self.slide_ms = getattr(assigner, "slide_ms", 0)
        self.offset_ms = getattr(assigner, "offset_ms", 0)
        self.sliding = type(assigner) is Sliding
        self.assign = assigner.assign

    def attach_operator(self, op: Any) -> None:
        """Called by the KeyedOperator that runs this function, with its state bound: a
        non-merging assigner's state becomes a WindowState, which the operator fires as
        the watermark passes window ends (``op.add_event_time_hook``)."""
        if self.assigner.merging:
            return
        handle = self.windows
        state = WindowState(op.store, handle.descriptor, self, op.ctx, op.timers)
        state.note_due = op.note_event_time
        op.add_event_time_hook(state, handle=state, loader=state.load)
        self.windows = state
        self.on_event = (  # type: ignore[method-assign]
            state.on_tumbling_event if type(self.assigner) is Tumbling else state.on_event)

    def bind(self, key: Any, start: int, end: int) -> None:
        """A ``.process`` window function's next result is for ``key`` in ``[start, end)``."""
        agg = self.agg
        agg.key = key
        agg.window = Window(start, end)

    def _emit(self, ctx: Context, window: Window, acc: Any) -> dict[str, Any]:
        agg = self.agg
        if self.collects:
            agg.key = ctx.key
            agg.window = window
        return {"key": ctx.key, "start": window.start, "end": window.end,
                "value": self.result(acc)}

    def late(self, event: Any, ctx: Context) -> None:
        """``event`` is too late for every window it belongs to: to the late side output,
        or dropped and counted."""
        if self.late_tag is not None:
            ctx.output(self.late_tag, event)
        else:
            self.late_dropped += 1

    def on_event(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """Session windows (non-merging assigners run ``WindowState.on_event``)."""
        if not self.assigner.merging:
            raise ConfigError("a tumbling or sliding WindowFunction runs in a KeyedOperator")
        ts = ctx.timestamp
        if ts is None:
            raise ConfigError("windows need event time: give the source timestamp=...")
        windows = self.windows
        lateness = self.lateness
        new = Window(ts, ts + self.assigner.gap_ms)  # type: ignore[attr-defined]
        merged_start, merged_end = new
        absorbed: list[tuple[Window, Any]] = []
        kept: list[Window] = []
        for key, acc in list(windows.entries()):
            w = Window(*key)
            if w.start <= merged_end and merged_start <= w.end:
                absorbed.append((w, acc))
                merged_start = min(merged_start, w.start)
                merged_end = max(merged_end, w.end)
            else:
                kept.append(w)
        merged = Window(merged_start, merged_end)
        if merged.end - 1 + lateness <= ctx.watermark:
            self.late(event, ctx)
            return None
        acc = self.create()
        merge = self.agg.merge
        # A key's timers are one per time, shared by its windows: an absorbed window's times
        # go unless another window of the key fires or ends then (a window's end with the
        # lateness can be another's end).
        needed = {t for w in (merged, *kept) for t in (w.end - 1, self._gone_at(w))}
        for w, old in absorbed:
            acc = merge(acc, old)
            windows.remove((w.start, w.end))
            if w != merged:
                for t in {w.end - 1, self._gone_at(w)} - needed:
                    ctx.timers.delete_event_time(t)
        acc = self.add(acc, event)
        windows.put((merged.start, merged.end), acc)
        if lateness:
            ctx.timers.register_event_time(self._gone_at(merged))
        if merged.end - 1 <= ctx.watermark:
            # Past its end (within the lateness): the result goes out now, and only now.
            return [self._emit(ctx, merged, acc)]
        ctx.timers.register_event_time(merged.end - 1)
        return None

    def _gone_at(self, window: Window) -> int:
        """When a session window's state goes: its end with the lateness, or at the end of
        input (the last time a timer holds) for a lateness beyond it."""
        return min(window.end - 1 + self.lateness, MAX_TIME)

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        if not self.assigner.merging:
            # A timer of a checkpoint from before WindowState (one per key and window): the
            # window's entry is in WindowState's index, which fires it.
            return None
        windows = self.windows
        out = []
        for key, acc in list(windows.entries()):
            window = Window(*key)
            max_ts = window.end - 1
            if max_ts == timestamp:
                out.append(self._emit(ctx, window, acc))
            if self._gone_at(window) <= timestamp:
                windows.remove(key)
        return out


def window_function(
    name: str,
    assigner: WindowAssigner,
    agg: Any,
    allowed_lateness: int,
    late: OutputTag | None,
) -> WindowFunction:
    """A WindowFunction whose state is named after operator ``name``."""
    cls = type("WindowFunction", (WindowFunction,), {"windows": MapState(f"{name}.windows")})
    return cls(assigner, agg, allowed_lateness, late)


def reducer(fn: Callable[[Any, Any], Any]) -> _Reduce:
    return _Reduce(fn)


def collector(fn: Callable[[Any, Window, list[Any]], Any]) -> _Collect:
    return _Collect(fn)
