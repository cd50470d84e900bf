"""States declared with ``on_expire=True``: their handles and the queue of their expiries.

Such a state hands each value that expires to the function's ``on_expire``, in expiry-time
order, as the watermark passes it (the operator drives this, see ``eddies.runtime.keyed``).
Its handle keeps, per cached key, one :class:`Slot`: the time of the key's live entry in the
handle's :class:`ExpiryQueue` (UNQUEUED: none), the stamp of its value (NEVER: none), the value
(ABSENT once cleared or expired), the key's stored-key prefix and its pending bytes. A read
or a write of a key finds all of it with one dict probe, and an entry that comes due or a
checkpoint finds it through the slot, with none: with 100k keys, each probe of a dict of
that size is a cache miss that costs more than the rest of the write.
"""

from __future__ import annotations

import bisect
import heapq
from operator import attrgetter
from struct import error as StructError
from typing import TYPE_CHECKING, Any

from eddies.state.handles import ABSENT, MISSING, ReducingHandle, ValueHandle
from eddies.state.keys import Key, decode_user_key
from eddies.state.values import NEVER, pack, read_stamp, stamp, unpack

if TYPE_CHECKING:
    from eddies.state.backend import Batch
    from eddies.state.store import KeyedStateStore
    from eddies.state.ttl import Ttl

__all__ = ["UNQUEUED", "ExpiringReducingHandle", "ExpiringValueHandle", "ExpiryQueue", "Slot"]

UNQUEUED = NEVER + 1
"""A slot's ``queued`` when the key has no live entry: above every stamp, so that "queued at
or before ``t``" is one comparison."""


class Slot:
    """A key's expiry bookkeeping, its cached value and its pending write, in one object
    (its fields live in the object itself, where a list's items are a second allocation).

    - ``queued``: the time of the key's live entry in the queue (UNQUEUED: none; an entry whose
      time is not its slot's ``queued`` is stale). It is the very int object of that
      entry's time (each is stored in both at once), so that telling a live entry from a
      stale one is an identity test, which reads neither int: by the time an entry comes
      due, both are cold in memory. An equal time in another object is a stale entry, or
      a duplicate of the live one.
    - ``stamp``: the value's stamp (NEVER: none).
    - ``value``: the value, ABSENT (none), or MISSING (not cached: parked, see
      :class:`ExpiringValueHandle`).
    - ``prefix``: the key's stored-key prefix (None until first needed).
    - ``pending``: the stored bytes (or ABSENT) of the key's last write, read while the key
      is dirty (the handle's dirty dict maps it to its slot). A slot keeps them after the
      checkpoint (clearing them would touch every written slot once more), and drops them
      when it is parked, so only cached slots hold them.
    """

    __slots__ = ("queued", "stamp", "value", "prefix", "pending")

    def __init__(self, queued: int, stamp: int, value: Any) -> None:
        self.queued = queued
        self.stamp = stamp
        self.value = value
        self.prefix: bytes | None = None
        self.pending: Any = None

    def __repr__(self) -> str:
        return f"Slot(queued={self.queued}, stamp={self.stamp}, value={self.value!r})"

    def __lt__(self, other: object) -> bool:
        # Entries equal up to their slot are one key's entry queued twice at one time (a
        # key has one slot while it is queued): sorting leaves them as they are.
        return False


class ExpiryQueue:
    """Entries ``(time, stored-key prefix, key, slot)`` taken in order, ``slot`` being the
    key's :class:`Slot`: a heap of coarse buckets (``time >> SHIFT``), each a list appended
    to in O(1) and sorted only when it comes due.
    Entries pushed into the bucket being taken (or earlier) are inserted in order. An entry
    whose time is not its slot's ``queued`` is stale, and one whose slot holds a later stamp
    moves on to it (see :meth:`_settle`).

    >>> q = ExpiryQueue()
    >>> for time, key in [(5000, "b"), (10, "a"), (4999, "c")]:
    ...     q.push((time, key.encode(), key, Slot(time, time, None)))
    >>> moved = Slot(12, 9000, None); q.push((12, b"d", "d", moved))  # rewritten: expires at 9000
    >>> taken = []
    >>> while q.peek() is not None:
    ...     taken.append(q.pop()[:3:2])
    >>> taken
    [(10, 'a'), (4999, 'c'), (5000, 'b'), (9000, 'd')]
    """

    SHIFT = 10  # buckets of 1,024 ms
    __slots__ = ("buckets", "order", "cur", "pos", "bucket")

    def __init__(self) -> None:
        self.buckets: dict[int, list[tuple[Any, ...]]] = {}
        self.order: list[int] = []  # heap of bucket numbers in ``buckets``
        self.cur: list[tuple[Any, ...]] = []  # the open bucket, sorted; taken up to pos
        self.pos = 0
        self.bucket: int | None = None  # the open bucket's number

    def push(self, entry: tuple[Any, ...]) -> None:
        b = entry[0] >> self.SHIFT
        bucket = self.bucket
        if bucket is not None and b <= bucket:
            bisect.insort(self.cur, entry, lo=self.pos)
            return
        entries = self.buckets.get(b)
        if entries is None:
            self.buckets[b] = [entry]
            heapq.heappush(self.order, b)
        else:
            entries.append(entry)

    def peek(self) -> tuple[Any, ...] | None:
        """The next entry, or None."""
        while self.pos >= len(self.cur):
            if not self.order:
                self.cur = []
                self.pos = 0
                self.bucket = None
                return None
            b = heapq.heappop(self.order)
            entries = self._settle(b, self.buckets.pop(b))
            entries.sort()
            self.cur = entries
            self.pos = 0
            self.bucket = b
        return self.cur[self.pos]

    def _settle(self, b: int, entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The entries of bucket ``b``, opening, that may still fire in it: stale ones are
        dropped, and those whose slot holds a later stamp move to it now
        (a later bucket, or their place in this one). Each would do the same when taken;
        moving them before the sort leaves the sort and the taking to the entries that
        expire here (the value is rewritten past its entry's time far more often than not).
        """
        shift = self.SHIFT
        buckets = self.buckets
        later_get = buckets.get
        kept: list[tuple[Any, ...]] = []
        keep = kept.append
        for entry in entries:
            slot = entry[3]
            time = entry[0]
            if slot.queued is not time:
                continue  # stale: queued elsewhere since, or fired, or cleared
            stamp = slot.stamp
            if stamp is not time and stamp > time:  # (not written since it was queued)
                slot.queued = stamp
                entry = (stamp, entry[1], entry[2], slot)
                nb = stamp >> shift
                if nb != b:
                    later = later_get(nb)
                    if later is None:
                        buckets[nb] = [entry]
                        heapq.heappush(self.order, nb)
                    else:
                        later.append(entry)
                    continue
            keep(entry)
        return kept

    def pop(self) -> tuple[Any, ...]:
        """Take the entry :meth:`peek` returned."""
        entry = self.cur[self.pos]
        self.pos += 1
        return entry

    def clear(self) -> None:
        self.buckets.clear()
        self.order.clear()
        self.cur = []
        self.pos = 0
        self.bucket = None


_prefix_of = attrgetter("prefix")
_pending_of = attrgetter("pending")


class ExpiringValueHandle(ValueHandle):
    """A bound ValueState declared with ``on_expire=True``.

    ``_cache`` maps each cached key to its slot (see the module docstring). A slot whose key
    is queued outlives its value in the cache: when ``trim`` drops the value, the slot moves
    to ``_parked`` with the value ``MISSING``, and the key's next miss takes it back. So a
    key has one slot while it is queued, which its entries reach, and ``_cache`` holds only
    slots with a value (or ABSENT), as many as ``cache_entries`` allows.
    """

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        self.expiring = ExpiryQueue()
        """A queue of ``(time, stored-key prefix, key, slot)``, one live entry at or before
        each stored value's stamp (the operator fires them); such a state writes no expiry
        index, for its expiries delete its values."""
        self._parked: dict[Key, Slot] = {}
        self.on_arm: Any = None
        """``on_arm(time)``, told of each entry put in ``expiring`` (the operator cuts its
        batch when records being pushed reach it)."""
        self._checked_get: Any = None
        self._fast_get: Any = None
        super().__init__(store, descriptor, ttl)
        self.backend.set_fires_expiries(self.name)

    # -- slots ---------------------------------------------------------------------------------
    def _slot(self, key: Key) -> Slot:
        """``key``'s slot, in the cache (a parked one is taken back; a new one is made)."""
        slot = self._cache.get(key)
        if slot is None:
            slot = self._parked.pop(key, None)
            if slot is None:
                slot = Slot(UNQUEUED, NEVER, ABSENT)
            self._cache[key] = slot
        return slot

    def _cached(self, key: Key) -> Any:
        slot = self._cache.get(key)
        return MISSING if slot is None else slot.value

    def _arm(self, slot: Slot, key: Key, time: int) -> None:
        """Make ``time`` the stamp of the value in ``key``'s ``slot``, and put an entry for
        it in ``expiring`` unless one at or before it is there already (that one moves on
        to the stamp when it comes due)."""
        slot.stamp = time
        if slot.queued <= time:
            return
        slot.queued = time
        prefix = slot.prefix
        if prefix is None:
            prefix = slot.prefix = self.store.prefix(key)
        self.expiring.push((time, prefix, key, slot))
        if time <= self.backend.watermark:
            # Written expired (a record later than the TTL): reads check stamps until it has
            # fired, at the next advance of event time.
            self.hold_checks()
        if self.on_arm is not None:
            self.on_arm(time)

    def _stamp(self, key: Key, expires_at: int) -> None:
        self._arm(self._slot(key), key, expires_at)

    def _stamp_of(self, key: Key, default: Any = NEVER) -> Any:
        slot = self._cache.get(key)
        if slot is None:
            slot = self._parked.get(key)
        return default if slot is None or slot.stamp == NEVER else slot.stamp

    def hold_checks(self) -> None:
        """Make reads compare stamps with the clock. A state with ``on_expire`` reads
        without while no entry at or before the TTL clock waits in ``expiring``: every value
        expired by the clock has fired and been deleted then. Entries wait while expiries
        fire, when a value is written expired (a record later than the TTL) until the next
        advance of event time, and after a restore that loaded them before the watermark."""
        if self._checked_get is not None:
            self.get = self._checked_get  # type: ignore[method-assign]

    def release_checks(self) -> None:
        """Expiries have fired: reads go back to the fast path unless an entry at or
        before the TTL clock still waits (one written expired and rewritten since, still
        expired, moved on to a time a timer fired before)."""
        if self._checked_get is not None:
            at = self.next_live_time()
            if at is None or at > self.backend.watermark:
                self.get = self._fast_get  # type: ignore[method-assign]

    def next_live_time(self) -> int | None:
        """The time of the next live entry in ``expiring`` (stale ones before it go), or
        None."""
        queue = self.expiring
        while (entry := queue.peek()) is not None and entry[3].queued is not entry[0]:
            queue.pop()  # stale: the key was queued earlier since, or fired
        return None if entry is None else entry[0]

    # -- reads and writes ----------------------------------------------------------------------
    def _install_fast_paths(self) -> None:
        """``get`` and ``set`` closures for an event-time TTL checked against the watermark
        (see ValueHandle._install_fast_paths): one probe of the cache finds the key's slot."""
        ttl_ms = self._event_ttl_ms
        if not self._watermark_only or ttl_ms is None:
            return
        cache = self._cache
        cache_get = cache.get
        parked = self._parked
        dirty = self._dirty
        store = self.store
        backend = self.backend
        slow_get = self.get
        slow_set = self.set
        push = self.expiring.push
        prefix = store.prefix
        handle = self
        declared = self.default
        plain_default = not self._copy_default

        def fast_get(default: Any = MISSING) -> Any:
            # No stamp to check: see hold_checks.
            slot = cache_get(store.key)
            if slot is None:
                return slow_get(default)
            value = slot.value
            if value is ABSENT:
                if plain_default:  # expired or cleared (a key's next record after on_expire)
                    return declared if default is MISSING else default
                return slow_get(default)
            return value

        def checked_get(default: Any = MISSING) -> Any:
            # get, with the stamp in the key's slot
            slot = cache_get(store.key)
            if slot is None or slot.value is ABSENT or slot.stamp <= backend.watermark:
                return slow_get(default)
            return slot.value

        def set_(value: Any) -> None:
            try:
                # TypeError: no timestamp; struct.error: a stamp out of range
                expires_at = store.timestamp + ttl_ms  # type: ignore[operator]
                pending = stamp(expires_at) + pack(value)
            except (TypeError, ValueError, OverflowError, StructError):
                slow_set(value)  # raises, naming state, key and type, or stamps otherwise
                return
            if expires_at == NEVER:
                slow_set(value)
                return
            key = store.key
            slot = cache_get(key)
            if slot is None:
                slot = handle._slot(key) if parked else Slot(UNQUEUED, NEVER, ABSENT)
                cache[key] = slot
            slot.pending = pending
            dirty[key] = slot
            slot.value = value
            queued = slot.queued
            if queued <= expires_at:  # queued at or before the stamp: moves on to it
                slot.stamp = expires_at
                return
            if queued is not UNQUEUED or expires_at <= backend.watermark:  # later entry; expired
                handle._arm(slot, key, expires_at)
                return
            # _arm, inlined for a key not queued (new, fired or cleared)
            slot.queued = slot.stamp = expires_at
            p = slot.prefix
            if p is None:
                p = slot.prefix = prefix(key)
            push((expires_at, p, key, slot))
            on_arm = handle.on_arm
            if on_arm is not None:
                on_arm(expires_at)

        if type(self) is ExpiringValueHandle:
            self._checked_get = checked_get
            self._fast_get = fast_get
            self.get = fast_get  # type: ignore[method-assign]
        self.set = set_  # type: ignore[method-assign]
        self.update = set_  # type: ignore[method-assign]

    def _load(self, key: Key) -> Any:
        """The value of ``key`` read into its slot in the cache (ABSENT if none): a miss."""
        self.misses += 1
        parked = self._parked
        if key not in parked and self._known_absent():
            if self.store.groups_pinned:
                self.store.prefix(key)  # the pinned group now (see ValueHandle._load)
            self._cache[key] = Slot(UNQUEUED, NEVER, ABSENT)
            return ABSENT
        data = self.backend.get_raw(self.name, self.store.prefix(key))
        # Only now (a failed read leaves a parked slot parked, and caches nothing):
        slot = parked.pop(key, None)
        if slot is None:
            slot = Slot(UNQUEUED, NEVER, ABSENT)
        self._cache[key] = slot
        if data is None:
            slot.queued = UNQUEUED  # a parked value deleted meanwhile: its entry is stale
            slot.stamp = NEVER
            slot.value = ABSENT
            return ABSENT
        value = slot.value = unpack(data[8:])
        expires_at = read_stamp(data)
        slot.stamp = expires_at
        if expires_at != NEVER:
            self._arm(slot, key, expires_at)  # armed already, unless restored without it
        return value

    def set(self, value: Any) -> None:
        """Store ``value`` for the current key (None is a value; use ``clear()`` to remove)."""
        key = self.store.key
        payload = self._packed(value)
        expires_at = self._expires_at()
        pending = stamp(expires_at) + payload  # a stamp that is no int raises here, first
        slot = self._slot(key)
        slot.value = value
        self._arm(slot, key, expires_at)
        slot.pending = pending
        self._dirty[key] = slot

    update = set

    def clear(self) -> None:
        """Remove the value for the current key."""
        key = self.store.key
        slot = self._slot(key)
        slot.queued = UNQUEUED  # its queued entry is stale
        slot.stamp = NEVER
        slot.value = ABSENT
        slot.pending = ABSENT
        self._dirty[key] = slot
        self._cleared = True

    def _mark_dirty(self, key: Key, data: Any) -> None:
        slot = self._slot(key)
        slot.pending = data
        self._dirty[key] = slot

    def collect(self, batch: Batch, expiry_index: list[Any] | None = None) -> None:
        # The dirty slots carry their keys' prefixes and stored bytes: no lookup per key.
        dirty = self._dirty
        if not dirty:
            return
        slots = list(dirty.values())
        prefixes = list(map(_prefix_of, slots))
        if not all(prefixes):  # None: a key cleared or loaded absent, never queued
            prefix = self.store.prefix
            for i, key in enumerate(dirty):
                if prefixes[i] is None:
                    prefixes[i] = slots[i].prefix = prefix(key)
        self._put_columns(batch, prefixes, list(map(_pending_of, slots)))
        self._unindexed.clear()  # noted by swept_while_dirty; the queue indexes this state
        self._written(list(dirty))
        dirty.clear()

    # -- the cache -----------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.expiring.clear()  # rebuilt from the store by the operator's loader
        self._parked.clear()

    def _evicted(self, keys: list[Key], dropped: list[Any]) -> None:
        # A queued key's slot stays reachable for its entry and its next miss.
        parked = self._parked
        for key, slot in zip(keys, dropped, strict=True):
            if slot.queued is not UNQUEUED:
                slot.value = MISSING
                slot.pending = None
                parked[key] = slot

    def evict(self, key: Key, suffix: bytes) -> None:
        if key not in self._dirty:
            slot = self._cache.pop(key, None)
            if slot is not None:
                self._evicted([key], [slot])
                self._complete = False

    # -- expiries ------------------------------------------------------------------------------
    def take_expired(self, key: Key, time: int, slot: Slot) -> Any:
        """For the entry ``(time, _, key, slot)`` just taken from ``expiring``, with ``key``
        the store's current key: the value, cleared, if it expired at or before ``time``;
        MISSING if the entry is stale or the value was rewritten later (its entry then
        moves on to its stamp). ``time`` must be the entry's own int object, not an equal
        one (see :class:`Slot`)."""
        if slot.queued is not time:
            return MISSING
        value = slot.value
        if value is MISSING:
            value = self._load(key)
        if value is ABSENT:
            slot.queued = UNQUEUED
            return MISSING
        expires_at = slot.stamp
        if expires_at > time:
            slot.queued = expires_at
            self.expiring.push((expires_at, slot.prefix, key, slot))
            return MISSING
        self.clear()
        return value

    def expire_until(self, limit: int, fire: Any) -> None:
        """Take every entry of ``expiring`` at or before ``limit`` in order and, for each
        value that expired by its entry's time, clear it and call ``fire(time, key, value)``
        with the key current (it returns a lower limit, or None); entries that find a later
        stamp move to it. An entry finds the stamp and the value in its slot, with no lookup
        (unless the value was parked)."""
        queue = self.expiring
        dirty = self._dirty
        store = self.store
        peek = queue.peek
        push = queue.push
        buckets_get = queue.buckets.get
        shift = queue.SHIFT
        while True:
            # queue.peek and pop, inlined for the open bucket
            cur = queue.cur
            pos = queue.pos
            if pos < len(cur):
                entry = cur[pos]
            else:
                entry = peek()  # type: ignore[assignment]
                if entry is None:
                    break
                pos = queue.pos
            time = entry[0]
            if time > limit:
                break
            queue.pos = pos + 1
            slot = entry[3]
            if slot.queued is not time:
                continue  # stale: queued earlier since, or fired, or cleared
            expires_at = slot.stamp
            if expires_at is not time and expires_at > time:
                slot.queued = expires_at
                # queue.push, inlined when the bucket exists (buckets holds only those
                # after the open one, which are appended to)
                later = buckets_get(expires_at >> shift)
                if later is not None:
                    later.append((expires_at, entry[1], entry[2], slot))
                else:
                    push((expires_at, entry[1], entry[2], slot))
                continue
            key = entry[2]
            value = slot.value
            if value is MISSING:
                store.key = key
                value = self._load(key)
            slot.queued = UNQUEUED
            if value is ABSENT:
                continue
            store.key = key
            slot.stamp = NEVER  # clear(), inlined
            slot.value = ABSENT
            slot.pending = ABSENT
            dirty[key] = slot
            self._cleared = True
            lowered = fire(time, key, value)
            if lowered is not None:  # a timer registered before limit: see _Expiries
                limit = lowered

    def load_expiring(self, backend: Any, lower: bytes | None, upper: bytes | None) -> int:
        """Arm the stamped values stored in ``[lower, upper)`` (all without bounds), in one
        scan; returns how many. Keys keep the key group they are stored under; their values
        are read when first needed."""
        pin = self.store.pin_prefix
        cache_get = self._cache.get
        parked = self._parked
        arm = self._arm
        count = 0
        for stored, data in backend.iterate(self.name, lower, upper):
            expires_at = read_stamp(data)
            if expires_at == NEVER:
                continue
            key, split = decode_user_key(stored, 2)
            pin(key, stored[:split], replace=False)
            slot = cache_get(key)
            if slot is None:
                slot = parked.get(key)
                if slot is None:
                    slot = parked[key] = Slot(UNQUEUED, expires_at, MISSING)
            arm(slot, key, expires_at)
            count += 1
        if count:
            # Loaded before the watermark may be (a restore sets it after): reads check
            # stamps until the next pass of expiries, when none at or before the clock is left.
            self.hold_checks()
        return count


class ExpiringReducingHandle(ExpiringValueHandle):
    """A bound ReducingState declared with ``on_expire=True``."""

    def __init__(self, store: KeyedStateStore, descriptor: Any, ttl: Ttl | None):
        super().__init__(store, descriptor, ttl)
        self.fn = descriptor.fn

    add = ReducingHandle.add
    get = ReducingHandle.get  # type: ignore[assignment]
