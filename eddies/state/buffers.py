"""JoinBuffers: the buffered events of a join operator, held by key and indexed by the time
each one is due, with no timer per key (``eddies.operators.joins`` runs it).

Entries are stored as MapState stores them (``key group | user key | map key`` ->
``stamp | msgpack value``, map keys ints), so a join's buffer reads back as a MapState.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

from eddies.state.backend import Batch, StateBackend
from eddies.state.handles import Handle
from eddies.state.keys import Key, decode_key, decode_user_key
from eddies.state.values import NEVER_STAMP, pack, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore

__all__ = ["JoinBuffers", "stored_map_key", "stored_value"]


def _ignore_entry(key: Key, mk: int) -> None:
    pass


def _ignore_time(time: int) -> None:
    pass


_HEADS = [bytes((0x1D, n)) for n in range(256)]
_BIN8 = [NEVER_STAMP + bytes((0xC4, n)) for n in range(256)]


def stored_map_key(mk: int) -> bytes:
    """``encode_key(mk)`` of an int map key above ``2**64`` (the joins' keys all are), as
    MapState stores it, without the general codec's dispatch.

    >>> from eddies.state.keys import encode_key
    >>> all(stored_map_key(k) == encode_key(k) for k in (2**64, 2**64 + 1, 2**100 - 3))
    True
    """
    n = (mk.bit_length() + 7) >> 3
    return _HEADS[n] + mk.to_bytes(n, "big")


def stored_value(value: Any) -> bytes:
    """The stored bytes of a value that never expires: ``NEVER_STAMP + pack(value)``, a
    bytes value of under 256 bytes (a buffered event, mostly) with its msgpack header
    written here.

    >>> all(stored_value(v) == NEVER_STAMP + pack(v) for v in (b"", b"x" * 255, b"y" * 256,
    ...                                                       [b"a", b"b"]))
    True
    """
    if type(value) is bytes and len(value) < 256:
        return _BIN8[len(value)] + value
    return NEVER_STAMP + pack(value)  # type: ignore[no-any-return]


class JoinBuffers(Handle):
    """The ``<op>.buffer`` state of an interval or as-of join, as one table.

    ``held`` maps each user key (its state-key form) to the sorted list of its map keys
    (ints), ``values`` each ``(key, map key)`` to its value; the join keeps them in step
    through :meth:`add` and :meth:`remove`. ``index`` holds, by time, the items due then
    (what an item is, the join decides), ``times`` those times as a heap: the operator takes
    them in time order as the watermark passes (its ``EventTimeHook``), one pass per time
    across keys.

    A checkpoint writes one PUT per entry added since the last one and still held, and one
    DELETE per stored entry removed: an entry added and removed between two checkpoints
    costs the backend nothing. Entries stay in memory (a join holds what its bounds and the
    watermark's progress let through); the index is rebuilt on restore with one range scan
    (a :class:`Timers` loader), through ``on_load(key, map key)`` per entry.
    """

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor) -> None:
        super().__init__(store, descriptor, None)
        self.held: dict[Key, list[int]] = {}
        self.values: dict[tuple[Key, int], Any] = {}
        self.fresh: set[tuple[Key, int]] = set()  # added since the last checkpoint
        self.deleted: list[tuple[Key, int]] = []  # stored entries removed since then
        self.index: dict[int, list[Any]] = {}
        self.times: list[int] = []
        self.on_load: Callable[[Key, int], None] = _ignore_entry
        self.note_due: Callable[[int], None] = _ignore_time
        self.evicts_swept = False

    # -- entries -------------------------------------------------------------------------------
    def add(self, item: tuple[Key, int], value: Any) -> None:
        """Hold ``value`` at ``item`` = ``(key, map key)`` (replacing the value there)."""
        if item in self.values:
            if item not in self.fresh:
                self.deleted.append(item)  # stored: the PUT that follows replaces it
            self.values[item] = value
            self.fresh.add(item)
        else:
            self.insert(item, value, self.held.get(item[0]))

    def insert(self, item: tuple[Key, int], value: Any, order: list[int] | None) -> None:
        """:meth:`add` of an entry known to be absent, ``order`` being ``held.get(key)``
        (a caller that has it spares a lookup of the key)."""
        if order is None:
            self.held[item[0]] = [item[1]]
        else:
            mk = item[1]
            if order[-1] < mk:
                order.append(mk)
            else:
                order.insert(bisect_left(order, mk), mk)
        self.values[item] = value
        self.fresh.add(item)

    def remove(self, item: tuple[Key, int]) -> Any:
        """Drop the entry at ``item``; returns its value (None if there was none)."""
        value = self.values.pop(item, None)
        if value is None:
            return None
        fresh = self.fresh
        if item in fresh:
            fresh.remove(item)
        else:
            self.deleted.append(item)
        key, mk = item
        order = self.held[key]
        if len(order) == 1:
            del self.held[key]
        elif order[0] == mk:
            del order[0]
        else:
            del order[bisect_left(order, mk)]
        return value

    def at(self, time: int, item: Any) -> None:
        """Index ``item`` as due at ``time``."""
        items = self.index.get(time)
        if items is None:
            self.index[time] = [item]
            heappush(self.times, time)
            self.note_due(time)
        else:
            items.append(item)

    def next_time(self) -> int | None:
        times = self.times
        return times[0] if times else None

    def pop_due(self, limit: int) -> tuple[int, list[Any]] | None:
        """``(time, items)`` of the earliest time at or before ``limit``, taken out of the
        index; None if none is due."""
        times = self.times
        if not times or times[0] > limit:
            return None
        time = heappop(times)
        return time, self.index.pop(time)

    # -- the store's side: checkpoint, cache, restore ------------------------------------------
    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        """A DELETE per stored entry removed, then a PUT per entry added and still held (as
        one op of each kind: no tuple per entry)."""
        name = self.name
        prefixes = self.store.cached_prefixes
        prefix = self.store.prefix
        if self.deleted:
            batch.delete_many(name, [(prefixes.get(key) or prefix(key)) + stored_map_key(mk)
                                     for key, mk in self.deleted])
            self.deleted = []
        fresh = self.fresh
        if fresh:
            values = self.values
            items = list(fresh)
            fresh.clear()
            batch.put_many(name, [(prefixes.get(key) or prefix(key)) + stored_map_key(mk)
                                  for key, mk in items],
                           [stored_value(values[item]) for item in items])

    def cached_count(self) -> int:
        return len(self.held)

    def trim(self, limit: int) -> int:
        """Entries stay in memory (see the class docstring)."""
        return 0

    def reset(self) -> None:
        """Forget everything (the runtime reloads the index, see :meth:`load`)."""
        self.held.clear()
        self.values.clear()
        self.fresh.clear()
        self.deleted = []
        self.index.clear()
        self.times.clear()

    def evict(self, key: Key, suffix: bytes) -> None:
        """Never swept: join entries have no TTL."""

    def peek(self) -> Any:
        key = self.store.key
        order = self.held.get(key)
        if not order:
            return None
        values = self.values
        return {mk: values[(key, mk)] for mk in order}

    def load(self, backend: StateBackend, lower: bytes | None, upper: bytes | None) -> int:
        """Hold and index the stored entries of one key-group range (all if no bounds), in
        one scan. Returns how many entries."""
        prefixes = self.store.cached_prefixes
        values = self.values
        held = self.held
        on_load = self.on_load
        count = 0
        for stored, data in backend.iterate(self.name, lower, upper):
            key, split = decode_user_key(stored, 2)  # the map key follows at split
            (mk,) = decode_key(stored[split:])
            item = (key, mk)
            if item in values:  # held already (loaded twice): memory is as new or newer
                continue
            prefixes[key] = stored[:split]  # the key keeps the key group it is stored under
            values[item] = unpack(data[8:])
            order = held.get(key)
            if order is None:
                held[key] = [mk]
            else:
                order.insert(bisect_left(order, mk), mk)
            on_load(key, mk)
            count += 1
        return count
