"""Bound handles of MapState and BroadcastState: per-key sorted maps with range reads.

A map's entries are stored under ``<key group><user key element><map key>``, so the map keys
of one user key are one contiguous, ordered byte range. On first access a user key's map is
loaded with one range read into a sorted cache; range reads then run on that cache, which
also holds unflushed writes, so reads see your own writes.

Map keys are tuples (a bare value means its 1-tuple) and come back the same way: a 1-tuple as
its bare value. Range bounds follow tuple order: ``start`` is inclusive, ``start_after`` and
``end`` are exclusive, and ``prefix`` selects keys that start with the given elements.

Entries may carry metadata and an absolute expiry (``put(k, v, expire_at=, metadata=)``,
read back with ``get_with_metadata`` and ``entries(with_metadata=True)``); the stored layout
is drawn in ``entries.py``. Metadata lives in a per-map side table that exists only once an
entry of that map has some, so maps without metadata pay nothing for it.

``expire_at`` is an absolute time in ms on the state's TTL clock: the clock of the state's
``Ttl`` if it declares one, else the clock of entry TTLs already given to this map, else the
backend's default (event time: the watermark, unless ``TtlConfig(time="processing")``). It
needs no declared Ttl. An entry is visible while that clock is below ``expire_at`` and absent
from the moment it reaches it, as with a stamp computed from a Ttl. It cannot be combined with
``ttl=`` (one expiry per entry) nor used on a state whose Ttl refreshes on reads
(``update="on_read_and_write"``): a read would move an absolute expiry.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from msgpack import FormatError
from sortedcontainers import SortedList

from eddies.errors import ConfigError, ReadOnlyStateError, StateTooLargeError
from eddies.state.backend import DELETE, PUT, Batch
from eddies.state.entries import Entry, decode_payload, payload
from eddies.state.handles import Handle
from eddies.state.keys import Key, as_tuple, decode_key, encode_key, prefix_upper_bound
from eddies.state.store import SCALARS, check_value
from eddies.state.ttl import refreshes
from eddies.state.values import NEVER, NEVER_STAMP, pack, read_stamp, stamp, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore
    from eddies.state.ttl import Ttl

__all__ = ["BroadcastHandle", "MapHandle", "public_key", "range_bounds"]

_MISSING: Any = object()
_NO_KEY: Any = object()  # no key looked up yet (None is a key)

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
    (b'\\x02user\\x00', b'\\x02user\\x00\\xfe')
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


_BIG = 4096
"""Maps with more entries keep their key order in a SortedList rather than a plain list."""
_ENC_CACHE = 65536
"""Map-key encodings remembered per state (window keys repeat across users)."""


class _Map:
    """One user key's map: entries by encoded map key, and their sorted order when a range
    read has asked for it (plain dict writes; order is kept up to date once it exists)."""

    __slots__ = ("entries", "order", "dirty", "cleared", "size", "meta")

    def __init__(self, order: list[bytes] | None = None) -> None:
        # encoded map key -> [public key or None, value, expires_at]
        self.entries: dict[bytes, list[Any]] = {}
        self.order: Any = order
        self.dirty: set[bytes] = set()
        self.cleared = False
        self.size = 0
        # encoded map key -> metadata, for the entries that have some; None until one has
        self.meta: dict[bytes, Any] | None = None

    def sorted_keys(self) -> Any:
        order = self.order
        if order is None:
            keys = sorted(self.entries)
            order = self.order = keys if len(keys) <= _BIG else SortedList(keys)
        return order

    def insert(self, enc: bytes) -> None:
        order = self.order
        if order is None:
            return
        if type(order) is list:
            if not order or order[-1] < enc:
                order.append(enc)
            else:
                insort(order, enc)
            if len(order) > _BIG:
                self.order = SortedList(order)
        else:
            order.add(enc)

    def discard(self, enc: bytes) -> None:
        order = self.order
        if order is None:
            return
        if type(order) is list:
            i = bisect_left(order, enc)
            if i < len(order) and order[i] == enc:
                del order[i]
        else:
            order.discard(enc)

    def between(self, lower: bytes | None, upper: bytes | None, reverse: bool) -> list[bytes]:
        """Encoded keys in ``[lower, upper)``, as a list (a snapshot)."""
        order = self.sorted_keys()
        if type(order) is list:
            lo = 0 if lower is None else bisect_left(order, lower)
            hi = len(order) if upper is None else bisect_left(order, upper)
            encs = order[lo:hi]
            if reverse:
                encs.reverse()
            return encs
        return list(order.irange(lower, upper, inclusive=(True, False), reverse=reverse))


_PLAIN = frozenset({str, int})
"""Key element types that come back from decoding as they went in."""
_NUMBERS = frozenset({str, int, float, bool})
"""Key element types whose encoding may be cached by equality: numbers equal in Python are
one encoding (1, 1.0 and True), so an equal key finds the right bytes. Other types that
equal an int (Decimal, numpy ints) must not find them: the codec refuses those."""


def _all_of(types: frozenset[type], key: Any) -> bool:
    t = type(key)
    if t in types:
        return True
    if t is not tuple:
        return False
    return all(type(item) in types for item in key)


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

    _broadcast = False

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self._cache: dict[Key, _Map] = {}
        self._domain = ttl.time if ttl is not None else None
        self._registered = ttl  # the Ttl last passed to backend.register_ttl (by bind)
        self._encs: dict[Any, tuple[Any, bytes, Any]] = {}
        self._last_key: Any = _NO_KEY  # the last key _map() looked up, and its map
        self._last_map: _Map | None = None
        self._sized = False  # BroadcastHandle tracks the stored size

    # -- cache ---------------------------------------------------------------------------------
    def _current(self) -> tuple[Key, bytes]:
        key = self.store.key
        return key, self.store.prefix(key)

    def _map(self) -> _Map:
        key = self.store.key
        if key is self._last_key:  # the same key object as the last call: one event's calls
            return self._last_map  # type: ignore[return-value]
        m = self._cache.get(key)
        if m is None:
            return self._load_map(key, self.store.prefix(key))
        self._last_key = key
        self._last_map = m
        return m

    def _load_map(self, key: Key, prefix: bytes) -> _Map:
        self.misses += 1
        self._last_key = _NO_KEY
        if self._known_absent():
            m = self._cache[key] = _Map([])
            return m
        m = self._cache[key] = _Map()
        n = len(prefix)
        entries = m.entries
        for stored_key, data in self.backend.iterate_raw(
            self.name, prefix, prefix_upper_bound(prefix)
        ):
            try:
                value = unpack(data[8:])
            except FormatError:  # the metadata marker (entries.py), never a plain payload
                value, metadata = decode_payload(data)
                if m.meta is None:
                    m.meta = {}
                m.meta[stored_key[n:]] = metadata
            entries[stored_key[n:]] = [None, value, read_stamp(data)]
            m.size += len(stored_key) - n + len(data)
        keys = list(entries)  # the backend gave them in key order
        m.order = keys if len(keys) <= _BIG else SortedList(keys)
        return m

    def _enc(self, key: Any) -> tuple[bytes, Any]:
        """``(encoded map key, key as users see it)``, cached for str/int keys.

        A hit on the very key object cached skips the type check: callers that reuse key
        objects (the window operator does) pay one dict lookup.
        """
        encs = self._encs
        try:
            hit = encs.get(key)
        except TypeError:  # unhashable: the codec says what is wrong with it
            hit = None
        if hit is not None and (hit[0] is key or _all_of(_NUMBERS, key)):
            return hit[1], hit[2]
        enc = encode_key(key)
        # The key as decoding gives it back (1.0 and True as 1), so that a map reads the same
        # keys from its cache as after a reload.
        public = (public_key(as_tuple(key)) if _all_of(_PLAIN, key)
                  else public_key(decode_key(enc)))
        if _all_of(_NUMBERS, key):
            if len(encs) >= _ENC_CACHE:
                encs.clear()
            encs[key] = (key, enc, public)
        return enc, public

    def _mark(self, m: _Map, enc: bytes) -> None:
        m.dirty.add(enc)
        self._dirty.add(() if self._broadcast else self.store.key)

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
        if ttl is not self._registered and ttl != self._registered:  # a new entry Ttl
            if self._domain is not None and ttl.time != self._domain:
                raise ConfigError(
                    f"{self.store.where(self.descriptor)}: entry Ttl time {ttl.time!r} "
                    f"differs from the map's {self._domain!r}; one MapState uses one clock"
                )
            self._domain = ttl.time
            # The automatic sweep lag heeds entry TTLs; what reads show is the map's own
            # visibility (see _visible), whatever an entry's Ttl says.
            self.backend.register_ttl(self.name, ttl, shows_expired=self.ttl is not None
                                      and self.ttl.visibility == "expired_if_present")
            self._registered = ttl
        return self.store.expiry(ttl, self.descriptor)

    # -- writes --------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        """Keyed maps are always writable; BroadcastHandle overrides."""

    def _where(self, key: Any) -> str:
        return f"{self.store.where(self.descriptor)}, map key {key!r}"

    def _absolute(self, expire_at: Any, ttl: Ttl | None, key: Any) -> int:
        """The stamp of an entry put with ``expire_at`` (see the module docstring)."""
        if self._broadcast:
            raise ConfigError(
                f"{self._where(key)}: BroadcastState entries do not expire; expire_at= is a "
                "MapState option"
            )
        if ttl is not None:
            raise ConfigError(
                f"{self._where(key)}: give ttl= (relative to the event) or expire_at= (an "
                "absolute time), not both"
            )
        if type(expire_at) is not int or not 0 <= expire_at < NEVER:
            raise ConfigError(
                f"{self._where(key)}: expire_at must be an int of ms on the state's TTL clock "
                f"(0 <= expire_at < 2**64-1), got {expire_at!r}"
            )
        if self._refresh:
            raise ConfigError(
                f"{self._where(key)}: expire_at= on a state whose Ttl has "
                "update='on_read_and_write' would be moved by the next read; declare the "
                "Ttl with update='on_write', or give ttl= instead"
            )
        if self._domain is None:  # no Ttl yet: the backend's default clock expires it
            self._domain = self.backend.time_domain(self.name)
            self.backend.register_clock(self.name, self._domain)
        return expire_at

    def _check_metadata(self, key: Any, metadata: Any) -> None:
        if self._broadcast:
            raise ConfigError(
                f"{self._where(key)}: metadata= is a MapState option; store it in the value "
                "of a BroadcastState"
            )
        check_value(metadata, lambda: f"{self._where(key)}, metadata")

    def put(
        self,
        key: Any,
        value: Any,
        ttl: Ttl | None = None,
        expire_at: int | None = None,
        metadata: Any = None,
    ) -> None:
        """Set ``key`` to ``value``.

        ``ttl`` overrides the state's TTL for this entry; ``expire_at`` instead sets its
        expiry to an absolute time in ms on the state's TTL clock (see the module docstring).
        ``metadata`` (any msgpack value; None: none) is stored with the entry and read back
        with :meth:`get_with_metadata`; a put replaces the entry's metadata too.

        >>> from eddies.state import InMemoryStateBackend, MapState, KeyedStateStore
        >>> store = KeyedStateStore(InMemoryStateBackend())
        >>> files = store.bind(MapState("files"))
        >>> store.set_key("user-1")
        >>> files.put("a.txt", b"hi", expire_at=60_000, metadata={"etag": 7})
        >>> files.get_with_metadata("a.txt")
        Entry(value=b'hi', metadata={'etag': 7}, expires_at=60000)
        >>> store.backend.set_watermark(60_000); files.get("a.txt") is None
        True
        """
        self._check_writable()
        if ttl is not None and self._broadcast:
            raise ConfigError(
                f"{self._where(key)}: BroadcastState entries do not expire (every worker "
                "holds the same table, and watermarks differ between workers); ttl= is a "
                "MapState option")
        t = type(value)
        if t is int:
            if not -(2**63) <= value < 2**64:
                check_value(value, self._where(key))
        elif t not in SCALARS or (t is str and not value.isascii()):
            try:
                pack(value)
            except (TypeError, ValueError, OverflowError):
                check_value(value, self._where(key))  # raises, naming state, key and type
        if metadata is not None:
            self._check_metadata(key, metadata)
        enc, public = self._enc(key)
        m = self._map()
        if expire_at is None:
            expires_at = NEVER if ttl is None and self.ttl is None else self._entry_expiry(ttl)
        else:
            expires_at = self._absolute(expire_at, ttl, key)
        if self._sized:
            self._resize(m, enc, value)
        entries = m.entries
        item = entries.get(enc)
        if item is None:
            entries[enc] = [public, value, expires_at]
            m.insert(enc)
        else:
            item[0] = public
            item[1] = value
            item[2] = expires_at
        if metadata is not None:
            if m.meta is None:
                m.meta = {}
            m.meta[enc] = metadata
        elif m.meta is not None:
            m.meta.pop(enc, None)
        m.dirty.add(enc)
        self._dirty.add(() if self._broadcast else self.store.key)

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
        enc = self._enc(key)[0]
        m = self._map()
        if enc in m.entries:
            if self._sized:
                self._resize(m, enc, _MISSING)  # before the pop: it reads the old entry's size
            del m.entries[enc]
            m.discard(enc)
            if m.meta is not None:
                m.meta.pop(enc, None)
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
        m.order = []
        m.dirty.clear()
        m.cleared = True
        m.size = 0
        m.meta = None
        self._dirty.add(() if self._broadcast else self.store.key)

    # -- reads ---------------------------------------------------------------------------------
    def _lookup(self, m: _Map, key: Any) -> Any:
        enc = self._enc(key)[0]
        item = m.entries.get(enc)
        if item is None:
            return _MISSING
        expires_at = item[2]
        if expires_at != NEVER:
            if not self._visible(expires_at):
                return _MISSING
            if self._refresh and not self._expired(expires_at):
                later = self._entry_expiry(None)
                if refreshes(expires_at, later):
                    item[2] = later
                    self._mark(m, enc)
        return item[1]

    def get(self, key: Any, default: Any = None) -> Any:
        """The value at ``key``, or ``default``."""
        value = self._lookup(self._map(), key)
        return default if value is _MISSING else value

    def get_with_metadata(self, key: Any) -> Entry | None:
        """``Entry(value, metadata, expires_at)`` of ``key``, or None if it is absent.

        A read like :meth:`get` (it refreshes the expiry under ``update="on_read_and_write"``);
        ``expires_at`` is None for an entry that never expires.
        """
        m = self._map()
        value = self._lookup(m, key)
        if value is _MISSING:
            return None
        enc = self._enc(key)[0]
        expires_at = m.entries[enc][2]
        meta = m.meta
        return Entry(value, None if meta is None else meta.get(enc),
                     None if expires_at == NEVER else expires_at)

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
        item = self._map().entries.get(self._enc(key)[0])
        return item is not None and self._alive(item)

    def entries(
        self,
        prefix: Any = None,
        start: Any = None,
        start_after: Any = None,
        end: Any = None,
        reverse: bool = False,
        limit: int | None = None,
        with_metadata: bool = False,
    ) -> Iterator[tuple[Any, Any]]:
        """``(key, value)`` pairs in key order, within the given range.

        ``prefix`` keeps keys that start with its elements; ``start`` is inclusive,
        ``start_after`` and ``end`` exclusive; ``reverse`` walks down; ``limit`` caps the count.
        ``with_metadata=True`` yields ``(key, Entry(value, metadata, expires_at))`` instead,
        over the same keys.
        """
        m = self._map()
        if prefix is None and start is None and start_after is None and end is None:
            order = m.sorted_keys()
            encs = list(reversed(order)) if reverse else list(order)
        else:
            lower, upper = range_bounds(prefix, start, start_after, end)
            encs = m.between(lower, upper, reverse)
        live = self._live(m, encs, limit)
        if with_metadata:
            meta = m.meta
            for enc, item in live:
                expires_at = item[2]
                yield self._key_of(enc, item), Entry(
                    item[1], None if meta is None else meta.get(enc),
                    None if expires_at == NEVER else expires_at)
            return
        key_of = self._key_of
        for enc, item in live:
            yield key_of(enc, item), item[1]

    def _live(self, m: _Map, encs: list[bytes],
              limit: int | None) -> Iterator[tuple[bytes, list[Any]]]:
        """The ``(encoded key, item)`` of ``encs`` that are present and not expired, at most
        ``limit`` of them."""
        produced = 0
        entries = m.entries
        for enc in encs:
            if limit is not None and produced >= limit:
                return
            item = entries.get(enc)
            if item is None:
                continue
            expires_at = item[2]
            if expires_at != NEVER and not self._visible(expires_at):
                continue
            produced += 1
            yield enc, item

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
        entries = m.entries
        out = {self._key_of(enc, entries[enc]): entries[enc][1]
               for enc in m.between(None, None, False) if self._alive(entries[enc])}
        return out or None

    # -- flush ---------------------------------------------------------------------------------
    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        if not self._dirty:
            return
        ops = batch.ops
        start = len(ops)
        append = ops.append
        name = self.name
        for key in self._dirty:
            m = self._cache[key]
            prefix = self._prefix_of(key)
            entries = m.entries
            meta = m.meta
            if m.cleared:
                batch.delete_range(name, prefix, prefix_upper_bound(prefix))
                encs: Iterable[bytes] = m.between(None, None, False)
            else:
                encs = m.dirty
            for enc in encs:
                item = entries.get(enc)
                if item is None:
                    append((DELETE, name, prefix + enc, None))
                else:
                    expires_at = item[2]
                    append((PUT, name, prefix + enc,
                            (NEVER_STAMP if expires_at == NEVER else stamp(expires_at))
                            + (pack(item[1]) if meta is None or enc not in meta
                               else payload(item[1], meta[enc]))))
            m.dirty.clear()
            m.cleared = False
        self._dirty.clear()
        self._index_ops(batch, start, expiry_index)

    def _prefix_of(self, key: Key) -> bytes:
        return self.store.prefix(key)

    def reset(self) -> None:
        self._cache.clear()
        self._dirty.clear()
        self._complete = None
        self._last_key = _NO_KEY

    def trim(self, limit: int) -> int:
        self._last_key = _NO_KEY
        return super().trim(limit)

    def evict(self, key: Key, suffix: bytes) -> None:
        m = self._cache.get(key)
        if (m is not None and not m.cleared and suffix not in m.dirty
                and m.entries.pop(suffix, None) is not None):
            m.discard(suffix)
            if m.meta is not None:
                m.meta.pop(suffix, None)


_BROADCAST_PREFIX = b"\x00\x00" + b"\x05\x00"  # key group 0, the empty tuple


class BroadcastHandle(MapHandle):
    """A bound BroadcastState: one map for the whole operator, not per key.

    Writable only while the runtime handles a broadcast event (``on_broadcast``); read-only in
    ``on_event``, where a write raises :class:`ReadOnlyStateError`.
    """

    _broadcast = True

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, None)
        self.max_bytes: int = descriptor.max_bytes
        self._sized = True

    def _current(self) -> tuple[Key, bytes]:
        return (), _BROADCAST_PREFIX

    def _map(self) -> _Map:
        m = self._cache.get(())
        if m is not None:
            return m
        return self._load_map((), _BROADCAST_PREFIX)

    def preload(self) -> None:
        """Load the table now (startup), in one range read."""
        self._map()

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

