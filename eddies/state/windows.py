"""WindowState: the state of a tumbling or sliding window operator, every key of a window
fired at once, with no timer per key (``eddies.operators.windows`` runs it).

Entries are stored as MapState stores them (``key group | user key | (start, end)`` ->
``stamp | msgpack accumulator``), so a job's windows state reads back as a MapState.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol

from eddies.errors import ConfigError, StateError, StateSerializationError
from eddies.state.backend import DELETE, PUT, Batch, StateBackend
from eddies.state.handles import Handle
from eddies.state.keys import Key, decode_key, decode_user_key, encode_key
from eddies.state.store import check_value
from eddies.state.ttl import MIN_TIME
from eddies.state.values import NEVER_STAMP, pack, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore

__all__ = ["WindowSpec", "WindowState"]


class WindowSpec(Protocol):
    """What a WindowState runs: the window function's assigner, aggregation and lateness."""

    lateness: int
    """Allowed lateness in ms."""
    size_ms: int
    slide_ms: int
    offset_ms: int
    sliding: bool
    """Windows are Sliding(size_ms, slide_ms) (offset_ms); otherwise Tumbling or ``assign``."""
    collects: bool
    """``result`` needs ``bind(key, start, end)`` first (``.process`` window functions)."""

    def assign(self, ts: int) -> Iterable[Any]:
        """The windows (with ``start``, ``end``) an event at ``ts`` belongs to."""
        ...

    def create(self) -> Any: ...
    def add(self, acc: Any, event: Any) -> Any: ...
    def result(self, acc: Any) -> Any: ...

    def late(self, event: Any, ctx: Any) -> None:
        """``event`` is late for all its windows."""

    def bind(self, key: Any, start: int, end: int) -> None:
        """The next ``result`` is for ``key`` in ``[start, end)``."""


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
                 fn: WindowSpec, ctx: Any, timers: Any) -> None:
        super().__init__(store, descriptor, None)
        self.fn = fn
        self.ctx = ctx
        self.timers = timers
        self.lateness = fn.lateness
        self._assign = fn.assign
        self._size = fn.size_ms
        self._slide = fn.slide_ms
        self._offset = fn.offset_ms
        self._sliding = fn.sliding
        self._create = fn.create
        self._add = fn.add
        self._result = fn.result
        self._collects = fn.collects
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
    def on_tumbling_event(self, event: Any, ctx: Any) -> Iterable[Any] | None:
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
                self.fn.late(event, ctx)
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

    def on_event(self, event: Any, ctx: Any) -> Iterable[Any] | None:
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
            bounds = [(w.start, w.end) for w in self._assign(ts)]
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
        if not accepted and bounds:  # (a Sliding slide above its size leaves gaps: no window)
            self.fn.late(event, ctx)
        return out

    def _emit(self, acc: Any, key: Any, slot: _Slot) -> Any:
        """The value of a result (``.process`` functions see the key and the window)."""
        if self._collects:
            self.fn.bind(key, slot.start, slot.end)
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
            bind = self.fn.bind
            for key, acc in items:
                public = key[0] if type(key) is tuple and len(key) == 1 else key
                ctx.key = public
                bind(public, start, end)
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

    def cached_count(self) -> int:
        """The accumulators in memory (what ``cache_entries`` bounds)."""
        return self._entries() - self._unloaded

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
