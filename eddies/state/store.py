"""KeyedStateStore: the current key, the write-back caches, and the atomic flush.

The runtime sets ``store.key`` and ``store.timestamp`` before it calls user code. The key is
in its :func:`~eddies.state.keys.state_key` form: a bare value for a 1-tuple, else a tuple.
Handles bound to the store read and write a cache of deserialized values; :meth:`collect`
turns the dirty entries into one :class:`Batch`, which the caller writes together with its own
checkpoint data (timers, source positions, watermark).

Stored keys::

    +---------------------+-----------------------------+--------------------------------+
    | key group (2 B, BE) | user key as one nested      | map key (tuple codec) or list  |
    |                     | tuple element (05 .. 00)    | index (int element); else none |
    +---------------------+-----------------------------+--------------------------------+

The key group is ``crc32(user key element) % max_parallelism`` unless the runtime pins it
(``store.key_group``; under Kafka it is the input partition).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from itertools import islice, repeat
from typing import Any

from eddies.errors import ConfigError, MissingTimestampError, StateSerializationError
from eddies.state.backend import Batch, Op, StateBackend
from eddies.state.descriptors import StateDescriptor
from eddies.state.keys import decode_user_key, encode_element, state_key
from eddies.state.ttl import MIN_TIME, Ttl, TtlConfig, TtlStateBackend
from eddies.state.values import NEVER, pack

__all__ = ["DEFAULT_CACHE_ENTRIES", "SCALARS", "KeyedStateStore", "check_value", "describe_key"]

SCALARS = frozenset({str, float, bool, type(None), bytes})
"""Types msgpack encodes whatever the value (a non-ASCII str still needs valid Unicode):
writes of them skip the serializability check."""
MAX_KEY_GROUPS = 32768
"""Key groups fit in 15 bits, so a stored key never starts with FF (see ``ttl.py``)."""
DEFAULT_CACHE_ENTRIES = 200_000
"""Cached keys per state (and cached key prefixes per store) kept across checkpoints."""


def describe_key(key: Any) -> str:
    """A key as users wrote it: a bare value for a 1-tuple (unless that value is a tuple)."""
    if type(key) is not tuple:
        return repr(key)
    return repr(key[0]) if len(key) == 1 and type(key[0]) is not tuple else repr(key)


def check_value(value: Any, where: str | Callable[[], str]) -> None:
    """Raise StateSerializationError now if msgpack could not store ``value`` at flush.

    ``where`` names the state and key for the message; pass a callable to build that text
    only when the check fails (it runs on every write).
    """
    t = type(value)
    if t in SCALARS:
        if t is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise StateSerializationError(
                    f"{_text(where)}: cannot serialize str ({exc}); store valid Unicode text "
                    "(no lone surrogates), or bytes"
                ) from exc
        return
    if t is int:  # any size: beyond 64 bits as a msgpack extension (see values.py)
        return
    try:
        pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StateSerializationError(
            f"{_text(where)}: cannot serialize {t.__name__} ({exc}); store None, bool, int, "
            "float, str, "
            "bytes, or lists/dicts of those (e.g. an int of epoch ms instead of a datetime)"
        ) from exc


def _text(where: str | Callable[[], str]) -> str:
    return where if isinstance(where, str) else where()


class KeyedStateStore:
    """Key-scoped state over a backend, with write-back caches flushed as one batch.

    >>> from eddies.state import InMemoryStateBackend, ValueState
    >>> store = KeyedStateStore(InMemoryStateBackend())
    >>> count = store.bind(ValueState("count", default=0))
    >>> store.set_key("alice"); count.set(count.get() + 1)
    >>> store.flush(), store.backend.count("count")
    (1, 1)
    """

    def __init__(
        self,
        backend: StateBackend,
        *,
        max_parallelism: int = 128,
        operator: str = "",
        ttl_config: TtlConfig | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        if cache_entries < 1:
            raise ConfigError(f"cache_entries must be at least 1, got {cache_entries}")
        if not isinstance(backend, TtlStateBackend):
            backend = TtlStateBackend(backend, ttl_config or TtlConfig(), namespace=operator)
        if not 1 <= max_parallelism <= MAX_KEY_GROUPS:
            raise ConfigError(
                f"max_parallelism must be in 1..{MAX_KEY_GROUPS} (as in Flink), "
                f"got {max_parallelism}"
            )
        self.backend: TtlStateBackend = backend
        self.max_parallelism = max_parallelism
        self.operator = operator
        self.key: Any = ()
        self._key_group: int | None = None
        self.groups_pinned = False
        """True once the runtime pinned key groups (see :attr:`key_group`): cached prefixes
        are then the only record of the group each key was seen under."""
        self.timestamp: int | None = None
        self.broadcast_writable = False
        self.handles: dict[str, Any] = {}
        self.cache_entries = cache_entries
        """Keys each state keeps cached across checkpoints; beyond it, clean entries go."""
        self.cached_prefixes: dict[Any, bytes] = {}
        """Stored-key prefixes by key (a state_key), as :meth:`prefix` computed them; the
        hot path reads it to skip validating keys already seen."""
        self._deferred: list[tuple[list[Any], int | None]] = []
        """The keys of the batches pushed under pinned key groups since the last collect,
        each with its group (see :meth:`defer_prefixes`)."""
        self._first_groups: dict[Any, int | None] = {}
        """The group of the first deferred batch of each key, for the first
        ``_indexed`` deferred batches (built when an unpinned prefix first needs it)."""
        self._indexed = 0
        backend.add_sweep_listener(self._evict_swept)

    # -- binding -------------------------------------------------------------------------------
    def bind(self, descriptor: StateDescriptor) -> Any:
        """Create (or return) the handle of ``descriptor`` in this store."""
        from eddies.state import expiring, handles, maps

        existing = self.handles.get(descriptor.name)
        if existing is not None:
            if existing.descriptor is not descriptor and type(existing.descriptor) is not type(
                descriptor
            ):
                raise ConfigError(
                    f"state {descriptor.name!r} is declared twice with different kinds "
                    f"({existing.descriptor!r}, {descriptor!r})"
                )
            return existing
        ttl = descriptor.ttl or self.backend.config.default_ttl()
        if descriptor.kind == "broadcast":
            ttl = None
        if ttl is not None:
            self.backend.register_ttl(descriptor.name, ttl)
        on_expire = getattr(descriptor, "on_expire", False)
        cls = {
            "value": expiring.ExpiringValueHandle if on_expire else handles.ValueHandle,
            "reducing": (expiring.ExpiringReducingHandle if on_expire
                         else handles.ReducingHandle),
            "list": handles.ListHandle,
            "map": maps.MapHandle,
            "broadcast": maps.BroadcastHandle,
        }[descriptor.kind]
        handle = cls(self, descriptor, ttl)
        self.handles[descriptor.name] = handle
        return handle

    @property
    def key_group(self) -> int | None:
        """The key group new keys get (None: ``crc32 % max_parallelism``)."""
        return self._key_group

    @key_group.setter
    def key_group(self, group: int | None) -> None:
        # Once the runtime pins groups (Kafka: the input partition), a cached prefix is the
        # only record of the group a key was seen under, so prefixes are never trimmed.
        if group is not None:
            self.groups_pinned = True
        self._key_group = group

    def defer_prefixes(self, keys: list[Any]) -> None:
        """Note that ``keys`` (ASCII str keys, which always encode) are being pushed under
        the current key group, instead of taking the prefix of each one not seen before now.

        Under pinned groups (Kafka: the partition being pushed) a key takes the group pinned
        when its prefix is first needed: a read that misses the cache, a timer, a TTL stamp.
        A key only written blind (the handles' fast path needs no prefix) needs it first at
        the checkpoint, unpinned: :meth:`prefix` then gives it the group of the first batch
        it came in since the last checkpoint. Looking every key of a batch up before the
        push instead costs about a tenth of the Kafka worker's time, for keys that are
        nearly all known. The next :meth:`collect` forgets the batches.

        >>> from eddies.state import InMemoryStateBackend
        >>> store = KeyedStateStore(InMemoryStateBackend())
        >>> store.key_group = 3
        >>> store.defer_prefixes(["a", "b"])
        >>> store.key_group = 4
        >>> store.defer_prefixes(["b", "c"])
        >>> group = lambda key: int.from_bytes(store.prefix(key)[:2], "big")
        >>> group("c")  # needed while its batch is pushed
        4
        >>> store.key_group = None  # the checkpoint
        >>> group("b"), group("c")
        (3, 4)
        """
        self._deferred.append((keys, self._key_group))

    def _deferred_group(self, key: Any) -> int | None:
        """The group of the first deferred batch ``key`` came in (None: none)."""
        first = self._first_groups
        for keys, group in self._deferred[self._indexed:]:
            deque(map(first.setdefault, keys, repeat(group)), 0)  # the first batch wins
        self._indexed = len(self._deferred)
        return first.get(key)

    def _forget_deferred(self) -> None:
        self._deferred.clear()
        self._first_groups.clear()
        self._indexed = 0

    def pin_prefix(self, key: Any, prefix: bytes, *, replace: bool = True) -> None:
        """Cache ``prefix`` as ``key``'s stored-key prefix (key group included): a key read
        back from the store (a timer's) keeps the group it was stored under when the runtime
        pins groups. ``replace=False`` keeps a prefix already cached."""
        if replace:
            self.cached_prefixes[key] = prefix
        else:
            self.cached_prefixes.setdefault(key, prefix)

    # -- current key ---------------------------------------------------------------------------
    def set_key(self, key: Any, timestamp: int | None = None) -> None:
        """Make ``key`` (a bare value means its 1-tuple) the key handles read and write.

        Raises :class:`~eddies.errors.KeyEncodingError` for a key the codec cannot store.
        """
        key = state_key(key)
        self.prefix(key)  # validates, and is cached for the handles that follow
        self.key = key
        self.timestamp = timestamp

    def prefix(self, key: Any) -> bytes:
        """The stored-key prefix (key group + user key element) of ``key`` (a state_key)."""
        try:
            p = self.cached_prefixes.get(key)
        except TypeError:  # unhashable (a list, a dict): let the codec say what is wrong
            encode_element(key)
            raise
        if p is None:
            element = encode_element(key)
            group = self._key_group
            if group is None and self._deferred:  # a key written blind (defer_prefixes)
                group = self._deferred_group(key)
            if group is None:
                group = zlib.crc32(element) % self.max_parallelism
            elif not 0 <= group < MAX_KEY_GROUPS:
                raise ConfigError(f"key group {group} is out of range 0..{MAX_KEY_GROUPS - 1}")
            p = group.to_bytes(2, "big") + element
            self.cached_prefixes[key] = p
        return p

    def where(self, descriptor: StateDescriptor) -> str:
        op = f" in operator {self.operator!r}" if self.operator else ""
        return f"{type(descriptor).__name__} {descriptor.name!r}{op} for key {describe_key(self.key)}"

    def expiry(self, ttl: Ttl | None, descriptor: StateDescriptor) -> int:
        """The expires_at stamp for a write made now under ``ttl``.

        Event time counts from the timestamp of the record (or timer) being handled. A write
        with no timestamp counts from the watermark once there is one, and raises
        :class:`~eddies.errors.MissingTimestampError` before that.
        """
        if ttl is None:
            return NEVER
        if ttl.time == "event":
            base = self.timestamp
            if base is None:
                if self.backend.watermark == MIN_TIME:
                    raise MissingTimestampError(
                        f"{self.where(descriptor)}: an event-time TTL needs the record's "
                        "timestamp; give the source timestamp=..., pass timestamp= to the "
                        "harness, or declare Ttl(..., time='processing')"
                    )
                base = self.backend.watermark
        else:
            base = self.backend.processing_time()
        expires_at = base + ttl.duration_ms
        if expires_at < 0:
            # Stamps are unsigned ms: one before 1970 would read as 0, still live at the
            # negative watermarks of such input.
            raise StateSerializationError(
                f"{self.where(descriptor)}: a TTL from time {base} expires at {expires_at}, "
                "before 1970, which a stored expiry cannot hold; event-time TTL needs "
                "timestamps whose expiry is at or after 0 ms (shift the input's times)")
        return min(expires_at, NEVER - 1)

    # -- flushing ------------------------------------------------------------------------------
    def collect(self, batch: Batch | None = None) -> Batch:
        """Move every dirty cache entry into ``batch`` (a new one if None) and mark it clean.

        First it trims the caches to ``cache_entries`` per state, dropping the oldest clean
        entries: the batch collected before this one has been written by now, so they are
        in the backend. Each batch must be written before the next collect.
        """
        batch = batch if batch is not None else Batch()
        self.trim()
        index: list[Op] = []
        for handle in self.handles.values():
            handle.collect(batch, index)
        if index:
            batch.ops.extend(index)  # after the state writes, as TtlStateBackend.index_ops does
            self.backend.lower_sweep_floor(index)
        self._forget_deferred()  # every dirty key has its prefix now (see defer_prefixes)
        return batch

    def trim(self, limit: int | None = None) -> int:
        """Drop the oldest clean cache entries beyond ``limit`` (``cache_entries``) per state,
        and cached key prefixes beyond it (unless key groups are pinned: see ``key_group``);
        returns how many state entries were dropped."""
        limit = self.cache_entries if limit is None else limit
        dropped = sum(handle.trim(limit) for handle in self.handles.values())
        prefixes = self.cached_prefixes
        excess = len(prefixes) - limit
        if excess > 0 and not self.groups_pinned:
            for key in list(islice(prefixes, excess)):
                del prefixes[key]
        return dropped

    def cached_entries(self) -> int:
        """Cached keys of the fullest state (what ``cache_entries`` bounds)."""
        return max((handle.cached_count() for handle in self.handles.values()), default=0)

    def flush(self, batch: Batch | None = None, sync: bool = False) -> int:
        """Write dirty state plus ``batch`` as one atomic write; returns the number of ops."""
        batch = self.collect(batch)
        self.backend.inner.write(batch, sync=sync)
        return len(batch)

    def _evict_swept(self, state: str, stored_keys: list[bytes]) -> None:
        handle = self.handles.get(state)
        if handle is None:
            return
        handle.swept_while_dirty()
        if not handle.evicts_swept:
            return
        evict = handle.evict
        for stored in stored_keys:
            key, end = decode_user_key(stored, 2)
            evict(key, stored[end:])

    def clear_cache(self) -> None:
        """Forget every clean cached entry (dirty ones must be flushed first)."""
        for handle in self.handles.values():
            handle.reset()
        self.cached_prefixes.clear()
        self._forget_deferred()
        self.backend.reset_sweep_floor()  # what was written meanwhile did not pass through us
