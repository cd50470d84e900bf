"""Bound handles of ValueState, ReducingState and ListState over the write-back cache.

A handle caches deserialized values per key. Writes only touch the cache and mark the key
dirty; ``collect`` serializes dirty keys into the checkpoint batch. Values are checked for
msgpack-ability when they are set, so a bad value fails at ``set()`` with the state and key
named, never later at flush.

Cached mutable values are shared with the caller: after changing a list or dict you got from
``get()``, call ``set()`` again, or the change is not checkpointed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from eddies.state.backend import Batch
from eddies.state.keys import Key, decode_element, encode_key, prefix_upper_bound
from eddies.state.store import check_value
from eddies.state.values import NEVER, pack, read_stamp, stamp, unpack

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
_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), frozenset})


class Handle:
    """What every bound handle shares: its store, declaration, TTL and cache bookkeeping."""

    def __init__(self, store: KeyedStateStore, descriptor: StateDescriptor, ttl: Ttl | None):
        self.store = store
        self.descriptor = descriptor
        self.name = descriptor.name
        self.ttl = ttl
        self.backend = store.backend
        self._dirty: set[Key] = set()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"<{type(self.descriptor).__name__} {self.name!r} bound>"

    def _expired(self, expires_at: int) -> bool:
        return expires_at <= self.backend.now(self.name)

    def _visible(self, expires_at: int) -> bool:
        if expires_at == NEVER or expires_at > self.backend.now(self.name):
            return True
        return self.ttl is not None and self.ttl.visibility == "expired_if_present"

    def _refresh_on_read(self) -> bool:
        return self.ttl is not None and self.ttl.update == "on_read_and_write"

    def collect(self, batch: Batch) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def evict(self, key: Key, suffix: bytes) -> None:
        """Forget the clean cached entry a sweep just deleted (``suffix``: map key or index)."""
        if key not in self._dirty:
            self._cache.pop(key, None)  # type: ignore[attr-defined]

    def peek(self) -> Any:
        """The current key's public value, or None, with no TTL refresh (for inspection)."""
        raise NotImplementedError


class ValueHandle(Handle):
    """A bound ValueState."""

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self.default = vars(descriptor).get("default")
        # A mutable default (e.g. []) is copied per read, so changing what one key got from
        # get() cannot change what every other key gets.
        self._copy_default = type(self.default) not in _IMMUTABLE
        self._cache: dict[Key, Any] = {}
        self._expiry: dict[Key, int] = {}

    def _load(self, key: Key) -> Any:
        self.misses += 1
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
        value = self._cache.get(key, MISSING)
        if value is MISSING:
            value = self._load(key)
        else:
            self.hits += 1
        if value is ABSENT or (self.ttl is None and not self._expiry):
            return value
        # A stamp written while the state had a TTL still counts after the TTL is switched
        # off, as it does for the sweep: the stored value carries its own expiry.
        expires_at = self._expiry.get(key, NEVER)
        if not self._visible(expires_at):
            return ABSENT
        if self._refresh_on_read() and not self._expired(expires_at):
            self._expiry[key] = self.store.expiry(self.ttl, self.descriptor)
            self._dirty.add(key)
        return value

    def get(self, default: Any = MISSING) -> Any:
        """The value for the current key, or ``default`` (the declared default if not given)."""
        value = self._read()
        if value is ABSENT:
            if default is not MISSING:
                return default
            return copy.deepcopy(self.default) if self._copy_default else self.default
        return value

    def value(self) -> Any:
        """Same as ``get()``; reads like Flink's ``ValueState.value()``."""
        return self.get()

    def set(self, value: Any) -> None:
        """Store ``value`` for the current key (None is a value; use ``clear()`` to remove)."""
        store = self.store
        key = store.key
        if type(value) is not int or not -(2**63) <= value < 2**64:
            check_value(value, store.where(self.descriptor))
        self._cache[key] = value
        if self.ttl is not None:
            self._expiry[key] = store.expiry(self.ttl, self.descriptor)
        elif self._expiry:
            self._expiry.pop(key, None)  # a write without TTL never expires
        self._dirty.add(key)

    update = set

    def clear(self) -> None:
        """Remove the value for the current key."""
        key = self.store.key
        self._cache[key] = ABSENT
        self._expiry.pop(key, None)
        self._dirty.add(key)

    def peek(self) -> Any:
        key = self.store.key
        value = self._cache.get(key, MISSING)
        if value is MISSING:
            value = self._load(key)
        if value is ABSENT or not self._visible(self._expiry.get(key, NEVER)):
            return None
        return value

    def collect(self, batch: Batch) -> None:
        if not self._dirty:
            return
        prefix = self.store.prefix
        cache = self._cache
        expiry = self._expiry
        ops = batch.ops
        name = self.name
        for key in self._dirty:
            value = cache[key]
            if value is ABSENT:
                ops.append((1, name, prefix(key), None))
            else:
                ops.append((0, name, prefix(key), stamp(expiry.get(key, NEVER)) + pack(value)))
        self._dirty.clear()

    def reset(self) -> None:
        self._cache.clear()
        self._expiry.clear()
        self._dirty.clear()

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
            self.hits += 1
            return entry
        self.misses += 1
        prefix = self.store.prefix(key)
        items = []
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
        where = self.store.where(self.descriptor)
        for value in values:
            check_value(value, where)
        return values

    def add(self, value: Any) -> None:
        """Append ``value`` to the current key's list."""
        check_value(value, self.store.where(self.descriptor))
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
            for item in live:
                if not self._expired(item[2]):
                    item[2] = expires_at
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

    def collect(self, batch: Batch) -> None:
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

    def reset(self) -> None:
        self._cache.clear()
        self._dirty.clear()
