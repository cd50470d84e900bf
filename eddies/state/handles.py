"""Bound handles of ValueState, ReducingState and ListState over the write-back cache.

A handle caches deserialized values per key. Writes touch the cache and mark the key dirty;
``collect`` moves dirty keys into the checkpoint batch. A ValueState or ReducingState value is
serialized when it is set: the packing doubles as the msgpack check, so a bad value fails at
``set()`` with the state and key named, never later at flush; and it runs while the value is
in the CPU cache, where packing it again at the checkpoint would mean reading every dirty
value back from cold memory (with 100k keys that costs more than the packing itself).

Cached mutable values are shared with the caller: after changing a list or dict you got from
``get()``, call ``set()`` again, or the change is not checkpointed.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable
from functools import partial
from itertools import compress, repeat
from operator import is_, not_
from typing import TYPE_CHECKING, Any

from eddies.errors import StateSerializationError
from eddies.state.backend import PUT, Batch
from eddies.state.keys import (
    Key,
    decode_element,
    encode_key,
    prefix_upper_bound,
)
from eddies.state.store import check_value
from eddies.state.ttl import refreshes
from eddies.state.values import NEVER, NEVER_STAMP, pack, read_stamp, stamp, unpack

if TYPE_CHECKING:
    from eddies.state.descriptors import StateDescriptor
    from eddies.state.store import KeyedStateStore
    from eddies.state.ttl import Ttl

__all__ = ["ListHandle", "ReducingHandle", "ValueHandle"]


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
MISSING: Any = object()
_is_absent = partial(is_, ABSENT)
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), frozenset})
_be_pack = struct.Struct(">Q").pack


def _prefixes_of(store: KeyedStateStore, keys: list[Key]) -> list[bytes]:
    """The stored-key prefixes of ``keys``, from the store's cache in one C-level pass; the
    few keys not there yet (new, or trimmed since) are encoded one by one."""
    prefixes: list[Any] = list(map(store.cached_prefixes.get, keys))
    i = -1
    try:
        while True:
            i = prefixes.index(None, i + 1)
            prefixes[i] = store.prefix(keys[i])
    except ValueError:
        pass
    return prefixes


class Handle:
    """What every bound handle shares: its store, declaration, TTL and cache bookkeeping."""

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor, ttl: Ttl | None):
        self.store = store
        self.descriptor = descriptor
        self.name = descriptor.name
        self.ttl = ttl
        self.backend = store.backend
        self._dirty: set[Key] = set()
        self.misses = 0
        """Reads the cache could not answer (a backend read, unless the state is fresh)."""
        self.evictions = 0
        """Clean cache entries dropped to keep the cache within ``store.cache_entries``."""
        # True once the backend is known to hold nothing of this state that the cache lacks
        # (it was empty when first read and nothing was evicted since): a miss is then an
        # absent key, with no backend read. None: not checked yet.
        self._complete: bool | None = None
        self._refresh = ttl is not None and ttl.update == "on_read_and_write"
        self._here = self._describe  # the error context, built only when a check fails
        self.evicts_swept = True
        """Whether entries a sweep deletes must leave the cache (see ``evict``)."""

    def __repr__(self) -> str:
        return f"<{type(self.descriptor).__name__} {self.name!r} bound>"

    def _describe(self) -> str:
        return self.store.where(self.descriptor)

    def _known_absent(self) -> bool:
        """Whether a key missing from the cache is missing from the backend too."""
        complete = self._complete
        if complete is None:
            complete = self._complete = self.backend.is_empty(self.name)
        return complete

    def _expired(self, expires_at: int) -> bool:
        return expires_at <= self.backend.now(self.name)

    def _visible(self, expires_at: int) -> bool:
        if expires_at == NEVER or expires_at > self.backend.now(self.name):
            return True
        return self.ttl is not None and self.ttl.visibility == "expired_if_present"

    def _refresh_on_read(self) -> bool:
        return self._refresh

    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        """Move dirty entries into ``batch``; expiry-index entries for them go to
        ``expiry_index`` (or to ``batch`` when not given)."""
        raise NotImplementedError

    def _index_ops(self, batch: Batch, start: int, expiry_index: list[Any] | None) -> None:
        """Expiry-index entries for the ops this handle added to ``batch`` from ``start``."""
        if self.backend.expires(self.name):
            ops = self.backend.index_ops(batch.ops[start:])
            (batch.ops if expiry_index is None else expiry_index).extend(ops)

    def reset(self) -> None:
        raise NotImplementedError

    def cached_count(self) -> int:
        """Keys with a cached entry (what ``cache_entries`` bounds)."""
        return len(self._cache)  # type: ignore[attr-defined]

    def trim(self, limit: int) -> int:
        """Drop the oldest clean cached entries beyond ``limit``; returns how many."""
        cache = self._cache  # type: ignore[attr-defined]
        excess = len(cache) - limit
        if excess <= 0:
            return 0
        dirty = self._dirty
        victims = []
        for key in cache:
            if key not in dirty:
                victims.append(key)
                if len(victims) >= excess:
                    break
        self._evicted(victims, list(map(cache.pop, victims)))
        self.evictions += len(victims)
        if victims:
            self._complete = False
        return len(victims)

    def _evicted(self, keys: list[Key], dropped: list[Any]) -> None:
        """Hook: forget what else is cached for ``keys``, whose cached entries were
        ``dropped``."""

    def swept_while_dirty(self) -> None:
        """Hook: a sweep just deleted expired entries of this state (before ``evict``)."""

    def evict(self, key: Key, suffix: bytes) -> None:
        """Forget the clean cached entry a sweep just deleted (``suffix``: map key or index)."""
        if key not in self._dirty and self._cache.pop(key, None) is not None:  # type: ignore[attr-defined]
            # A list is dropped whole while the backend keeps its other elements.
            self._complete = False

    def peek(self) -> Any:
        """The current key's public value, or None, with no TTL refresh (for inspection)."""
        raise NotImplementedError


class ValueHandle(Handle):
    """A bound ValueState (``eddies.state.expiring`` holds those declared with on_expire)."""

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self.default = vars(descriptor).get("default")
        # A mutable default (e.g. []) is copied per read, so changing what one key got from
        # get() cannot change what every other key gets.
        self._copy_default = type(self.default) not in _IMMUTABLE
        self._cache: dict[Key, Any] = {}
        self._expiry: dict[Key, int] = {}
        # Dirty keys with their stored bytes (stamp + msgpack), or ABSENT once cleared.
        self._dirty: dict[Key, Any] = {}  # type: ignore[assignment]
        self._cleared = False  # some dirty key is ABSENT
        # An event-time TTL stamps a write with the record's timestamp + ttl, inline.
        self._event_ttl_ms = (ttl.duration_ms if ttl is not None and ttl.time == "event"
                              else None)
        # Reads of an event-time TTL without refresh-on-read or expired_if_present compare
        # the stamp with the watermark, inline.
        self._watermark_only = (
            not self._refresh
            and (ttl is None or ttl.visibility == "never_expired")
            and self.backend.time_domain(self.name) == "event"
        )
        # Expiry index entries are lazy (see ttl.py): a write needs one only when the key's
        # previous stamp does not vouch for an entry at or before the new one (no previous
        # stamp cached, a later one, or one a sweep may have reached). Such keys wait here
        # for the next collect; a duplicate entry is harmless, a missing one is not.
        self._unindexed: set[Key] = set()
        if ttl is not None:
            self.backend.set_lazy_index(self.name)
        # An expired value reads as absent whether or not it is still cached, so a sweep
        # need not decode the keys it deletes to evict them, unless expired values stay
        # visible until deleted.
        self.evicts_swept = ttl is not None and ttl.visibility == "expired_if_present"
        self._install_fast_paths()

    def _stamp_of(self, key: Key, default: Any = NEVER) -> Any:
        """The cached stamp of ``key``'s value, or ``default``."""
        return self._expiry.get(key, default)

    def _cached(self, key: Key) -> Any:
        """``key``'s cached value, ABSENT, or MISSING when not cached."""
        return self._cache.get(key, MISSING)

    def _install_fast_paths(self) -> None:
        """Give this handle ``get`` and ``set`` closures for its common case (a cached value;
        no TTL, or an event-time TTL checked against the watermark), which fall back to the
        methods for everything else. An instance attribute is found before the class's
        method and needs no bound-method object: per event it is the handle's whole cost."""
        cache = self._cache
        cache_get = cache.get
        dirty = self._dirty
        expiry = self._expiry
        store = self.store
        backend = self.backend
        slow_get = self.get
        slow_set = self.set
        ttl_ms = self._event_ttl_ms
        if self.ttl is None:

            def get(default: Any = MISSING) -> Any:
                value = cache_get(store.key, MISSING)
                if value is MISSING or value is ABSENT or expiry:
                    return slow_get(default)
                return value

            def set_(value: Any) -> None:
                if expiry:
                    slow_set(value)
                    return
                try:
                    payload = pack(value)
                except (TypeError, ValueError, OverflowError):
                    slow_set(value)  # raises, naming state, key and type
                    return
                key = store.key
                cache[key] = value
                dirty[key] = NEVER_STAMP + payload

        elif self._watermark_only and ttl_ms is not None:

            def get(default: Any = MISSING) -> Any:
                key = store.key
                value = cache_get(key, MISSING)
                if value is MISSING or value is ABSENT:
                    return slow_get(default)
                expires_at = expiry.get(key)
                if expires_at is None or expires_at > backend.watermark:
                    return value
                return slow_get(default)

            unindexed = self._unindexed.add

            def set_(value: Any) -> None:
                ts = store.timestamp
                if ts is None:
                    slow_set(value)
                    return
                expires_at = ts + ttl_ms  # type: ignore[operator]
                if not 0 <= expires_at < NEVER:
                    slow_set(value)
                    return
                try:
                    payload = pack(value)
                except (TypeError, ValueError, OverflowError):
                    slow_set(value)  # raises, naming state, key and type
                    return
                key = store.key
                cache[key] = value
                old = expiry.get(key)
                # As _stamp: no sweep has reached a stamp above backend.event_horizon.
                if old is None or expires_at < old or old <= backend.event_horizon:
                    unindexed(key)
                expiry[key] = expires_at
                dirty[key] = stamp(expires_at) + payload

        else:
            return
        if type(self) is ValueHandle:
            self.get = get  # type: ignore[method-assign]
        self.set = set_  # type: ignore[method-assign]
        self.update = set_  # type: ignore[method-assign]

    def _load(self, key: Key) -> Any:
        self.misses += 1
        if self._known_absent():
            if self.store.groups_pinned:
                # The pinned group now, while the key's batch is pushed, rather than from
                # the deferred batches at the checkpoint (KeyedStateStore.defer_prefixes).
                self.store.prefix(key)
            self._cache[key] = ABSENT
            return ABSENT
        data = self.backend.get_raw(self.name, self.store.prefix(key))
        if data is None:
            self._cache[key] = ABSENT
            return ABSENT
        value = unpack(data[8:])
        self._cache[key] = value
        expires_at = read_stamp(data)
        if expires_at != NEVER:
            self._expiry[key] = expires_at
        return value

    def _read(self) -> Any:
        key = self.store.key
        value = self._cached(key)
        if value is MISSING:
            value = self._load(key)
        if value is ABSENT or (self.ttl is None and not self._expiry):
            return value
        return self._live(key, value)

    def _live(self, key: Key, value: Any) -> Any:
        """``value`` as TTL lets the current read see it (ABSENT once expired)."""
        # A stamp written while the state had a TTL still counts after the TTL is switched
        # off, as it does for the sweep: the stored value carries its own expiry.
        expires_at = self._stamp_of(key)
        if not self._visible(expires_at):
            return ABSENT
        if self._refresh and not self._expired(expires_at):
            later = self.store.expiry(self.ttl, self.descriptor)
            if refreshes(expires_at, later):
                self._stamp(key, later)
                self._mark_dirty(key, stamp(later) + pack(value))
        return value

    def _mark_dirty(self, key: Key, data: Any) -> None:
        """``key``'s stored bytes (stamp + msgpack), or ABSENT, for the next collect."""
        self._dirty[key] = data

    def _stamp(self, key: Key, expires_at: int) -> None:
        """Cache ``expires_at`` as the key's stamp, noting whether the write needs an index
        entry: not when its previous stamp is no later and above the index horizon, for the
        stored value with that stamp has an entry at or before it (ttl.py's invariant) and a
        dirty one was vouched for the same way or is noted already."""
        old = self._expiry.get(key)
        if (old is None or expires_at < old
                or old <= self.backend.index_horizon(self.name)):
            self._unindexed.add(key)
        self._expiry[key] = expires_at

    def get(self, default: Any = MISSING) -> Any:
        """The value for the current key, or ``default`` (the declared default if not given)."""
        key = self.store.key
        value = self._cached(key)
        if value is MISSING:
            value = self._load(key)
        if value is not ABSENT:
            expiry = self._expiry
            if self.ttl is None and not expiry:
                return value
            if self._watermark_only:
                expires_at = self._stamp_of(key, None)
                if expires_at is None or expires_at > self.backend.watermark:
                    return value
            else:
                value = self._live(key, value)
                if value is not ABSENT:
                    return value
        if default is not MISSING:
            return default
        return copy.deepcopy(self.default) if self._copy_default else self.default

    def value(self) -> Any:
        """Same as ``get()``; reads like Flink's ``ValueState.value()``."""
        return self.get()

    def set(self, value: Any) -> None:
        """Store ``value`` for the current key (None is a value; use ``clear()`` to remove)."""
        store = self.store
        key = store.key
        payload = self._packed(value)
        self._cache[key] = value
        if self.ttl is not None:
            expires_at = self._expires_at()
            self._stamp(key, expires_at)
            self._dirty[key] = stamp(expires_at) + payload
            return
        if self._expiry:
            self._expiry.pop(key, None)  # a write without TTL never expires
        self._dirty[key] = NEVER_STAMP + payload

    update = set

    def _expires_at(self) -> int:
        """The stamp of a write made now under this state's TTL (inline for event time)."""
        store = self.store
        ttl_ms = self._event_ttl_ms
        ts = store.timestamp
        if ttl_ms is not None and ts is not None and 0 <= ts + ttl_ms < NEVER:
            return ts + ttl_ms
        return store.expiry(self.ttl, self.descriptor)

    def _packed(self, value: Any) -> bytes:
        """``value`` in msgpack, or an error naming the state, the key and the type."""
        try:
            return pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            check_value(value, self._here)  # raises, naming state, key and type
            raise StateSerializationError(  # what check_value lets by (a lone surrogate)
                f"{self._here()}: cannot serialize {type(value).__name__} ({exc})") from exc

    def clear(self) -> None:
        """Remove the value for the current key."""
        key = self.store.key
        self._cache[key] = ABSENT
        self._expiry.pop(key, None)
        self._dirty[key] = ABSENT
        self._cleared = True

    def peek(self) -> Any:
        key = self.store.key
        value = self._cached(key)
        if value is MISSING:
            value = self._load(key)
        if value is ABSENT or not self._visible(self._stamp_of(key)):
            return None
        return value

    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        # C-level loops (map/zip) over the dirty dict, which holds the stored bytes already.
        dirty = self._dirty
        if not dirty:
            return
        store = self.store
        keys = list(dirty)
        self._put_columns(batch, _prefixes_of(store, keys), list(dirty.values()))
        unindexed = self._unindexed
        if unindexed:
            target = self.backend.index_target(self.name)
            if target is not None:
                # Cleared keys and writes without a TTL (no stamp) need no entry.
                expiry = self._expiry
                need = [k for k in unindexed if k in expiry]
                if need:
                    index_cf, encoded = target
                    stamps = list(map(expiry.__getitem__, need))
                    index_keys = map(bytes.__add__,
                                     map(bytes.__add__, map(_be_pack, stamps), repeat(encoded)),
                                     _prefixes_of(store, need))
                    (batch.ops if expiry_index is None else expiry_index).extend(
                        zip(repeat(PUT), repeat(index_cf), index_keys, repeat(b"")))
            unindexed.clear()
        self._written(keys)
        dirty.clear()

    def _put_columns(self, batch: Batch, prefixes: list[bytes], values: list[Any]) -> None:
        """The dirty entries ``prefixes`` (stored-key prefixes) and ``values`` (stored bytes,
        or ABSENT once cleared) into ``batch``."""
        name = self.name
        if self._cleared:
            # Puts and deletes as one op each (every key appears once, so their order does
            # not matter), split by C-level passes rather than a tuple per entry.
            self._cleared = False
            gone = list(map(_is_absent, values))
            kept = list(map(not_, gone))
            batch.put_many(name, list(compress(prefixes, kept)), list(compress(values, kept)))
            batch.delete_many(name, list(compress(prefixes, gone)))
        else:
            batch.put_many(name, prefixes, values)

    def _written(self, keys: list[Key]) -> None:
        """``keys`` were just collected: over the cache limit, they move to the back so that
        trimming drops the least recently written ones first."""
        cache = self._cache
        if len(cache) >= self.store.cache_entries:
            for key in keys:
                cache[key] = cache.pop(key)

    def reset(self) -> None:
        self._cache.clear()
        self._expiry.clear()
        self._dirty.clear()
        self._unindexed.clear()
        self._cleared = False
        self._complete = None

    def swept_while_dirty(self) -> None:
        # A dirty write vouched for by a previous stamp may have lost that stamp's index
        # entry to this sweep (a sweep between writes and their collect: the store's API
        # allows it, though the runners sweep right after checkpoints): index them all.
        if self._dirty:
            self._unindexed.update(self._dirty)

    def _evicted(self, keys: list[Key], dropped: list[Any]) -> None:
        expiry = self._expiry
        if expiry:
            for key in keys:
                expiry.pop(key, None)

    def evict(self, key: Key, suffix: bytes) -> None:
        if key not in self._dirty:
            self._cache.pop(key, None)
            self._expiry.pop(key, None)


class ReducingHandle(ValueHandle):
    """A bound ReducingState: ``add`` folds a value in with the declared function."""

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self.fn = descriptor.fn

    def add(self, value: Any) -> None:
        """Fold ``value`` into the current key's accumulated value."""
        current = self._read()
        self.set(value if current is ABSENT else self.fn(current, value))

    def get(self, default: Any = None) -> Any:  # type: ignore[override]
        """The reduced value, or ``default`` (None) when nothing was added."""
        value = self._read()
        return default if value is ABSENT else value


class _List:
    __slots__ = ("items", "persisted", "rewrite", "stamped")

    def __init__(self, items: list[list[Any]], persisted: int) -> None:
        self.items = items  # [index, value, expires_at]
        self.persisted = persisted  # leading items already in the backend as they are
        self.rewrite = False
        self.stamped = any(item[2] != NEVER for item in items)  # any element can expire


class ListHandle(Handle):
    """A bound ListState. Each element is a stored entry of its own, keyed by its index."""

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self._cache: dict[Key, _List] = {}

    def _entry(self) -> _List:
        key = self.store.key
        entry = self._cache.get(key)
        if entry is not None:
            return entry
        self.misses += 1
        items = []
        if not self._known_absent():
            prefix = self.store.prefix(key)
            for stored_key, data in self.backend.iterate_raw(
                self.name, prefix, prefix_upper_bound(prefix)
            ):
                index = decode_element(stored_key, len(prefix))[0]
                items.append([index, unpack(data[8:]), read_stamp(data)])
        entry = self._cache[key] = _List(items, len(items))
        return entry

    def _live(self, entry: _List) -> list[list[Any]]:
        if self.ttl is None and not entry.stamped:
            return entry.items
        return [item for item in entry.items if self._visible(item[2])]

    def _check(self, values: Iterable[Any]) -> list[Any]:
        values = list(values)
        where = self._here
        for value in values:
            check_value(value, where)
        return values

    def add(self, value: Any) -> None:
        """Append ``value`` to the current key's list."""
        check_value(value, self._here)
        entry = self._entry()
        index = entry.items[-1][0] + 1 if entry.items else 0
        entry.items.append([index, value, self.store.expiry(self.ttl, self.descriptor)])
        self._dirty.add(self.store.key)

    def add_all(self, values: Iterable[Any]) -> None:
        """Append every value of ``values``."""
        values = self._check(values)
        entry = self._entry()
        index = entry.items[-1][0] + 1 if entry.items else 0
        expires_at = self.store.expiry(self.ttl, self.descriptor)
        entry.items.extend([index + i, v, expires_at] for i, v in enumerate(values))
        self._dirty.add(self.store.key)

    def update(self, values: Iterable[Any]) -> None:
        """Replace the current key's list with ``values``."""
        values = self._check(values)
        entry = self._entry()
        expires_at = self.store.expiry(self.ttl, self.descriptor)
        entry.items = [[i, v, expires_at] for i, v in enumerate(values)]
        entry.rewrite = True
        self._dirty.add(self.store.key)

    def get(self) -> list[Any]:
        """The current key's elements in insertion order (expired ones left out)."""
        entry = self._entry()
        live = self._live(entry)
        if self._refresh_on_read() and live:
            expires_at = self.store.expiry(self.ttl, self.descriptor)
            moved = False
            for item in live:
                if refreshes(item[2], expires_at) and not self._expired(item[2]):
                    item[2] = expires_at
                    moved = True
            if moved:
                entry.rewrite = True
                self._dirty.add(self.store.key)
        return [item[1] for item in live]

    def __iter__(self) -> Any:
        return iter(self.get())

    def length(self) -> int:
        """Number of (unexpired) elements."""
        return len(self._live(self._entry()))

    def __len__(self) -> int:
        return self.length()

    def is_empty(self) -> bool:
        """True when the list has no (unexpired) element."""
        return not self._live(self._entry())

    def clear(self) -> None:
        """Empty the current key's list."""
        entry = self._entry()
        entry.items = []
        entry.rewrite = True
        self._dirty.add(self.store.key)

    def peek(self) -> Any:
        entry = self._entry()
        live = self._live(entry)
        return [item[1] for item in live] if live else None

    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        if not self._dirty:
            return
        first_op = len(batch.ops)
        for key in self._dirty:
            entry = self._cache[key]
            prefix = self.store.prefix(key)
            start = entry.persisted
            if entry.rewrite:
                batch.delete_range(self.name, prefix, prefix_upper_bound(prefix))
                live = [item for item in entry.items if not self._expired(item[2])]
                entry.items = [[i, item[1], item[2]] for i, item in enumerate(live)]
                start = 0
            for index, value, expires_at in entry.items[start:]:
                batch.put(self.name, prefix + encode_key(index), stamp(expires_at) + pack(value))
            entry.persisted = len(entry.items)
            entry.rewrite = False
        self._dirty.clear()
        self._index_ops(batch, first_op, expiry_index)

    def reset(self) -> None:
        self._cache.clear()
        self._dirty.clear()
        self._complete = None
