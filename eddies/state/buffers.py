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

__all__ = ["Held", "JoinBuffers", "stored_map_key", "stored_value"]


def _ignore_entry(held: Any, mk: int) -> None:
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


class Held:
    """One key's entries: their map keys in order, with the values and the checkpoint
    epoch each was added in, side by side (a join reaches one key's entries through one
    object, and finds an entry with a bisect of ``mks``)."""

    __slots__ = ("key", "mks", "vals", "epochs", "prefix")

    def __init__(self, key: Key, prefix: bytes | None = None) -> None:
        self.key = key
        self.mks: list[int] = []
        self.vals: list[Any] = []
        self.epochs: list[int] = []
        self.prefix = prefix  # the stored-key prefix, once a write needed it

    def __repr__(self) -> str:
        return f"<Held {self.key!r}: {len(self.mks)} entries>"


class JoinBuffers(Handle):
    """The ``<op>.buffer`` state of an interval or as-of join, as one table.

    ``held`` maps each user key (its state-key form) to its :class:`Held` entries, which
    the join reads directly and changes through :meth:`insert`, :meth:`replace` and
    :meth:`remove_at`; a key with no entry left has none. ``index`` holds, by time, the
    items due then (what an item is, the join decides; it names the ``Held``, so firing
    needs no lookup of the key), ``times`` those times as a heap: the operator takes them in
    time order as the watermark passes (its ``EventTimeHook``), one pass per time across
    keys.

    A checkpoint writes one PUT per entry added since the last one and still held, and one
    DELETE per stored entry removed: an entry added and removed between two checkpoints
    costs the backend nothing. Entries stay in memory (a join holds what its bounds and the
    watermark's progress let through); the index is rebuilt on restore with one range scan
    (a :class:`Timers` loader), through ``on_load(held, map key)`` per entry.
    """

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor) -> None:
        super().__init__(store, descriptor, None)
        self.held: dict[Key, Held] = {}
        self.epoch = 0  # checkpoints collected so far: entries of this epoch are unwritten
        self.fresh: list[tuple[Held, int]] = []  # entries added in this epoch (some gone)
        self.deleted: list[bytes] = []  # stored keys of written entries removed since
        self.index: dict[int, list[Any]] = {}
        self.times: list[int] = []
        self.on_load: Callable[[Held, int], None] = _ignore_entry
        self.note_due: Callable[[int], None] = _ignore_time
        self.evicts_swept = False

    # -- entries -------------------------------------------------------------------------------
    def new(self, key: Key) -> Held:
        """The (empty) entries of ``key``, which has none."""
        held = self.held[key] = Held(key)
        return held

    def insert(self, held: Held, i: int, mk: int, value: Any) -> None:
        """Add the entry ``mk`` (absent) at position ``i`` of ``held.mks``."""
        held.mks.insert(i, mk)
        held.vals.insert(i, value)
        held.epochs.insert(i, self.epoch)
        self.fresh.append((held, mk))

    def replace(self, held: Held, i: int, value: Any) -> None:
        """Set the value of the entry at position ``i``."""
        if held.epochs[i] != self.epoch:  # written: deleted, then put again (in that order)
            self.deleted.append(self._stored_key(held, held.mks[i]))
            held.epochs[i] = self.epoch
            self.fresh.append((held, held.mks[i]))
        held.vals[i] = value

    def remove_at(self, held: Held, i: int) -> Any:
        """Drop the entry at position ``i``; returns its value."""
        mks = held.mks
        value = held.vals.pop(i)
        if held.epochs.pop(i) != self.epoch:
            self.deleted.append(self._stored_key(held, mks[i]))
        del mks[i]
        if not mks and self.held.get(held.key) is held:
            del self.held[held.key]
        return value

    def remove(self, held: Held, mk: int) -> Any:
        """Drop the entry ``mk`` of ``held``; returns its value (None if there was none)."""
        mks = held.mks
        i = bisect_left(mks, mk)
        if i == len(mks) or mks[i] != mk:
            return None
        return self.remove_at(held, i)

    def _stored_key(self, held: Held, mk: int) -> bytes:
        prefix = held.prefix
        if prefix is None:
            prefix = held.prefix = self.store.prefix(held.key)
        return prefix + stored_map_key(mk)

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
        if self.deleted:
            batch.delete_many(name, self.deleted)
            self.deleted = []
        epoch = self.epoch
        self.epoch = epoch + 1
        if not self.fresh:
            return
        keys: list[bytes] = []
        values: list[bytes] = []
        stored_key = self._stored_key
        for held, mk in self.fresh:
            mks = held.mks
            i = bisect_left(mks, mk)
            if i < len(mks) and mks[i] == mk and held.epochs[i] == epoch:
                keys.append(stored_key(held, mk))
                values.append(stored_value(held.vals[i]))
        self.fresh = []
        batch.put_many(name, keys, values)

    def cached_count(self) -> int:
        """0: the buffers are not a cache a checkpoint can shrink (:meth:`trim` frees
        nothing), so they must not count towards ``cache_entries``, or every round would
        bring a checkpoint forward once a join holds more keys than twice that."""
        return 0

    def trim(self, limit: int) -> int:
        """Entries stay in memory (see the class docstring)."""
        return 0

    def reset(self) -> None:
        """Forget everything (the runtime reloads the index, see :meth:`load`)."""
        self.held.clear()
        self.fresh = []
        self.deleted = []
        self.index.clear()
        self.times.clear()

    def evict(self, key: Key, suffix: bytes) -> None:
        """Never swept: join entries have no TTL."""

    def peek(self) -> Any:
        held = self.held.get(self.store.key)
        if held is None:
            return None
        return dict(zip(held.mks, held.vals, strict=True))

    def load(self, backend: StateBackend, lower: bytes | None, upper: bytes | None) -> int:
        """Hold and index the stored entries of one key-group range (all if no bounds), in
        one scan. Returns how many entries."""
        prefixes = self.store.cached_prefixes
        held_of = self.held
        on_load = self.on_load
        count = 0
        for stored, data in backend.iterate(self.name, lower, upper):
            key, split = decode_user_key(stored, 2)  # the map key follows at split
            (mk,) = decode_key(stored[split:])
            held = held_of.get(key)
            if held is None:
                prefix = stored[:split]
                prefixes[key] = prefix  # the key keeps the key group it is stored under
                held = held_of[key] = Held(key, prefix)
            mks = held.mks
            i = bisect_left(mks, mk)
            if i < len(mks) and mks[i] == mk:  # held already (loaded twice): memory is newer
                continue
            mks.insert(i, mk)
            held.vals.insert(i, unpack(data[8:]))
            held.epochs.insert(i, -1)  # stored
            on_load(held, mk)
            count += 1
        return count
