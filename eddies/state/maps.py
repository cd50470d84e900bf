"""Bound handles of MapState and BroadcastState: per-key sorted maps with range reads.

A map's entries are stored under ``<key group><user key element><map key>``, so the map keys
of one user key are one contiguous, ordered byte range. On first access a user key's map is
loaded with one range read into a sorted cache; range reads then run on that cache, which
also holds unflushed writes, so reads see your own writes.

Map keys are tuples (a bare value means its 1-tuple) and come back the same way: a 1-tuple as
its bare value. Range bounds follow tuple order: ``start`` is inclusive, ``start_after`` and
``end`` are exclusive, and ``prefix`` selects keys that start with the given elements.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedDict

from eddies.errors import ConfigError, ReadOnlyStateError, StateTooLargeError
from eddies.state.backend import Batch
from eddies.state.handles import Handle
from eddies.state.keys import Key, as_tuple, decode_key, encode_key, prefix_upper_bound
from eddies.state.store import check_value
from eddies.state.values import NEVER, pack, read_stamp, stamp, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore
    from eddies.state.ttl import Ttl

__all__ = ["BroadcastHandle", "MapHandle", "public_key", "range_bounds"]

_MISSING: Any = object()


def public_key(key: Key) -> Any:
    """A decoded map key as users see it: a 1-tuple as its bare value.

    Not when that value is itself a tuple: ``((1, 2),)`` given back as ``(1, 2)`` would name
    another key, the 2-tuple.

    >>> public_key(("a",)), public_key(("a", 1)), public_key(((1, 2),))
    ('a', ('a', 1), ((1, 2),))
    """
    return key[0] if len(key) == 1 and type(key[0]) is not tuple else key


def range_bounds(
    prefix: Any = None, start: Any = None, start_after: Any = None, end: Any = None
) -> tuple[bytes | None, bytes | None]:
    """Byte bounds ``[lower, upper)`` of a range over structured keys.

    >>> range_bounds(prefix="user")
    (b'\\x02user\\x00', b'\\x02user\\x00\\xff')
    """
    if start is not None and start_after is not None:
        raise ConfigError("give start= (inclusive) or start_after= (exclusive), not both")
    lower: bytes | None = None
    upper: bytes | None = None
    if start is not None:
        lower = encode_key(start)
    elif start_after is not None:
        # The smallest encoding above start_after, its extensions included.
        lower = encode_key(start_after) + b"\x00"
    if end is not None:
        upper = encode_key(end)
    if prefix is not None:
        p = encode_key(prefix)
        lower = p if lower is None else max(lower, p)
        pu = prefix_upper_bound(p)
        upper = pu if upper is None else min(upper, pu)
    return lower, upper


class _Map:
    __slots__ = ("entries", "dirty", "cleared", "size")

    def __init__(self) -> None:
        self.entries: SortedDict = SortedDict()  # encoded map key -> [key or None, value, exp]
        self.dirty: set[bytes] = set()
        self.cleared = False
        self.size = 0


class MapHandle(Handle):
    """A bound MapState.

    >>> from eddies.state import InMemoryStateBackend, MapState, KeyedStateStore
    >>> store = KeyedStateStore(InMemoryStateBackend())
    >>> devices = store.bind(MapState("devices"))
    >>> store.set_key("card-1")
    >>> devices.put(("phone", 2), "b"); devices.put(("phone", 1), "a"); devices.put("tv", "c")
    >>> list(devices.entries(prefix="phone"))
    [(('phone', 1), 'a'), (('phone', 2), 'b')]
    >>> devices.get("tv"), devices.get("radio", "none")
    ('c', 'none')
    """

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self._cache: dict[Key, _Map] = {}
        self._domain = ttl.time if ttl is not None else None

    # -- cache ---------------------------------------------------------------------------------
    def _current(self) -> tuple[Key, bytes]:
        key = self.store.key
        return key, self.store.prefix(key)

    def _map(self) -> _Map:
        key, prefix = self._current()
        m = self._cache.get(key)
        if m is not None:
            self.hits += 1
            return m
        self.misses += 1
        m = self._cache[key] = _Map()
        n = len(prefix)
        for stored_key, data in self.backend.iterate_raw(
            self.name, prefix, prefix_upper_bound(prefix)
        ):
            m.entries[stored_key[n:]] = [None, unpack(data[8:]), read_stamp(data)]
            m.size += len(stored_key) - n + len(data)
        return m

    def _mark(self, m: _Map, enc: bytes) -> None:
        m.dirty.add(enc)
        self._dirty.add(self.store.key if self.descriptor.kind != "broadcast" else ())

    @staticmethod
    def _key_of(enc: bytes, item: list[Any]) -> Any:
        if item[0] is None:
            item[0] = public_key(decode_key(enc))
        return item[0]

    def _alive(self, item: list[Any]) -> bool:
        return item[2] == NEVER or self._visible(item[2])

    def _entry_expiry(self, ttl: Ttl | None) -> int:
        ttl = ttl or self.ttl
        if ttl is None:
            return NEVER
        if self._domain is None:
            self._domain = ttl.time
            self.backend.set_time_domain(self.name, ttl.time)
        elif ttl.time != self._domain:
            raise ConfigError(
                f"{self.store.where(self.descriptor)}: entry Ttl time {ttl.time!r} differs "
                f"from the map's {self._domain!r}; one MapState uses one clock"
            )
        return self.store.expiry(ttl, self.descriptor)

    # -- writes --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        """Keyed maps are always writable; BroadcastHandle overrides."""

    def _where(self, key: Any) -> str:
        return f"{self.store.where(self.descriptor)}, map key {key!r}"

    def put(self, key: Any, value: Any, ttl: Ttl | None = None) -> None:
        """Set ``key`` to ``value``; ``ttl`` overrides the state's TTL for this entry."""
        self._check_writable()
        check_value(value, self._where(key))
        enc = encode_key(key)
        m = self._map()
        expires_at = self._entry_expiry(ttl)
        self._resize(m, enc, value)
        m.entries[enc] = [public_key(as_tuple(key)), value, expires_at]
        self._mark(m, enc)

    def _resize(self, m: _Map, enc: bytes, value: Any) -> None:
        """Track the approximate stored size (BroadcastHandle enforces a limit)."""

    def put_all(self, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]]) -> None:
        """Put every ``(key, value)`` pair of a mapping or an iterable of pairs."""
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            self.put(key, value)

    def remove(self, key: Any) -> None:
        """Delete ``key`` (no error if it is absent)."""
        self._check_writable()
        enc = encode_key(key)
        m = self._map()
        if enc in m.entries:
            self._resize(m, enc, _MISSING)  # before the pop: it reads the old entry's size
            del m.entries[enc]
        self._mark(m, enc)

    def remove_all(self, keys: Iterable[Any]) -> None:
        """Delete every key of ``keys``."""
        for key in keys:
            self.remove(key)

    def clear(self) -> None:
        """Delete every entry of the current key's map."""
        self._check_writable()
        m = self._map()
        m.entries.clear()
        m.dirty.clear()
        m.cleared = True
        m.size = 0
        self._dirty.add(self.store.key if self.descriptor.kind != "broadcast" else ())

    # -- reads ---------------------------------------------------------------------------------
    def _lookup(self, m: _Map, key: Any) -> Any:
        item = m.entries.get(encode_key(key))
        if item is None or not self._alive(item):
            return _MISSING
        if self._refresh_on_read() and not self._expired(item[2]):
            item[2] = self._entry_expiry(None)
            self._mark(m, encode_key(key))
        return item[1]

    def get(self, key: Any, default: Any = None) -> Any:
        """The value at ``key``, or ``default``."""
        value = self._lookup(self._map(), key)
        return default if value is _MISSING else value

    def get_many(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        """Values of ``keys`` in the order asked, ``default`` where absent."""
        m = self._map()
        out = []
        for key in keys:
            value = self._lookup(m, key)
            out.append(default if value is _MISSING else value)
        return out

    def contains(self, key: Any) -> bool:
        """True if ``key`` has an unexpired value."""
        item = self._map().entries.get(encode_key(key))
        return item is not None and self._alive(item)

    def entries(
        self,
        prefix: Any = None,
        start: Any = None,
        start_after: Any = None,
        end: Any = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` pairs in key order, within the given range.

        ``prefix`` keeps keys that start with its elements; ``start`` is inclusive,
        ``start_after`` and ``end`` exclusive; ``reverse`` walks down; ``limit`` caps the count.
        """
        m = self._map()
        lower, upper = range_bounds(prefix, start, start_after, end)
        encs = list(m.entries.irange(lower, upper, inclusive=(True, False), reverse=reverse))
        produced = 0
        for enc in encs:
            if limit is not None and produced >= limit:
                return
            item = m.entries.get(enc)
            if item is None or not self._alive(item):
                continue
            produced += 1
            yield self._key_of(enc, item), item[1]

    def items(self, **bounds: Any) -> Iterator[tuple[Any, Any]]:
        """Alias of :meth:`entries`."""
        return self.entries(**bounds)

    def keys(self, **bounds: Any) -> Iterator[Any]:
        """Keys in order; takes the same range options as :meth:`entries`."""
        return (k for k, _ in self.entries(**bounds))

    def values(self, **bounds: Any) -> Iterator[Any]:
        """Values in key order; takes the same range options as :meth:`entries`."""
        return (v for _, v in self.entries(**bounds))

    def is_empty(self) -> bool:
        return next(self.entries(), None) is None

    def __contains__(self, key: Any) -> bool:
        return self.contains(key)

    def __getitem__(self, key: Any) -> Any:
        value = self._lookup(self._map(), key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: Any) -> None:
        if not self.contains(key):
            raise KeyError(key)
        self.remove(key)

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.entries())

    def peek(self) -> Any:
        m = self._map()
        out = {self._key_of(enc, item): item[1] for enc, item in m.entries.items() if self._alive(item)}
        return out or None

    # -- flush ---------------------------------------------------------------------------------
    def collect(self, batch: Batch) -> None:
        for key in self._dirty:
            m = self._cache[key]
            prefix = self._prefix_of(key)
            if m.cleared:
                batch.delete_range(self.name, prefix, prefix_upper_bound(prefix))
                encs: Iterable[bytes] = m.entries.keys()
            else:
                encs = m.dirty
            for enc in encs:
                item = m.entries.get(enc)
                if item is None:
                    batch.delete(self.name, prefix + enc)
                else:
                    batch.put(self.name, prefix + enc, stamp(item[2]) + pack(item[1]))
            m.dirty = set()
            m.cleared = False
        self._dirty.clear()

    def _prefix_of(self, key: Key) -> bytes:
        return self.store.prefix(key)

    def reset(self) -> None:
        self._cache.clear()
        self._dirty.clear()

    def evict(self, key: Key, suffix: bytes) -> None:
        m = self._cache.get(key)
        if m is not None and not m.cleared and suffix not in m.dirty:
            m.entries.pop(suffix, None)


_BROADCAST_PREFIX = b"\x00\x00" + b"\x05\x00"  # key group 0, the empty tuple


class BroadcastHandle(MapHandle):
    """A bound BroadcastState: one map for the whole operator, not per key.

    Writable only while the runtime handles a broadcast event (``on_broadcast``); read-only in
    ``on_event``, where a write raises :class:`ReadOnlyStateError`.
    """

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, None)
        self.max_bytes: int = descriptor.max_bytes

    def _current(self) -> tuple[Key, bytes]:
        return (), _BROADCAST_PREFIX

    def _where(self, key: Any) -> str:
        # Not store.where(): that names the keyed side's current key, which is unrelated.
        op = f" in operator {self.store.operator!r}" if self.store.operator else ""
        return f"BroadcastState {self.name!r}{op}, map key {key!r}"

    def _prefix_of(self, key: Key) -> bytes:
        return _BROADCAST_PREFIX

    def _check_writable(self) -> None:
        if not self.store.broadcast_writable:
            raise ReadOnlyStateError(
                f"BroadcastState {self.name!r} is read-only in on_event; write it from "
                "on_broadcast(event, ctx), which every parallel instance runs"
            )

    def _resize(self, m: _Map, enc: bytes, value: Any) -> None:
        old = m.entries.get(enc)
        if old is not None:
            m.size -= len(enc) + 8 + len(pack(old[1]))
        if value is _MISSING:
            return
        size = m.size + len(enc) + 8 + len(pack(value))
        if size > self.max_bytes:
            if old is not None:
                m.size += len(enc) + 8 + len(pack(old[1]))
            raise StateTooLargeError(
                f"BroadcastState {self.name!r} would hold {size:,} bytes, over its limit of "
                f"{self.max_bytes:,}: it is copied to every worker; keep rules and reference "
                "data there, keyed data in MapState, or raise max_bytes="
            )
        m.size = size

