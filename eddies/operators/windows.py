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

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from eddies.errors import ConfigError, StateError, StateSerializationError
from eddies.operators.functions import Context, KeyedProcessFunction, OutputTag
from eddies.state.backend import DELETE, PUT, Batch, StateBackend
from eddies.state.descriptors import MapState
from eddies.state.handles import Handle
from eddies.state.keys import Key, decode_key, decode_user_key, encode_key
from eddies.state.store import check_value
from eddies.state.ttl import MIN_TIME
from eddies.state.values import NEVER_STAMP, pack, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore

__all__ = [
    "AggregateFunction",
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


class AggregateFunction(Protocol):
    """What ``.aggregate(agg)`` takes: ``create``, ``add``, ``merge`` (sessions), ``result``."""

    def create(self) -> Any: ...
    def add(self, acc: Any, value: Any) -> Any: ...
    def merge(self, a: Any, b: Any) -> Any: ...
    def result(self, acc: Any) -> Any: ...


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
        self._create = agg.create
        self._add = agg.add
        self._result = agg.result
        self._collects = isinstance(agg, _Collect)

    def _attach_operator(self, op: Any) -> WindowState | None:
        """Runtime hook (see ``KeyedOperator``): a non-merging assigner's state becomes a
        WindowState, which the operator fires as the watermark passes window ends."""
        if self.assigner.merging:
            return None
        handle = self.windows
        state = WindowState(op.store, handle.descriptor, self, op.ctx, op.timers)
        state.note_due = op.note_event_time
        op.store.handles[handle.name] = state
        op.handles[handle.name] = state
        op.timers.loaders.append(state.load)
        self.windows = state
        self.on_event = (  # type: ignore[method-assign]
            state.on_tumbling_event if type(self.assigner) is Tumbling else state.on_event)
        return state

    def _emit(self, ctx: Context, window: Window, acc: Any) -> dict[str, Any]:
        agg = self.agg
        if self._collects:
            agg.key = ctx.key
            agg.window = window
        return {"key": ctx.key, "start": window.start, "end": window.end,
                "value": self._result(acc)}

    def _late(self, event: Any, ctx: Context) -> None:
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
        for key, acc in list(windows.entries()):
            w = Window(*key)
            if w.start <= merged_end and merged_start <= w.end:
                absorbed.append((w, acc))
                merged_start = min(merged_start, w.start)
                merged_end = max(merged_end, w.end)
        merged = Window(merged_start, merged_end)
        if merged.end - 1 + lateness <= ctx.watermark:
            self._late(event, ctx)
            return None
        acc = self._create()
        merge = self.agg.merge
        for w, old in absorbed:
            acc = merge(acc, old)
            windows.remove((w.start, w.end))
            if w != merged:
                ctx.timers.delete_event_time(w.end - 1)
                if lateness:
                    ctx.timers.delete_event_time(w.end - 1 + lateness)
        acc = self._add(acc, event)
        windows.put((merged.start, merged.end), acc)
        if lateness:
            ctx.timers.register_event_time(merged.end - 1 + lateness)
        if merged.end - 1 <= ctx.watermark:
            # Past its end (within the lateness): the result goes out now, and only now.
            return [self._emit(ctx, merged, acc)]
        ctx.timers.register_event_time(merged.end - 1)
        return None

    def on_timer(self, timestamp: int, ctx: Context) -> Iterable[Any] | None:
        if not self.assigner.merging:
            # A timer of a checkpoint from before WindowState (one per key and window): the
            # window's entry is in WindowState's index, which fires it.
            return None
        lateness = self.lateness
        windows = self.windows
        out = []
        for key, acc in list(windows.entries()):
            window = Window(*key)
            max_ts = window.end - 1
            if max_ts == timestamp:
                out.append(self._emit(ctx, window, acc))
            if max_ts + lateness <= timestamp:
                windows.remove(key)
        return out


# -- WindowState: tumbling and sliding windows, every key of a window fired at once -------------
_NEW: Any = object()  # no accumulator yet for this key in this window
_UNLOADED: Any = object()  # an accumulator in the backend only (trimmed from memory)
_FIRE, _CLEAN = 0, 1  # what is due at a time: fire (or re-fire) a window; drop it


def _ignore(time: int) -> None:
    pass


class _Slot:
    """One window (``start``, ``end``) across keys: accumulators by user key (tuple), and the
    packed accumulators written since the last checkpoint."""

    __slots__ = ("start", "end", "enc", "accs", "dirty", "fired", "refire", "marked",
                 "unloaded")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.enc = encode_key((start, end))  # the map key, as MapState stores it
        self.accs: dict[Key, Any] = {}
        self.dirty: dict[Key, bytes] = {}  # key -> packed accumulator, for the checkpoint
        self.fired = False
        self.refire: dict[Key, None] = {}  # keys to fire again (see WindowState._refire)
        self.marked: set[bytes] = set()  # key groups with a window mark (see timers.py)
        self.unloaded = 0


class WindowState(Handle):
    """The ``<op>.windows`` state of a tumbling or sliding window operator, as one table.

    Entries are stored as MapState stores them (``key group | user key | (start, end)`` ->
    ``stamp | msgpack accumulator``), but held by window, then key: a window's keys all fire
    in one pass when the watermark reaches ``end - 1``, and are deleted once it reaches
    ``end - 1 + allowed_lateness``, with no timer per key. A checkpoint writes one PUT per
    (key, window) changed since the last one (the accumulator is packed when it is set, which
    also checks it can be stored) and one DELETE per (key, window) dropped. The index of
    windows and keys is rebuilt on restore with one range scan (a :class:`Timers` loader);
    window marks in the timers column family tell which of the restored windows have fired
    and wait only for their lateness to pass. Accumulators beyond ``cache_entries`` leave
    memory after a checkpoint (their keys stay) and are read back when needed.

    Within one window, keys fire in the order they entered it (after a restore, in stored
    key order); windows fire in order of ``end`` (then ``start``).
    """

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor,
                 fn: WindowFunction, ctx: Context, timers: Any) -> None:
        super().__init__(store, descriptor, None)
        self.fn = fn
        self.ctx = ctx
        self.timers = timers
        self.lateness = fn.lateness
        self.assigner = fn.assigner
        self._size = getattr(fn.assigner, "size_ms", 0)
        self._slide = getattr(fn.assigner, "slide_ms", 0)
        self._offset = getattr(fn.assigner, "offset_ms", 0)
        self._sliding = type(fn.assigner) is Sliding
        self._create = fn._create
        self._add = fn._add
        self._result = fn._result
        self._collects = fn._collects
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._due: list[tuple[int, int, int, int]] = []  # heap of (time, _FIRE/_CLEAN, start, end)
        self._dropped: list[_Slot] = []  # windows to delete at the next checkpoint
        self._hot_end: int | None = None  # the window the last tumbling event went to
        self._hot: _Slot | None = None
        self._unloaded = 0
        # Told the time of every window end or cleanup added to _due, so that a batch of
        # records stops where the watermark reaches it (KeyedOperator.note_event_time).
        self.note_due: Callable[[int], None] = _ignore

    # -- events --------------------------------------------------------------------------------
    def on_tumbling_event(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """``on_event`` for Tumbling: one window per event, mostly the one of the last event."""
        ts = ctx.timestamp
        if ts is None:
            raise ConfigError("windows need event time: give the source timestamp=...")
        size = self._size
        end = ts - (ts - self._offset) % size + size
        watermark = ctx.watermark
        if end == self._hot_end:
            # Still in the index, so not closed: a window leaves it as soon as the watermark
            # passes end - 1 + lateness.
            slot: _Slot = self._hot  # type: ignore[assignment]
        else:
            if end - 1 + self.lateness <= watermark:  # the window is closed for good
                self.fn._late(event, ctx)
                return None
            slot = self._slots.get((end - size, end)) or self._open(end - size, end, watermark)
            self._hot_end = end
            self._hot = slot
        key = self.store.key
        accs = slot.accs
        acc = accs.get(key, _NEW)
        new = acc is _NEW
        if new:
            acc = self._create()
        elif acc is _UNLOADED:
            acc = self._load(slot, key)
        acc = self._add(acc, event)
        try:
            slot.dirty[key] = pack(acc)
        except (TypeError, ValueError, OverflowError):
            self._unstorable(acc, key, slot)
        accs[key] = acc
        if end - 1 <= watermark:  # past its end: a late update within the lateness
            self._mark(slot, (key,))
            return [{"key": ctx.key, "start": end - size, "end": end,
                     "value": self._emit(acc, ctx.key, slot)}]
        if slot.fired:
            self._refire(slot, key)
        return None

    def on_event(self, event: Any, ctx: Context) -> Iterable[Any] | None:
        """``on_event`` for Sliding and other non-merging assigners."""
        ts = ctx.timestamp
        if ts is None:
            raise ConfigError("windows need event time: give the source timestamp=...")
        watermark = ctx.watermark
        lateness = self.lateness
        if self._sliding:
            size = self._size
            slide = self._slide
            last = ts - (ts - self._offset) % slide
            bounds = [(s, s + size) for s in range(last, ts - size, -slide)]
        else:
            bounds = [(w.start, w.end) for w in self.assigner.assign(ts)]
        key = self.store.key
        slots = self._slots
        out = None
        accepted = False
        for start, end in bounds:
            if end - 1 + lateness <= watermark:
                continue  # this window is closed for good
            accepted = True
            slot = slots.get((start, end)) or self._open(start, end, watermark)
            accs = slot.accs
            acc = accs.get(key, _NEW)
            new = acc is _NEW
            if new:
                acc = self._create()
            elif acc is _UNLOADED:
                acc = self._load(slot, key)
            acc = self._add(acc, event)
            try:
                slot.dirty[key] = pack(acc)
            except (TypeError, ValueError, OverflowError):
                self._unstorable(acc, key, slot)
            accs[key] = acc
            if end - 1 <= watermark:  # past its end: a late update within the lateness
                self._mark(slot, (key,))
                if out is None:
                    out = []
                out.append({"key": ctx.key, "start": start, "end": end,
                            "value": self._emit(acc, ctx.key, slot)})
            elif slot.fired:
                self._refire(slot, key)
        if not accepted:
            self.fn._late(event, ctx)
        return out

    def _emit(self, acc: Any, key: Any, slot: _Slot) -> Any:
        """The value of a result (``.process`` functions see the key and the window)."""
        if self._collects:
            agg = self.fn.agg
            agg.key = key
            agg.window = Window(slot.start, slot.end)
        return self._result(acc)

    def _unstorable(self, acc: Any, key: Key, slot: _Slot) -> None:
        check_value(acc, lambda: f"{self.store.where(self.descriptor)}, map key "
                                 f"{(slot.start, slot.end)!r}")
        raise StateSerializationError(  # pragma: no cover - check_value raised already
            f"{self.store.where(self.descriptor)}: cannot serialize {type(acc).__name__}")

    def _open(self, start: int, end: int, watermark: int) -> _Slot:
        slot = self._slots[(start, end)] = _Slot(start, end)
        if end - 1 <= watermark:
            # Opened by a late event (within the lateness): each key's result goes out with
            # the event that updates it, as Flink's trigger fires on such an element at once
            # and only then; nothing is left to fire at the window's end.
            slot.fired = True
            heapq.heappush(self._due, (end - 1 + self.lateness, _CLEAN, start, end))
            self.note_due(end - 1 + self.lateness)
        else:
            heapq.heappush(self._due, (end - 1, _FIRE, start, end))
            self.note_due(end - 1)
        return slot

    def _refire(self, slot: _Slot, key: Key) -> None:
        """Fire ``key`` of a window that has fired at the next watermark: an update the
        watermark has not caught up with (a partition restored under Kafka, whose events
        run before the operator's watermark has moved to the restored one)."""
        if not slot.refire:
            heapq.heappush(self._due, (slot.end - 1, _FIRE, slot.start, slot.end))
            self.note_due(slot.end - 1)
        slot.refire[key] = None

    def _load(self, slot: _Slot, key: Key) -> Any:
        """Read back one accumulator that left memory."""
        self.misses += 1
        data = self.backend.get_raw(self.name, self.store.prefix(key) + slot.enc)
        if data is None:
            raise StateError(
                f"{self.store.where(self.descriptor)}: window {(slot.start, slot.end)!r} is "
                "indexed but not stored; the state dir was changed under a running job"
            )
        acc = slot.accs[key] = unpack(data[8:])
        slot.unloaded -= 1
        self._unloaded -= 1
        return acc

    def _load_all(self, slot: _Slot) -> None:
        """Read back every accumulator of ``slot`` that left memory, in one round trip."""
        keys = [k for k, acc in slot.accs.items() if acc is _UNLOADED]
        prefix = self.store.prefix
        values = self.backend.inner.multi_get(self.name, [prefix(k) + slot.enc for k in keys])
        for key, data in zip(keys, values, strict=True):
            if data is None:
                self._load(slot, key)  # raises
            slot.accs[key] = unpack(data[8:])  # type: ignore[index]
        self.misses += len(keys)
        self._unloaded -= len(keys)
        slot.unloaded = 0

    # -- firing (KeyedOperator's EventTimeHook) ------------------------------------------------
    def next_time(self) -> int | None:
        due = self._due
        return due[0][0] if due else None

    def fire_next(self, time: int, out: list[Any]) -> None:
        """Fire, re-fire or drop the window due first (at ``time``)."""
        _, kind, start, end = heapq.heappop(self._due)
        slot = self._slots.get((start, end))
        if slot is None:
            return
        if kind == _CLEAN:
            self._drop(slot)
            return
        keys: list[Key] | None = None
        if slot.fired:  # only keys to fire again
            if not slot.refire:
                return
            keys = list(slot.refire)
            slot.refire = {}
        self._fire(slot, keys, time, out)
        if not self.lateness:
            self._drop(slot)
            return
        self._mark(slot, slot.accs if keys is None else keys)
        if not slot.fired:
            slot.fired = True
            heapq.heappush(self._due, (end - 1 + self.lateness, _CLEAN, start, end))

    def _fire(self, slot: _Slot, keys: list[Key] | None, time: int, out: list[Any]) -> None:
        """Emit the result of ``keys`` (all if None) in ``slot``."""
        if slot.unloaded:
            self._load_all(slot)
        ctx = self.ctx
        ctx.timestamp = time
        start = slot.start
        end = slot.end
        accs = slot.accs
        items = accs.items() if keys is None else [(k, accs[k]) for k in keys]
        result = self._result
        append = out.append
        if self._collects:
            agg = self.fn.agg
            agg.window = Window(start, end)
            for key, acc in items:
                public = key[0] if type(key) is tuple and len(key) == 1 else key
                ctx.key = agg.key = public
                append({"key": public, "start": start, "end": end, "value": result(acc)})
            return
        for key, acc in items:
            public = key[0] if type(key) is tuple and len(key) == 1 else key
            ctx.key = public  # for the error message, should result() raise
            append({"key": public, "start": start, "end": end, "value": result(acc)})

    def _mark(self, slot: _Slot, keys: Iterable[Key]) -> None:
        """Window marks for the key groups of ``keys`` that have none (with lateness only:
        without, a window is deleted in the checkpoint that follows its firing)."""
        prefix = self.store.prefix
        groups = {prefix(k)[:2] for k in keys} - slot.marked
        mark = self.timers.mark
        for group in groups:
            mark(group, slot.end - 1, slot.enc)
        slot.marked |= groups

    def _drop(self, slot: _Slot) -> None:
        del self._slots[(slot.start, slot.end)]
        self._dropped.append(slot)
        self._unloaded -= slot.unloaded
        if slot is self._hot:
            self._hot = self._hot_end = None
        unmark = self.timers.unmark
        for group in slot.marked:
            unmark(group, slot.end - 1, slot.enc)

    # -- the store's side: checkpoint, cache, restore ------------------------------------------
    def _prefixes(self, keys: list[Key]) -> list[bytes]:
        prefixes = list(map(self.store.cached_prefixes.get, keys))
        if None in prefixes:
            prefix = self.store.prefix
            prefixes = [p or prefix(k) for p, k in zip(prefixes, keys, strict=True)]
        return prefixes  # type: ignore[return-value]

    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        """A DELETE per (key, window) dropped and a PUT per (key, window) changed."""
        extend = batch.ops.extend
        name = self.name
        add = bytes.__add__
        for slot in self._dropped:
            keys = list(slot.accs)
            extend(zip(repeat(DELETE), repeat(name),
                       map(add, self._prefixes(keys), repeat(slot.enc)), repeat(None)))
        self._dropped.clear()
        for slot in self._slots.values():
            dirty = slot.dirty
            if dirty:
                keys = list(dirty)
                extend(zip(repeat(PUT), repeat(name),
                           map(add, self._prefixes(keys), repeat(slot.enc)),
                           map(NEVER_STAMP.__add__, dirty.values())))
                slot.dirty = {}

    def _entries(self) -> int:
        return sum(len(slot.accs) for slot in self._slots.values())

    @property
    def _cache(self) -> range:
        """Sized as the accumulators in memory (what ``cache_entries`` bounds)."""
        return range(self._entries() - self._unloaded)

    def trim(self, limit: int) -> int:
        """Move the clean accumulators beyond ``limit`` out of memory, earliest windows first
        (their keys stay in the index)."""
        excess = self._entries() - self._unloaded - limit
        if excess <= 0:
            return 0
        dropped = 0
        for slot in self._slots.values():
            accs = slot.accs
            dirty = slot.dirty
            before = dropped
            for key, acc in accs.items():
                if dropped >= excess:
                    break
                if acc is not _UNLOADED and key not in dirty:
                    accs[key] = _UNLOADED
                    dropped += 1
            slot.unloaded += dropped - before
            if dropped >= excess:
                break
        self._unloaded += dropped
        self.evictions += dropped
        return dropped

    def reset(self) -> None:
        """Forget everything (the runtime reloads the index, see :meth:`load`)."""
        self._slots.clear()
        self._due.clear()
        self._dropped.clear()
        self._hot = self._hot_end = None
        self._unloaded = 0

    def evict(self, key: Key, suffix: bytes) -> None:
        """Never swept: window entries have no TTL."""

    def peek(self) -> Any:
        key = self.store.key
        out = {}
        for window, slot in sorted(self._slots.items()):
            acc = slot.accs.get(key, _NEW)
            if acc is _UNLOADED:
                acc = self._load(slot, key)
            if acc is not _NEW:
                out[window] = acc
        return out or None

    def load(self, backend: StateBackend, lower: bytes | None, upper: bytes | None) -> int:
        """Index the stored windows of one key-group range (all if no bounds), in one scan;
        which have fired is read from the window marks. Returns how many entries."""
        marks = self.timers.event.marks
        is_marked = self.timers.is_marked
        prefixes = self.store.cached_prefixes
        room = self.store.cache_entries - (self._entries() - self._unloaded)
        windows: dict[bytes, tuple[int, int]] = {}
        # per slot touched: keys whose window has fired, keys whose window has not
        touched: dict[_Slot, tuple[list[Key], list[Key]]] = {}
        count = 0
        for stored, data in backend.iterate(self.name, lower, upper):
            key, split = decode_user_key(stored, 2)  # the map key follows at split
            enc = stored[split:]
            window = windows.get(enc)
            if window is None:
                window = windows[enc] = decode_key(enc)  # type: ignore[assignment]
            slot = self._slots.get(window) or self._open(*window, MIN_TIME)
            if key in slot.accs:  # indexed already (loaded twice): memory is as new or newer
                continue
            seen = touched.get(slot)
            if seen is None:
                seen = touched[slot] = ([], [])
            prefix = stored[:split]
            prefixes[key] = prefix  # the key keeps the key group it is stored under
            if marks and is_marked(prefix[:2], slot.end - 1, enc):
                seen[0].append(key)
                slot.marked.add(prefix[:2])
            else:
                seen[1].append(key)
            if room > 0:
                slot.accs[key] = unpack(data[8:])
                room -= 1
            else:
                slot.accs[key] = _UNLOADED
                slot.unloaded += 1
                self._unloaded += 1
            count += 1
        for slot, (fired, unfired) in touched.items():
            if fired and not slot.fired:
                done = set(fired)
                for key in slot.accs:
                    if key not in done:
                        self._refire(slot, key)
                slot.fired = True
                heapq.heappush(self._due,
                               (slot.end - 1 + self.lateness, _CLEAN, slot.start, slot.end))
            elif slot.fired:
                for key in unfired:
                    self._refire(slot, key)
        self._drop_stray_marks(lower, upper)
        return count

    def _drop_stray_marks(self, lower: bytes | None, upper: bytes | None) -> None:
        """Delete the marks in ``[lower, upper)`` left with no entry of their key group (a
        mark is written, and deleted, with its window's entries)."""
        for group, time, tag in self.timers.marks_in(lower, upper):
            slot = self._slots.get(decode_key(tag))  # type: ignore[arg-type]
            if slot is None or group not in slot.marked:
                self.timers.unmark(group, time, tag)


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
