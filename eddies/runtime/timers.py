"""Per-key event-time and processing-time timers, deduplicated, ordered, and checkpointed.

Timers are stored in the column family ``__timers__.<operator>``, and memory holds a bounded
window of the nearest ones per time domain::

    +---------------------+---------+----------------------------+------------------------+
    | key group (2 B, BE) | domain  | time + 2**63 (8 B, BE)     | user key element       |
    |                     | e / p   |                            | (05 .. 00, tuple codec)|
    +---------------------+---------+----------------------------+------------------------+
    value: empty

Leading with the key group keeps one partition's timers one contiguous range (the unit that
moves between Kafka workers); within it, timers sort by domain and time. Startup loads them
with one range scan.

The window: a :class:`TimerHeap` holds every live timer with a time below its ``horizon``
(a heap of distinct times, each with a dict of the keys due then, which deduplicates), at
most ``limit`` of them (the operator's ``cache_entries``; one time's timers are never split,
so a single time due for more keys than that is held whole). A registration at or beyond the
horizon goes to a pending-write buffer only, and a deletion there to a tombstone; both are
written with the next checkpoint, atomically with state. When the heap runs out below the
horizon and time reaches it, the next range is read from the store, per key group, merged
with the buffer, and the horizon moves forward; when registrations below the horizon fill
the heap past ``limit``, the latest times go back out and the horizon moves down.

The same column family holds window marks, domain ``w``: ``key group | w | time + 2**63 |
tag``, value empty. The window operator fires its windows without a timer per key; a mark
records that the windows identified by ``tag`` (an encoded ``(start, end)``), ending at
``time``, have fired for the keys of that key group, so a restore (or the next owner of the
partition) knows they are waiting for their lateness to pass rather than for their watermark.
Marks (one per key group and window) stay in memory. Functions that keep such an index of
their own rebuild it in :meth:`Timers.load`, through ``Timers.loaders``.
"""

from __future__ import annotations

import heapq
import struct
import sys
import time as _time
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from itertools import filterfalse, groupby, islice, repeat
from operator import itemgetter
from typing import Any

from eddies.errors import ConfigError
from eddies.state.backend import Batch, StateBackend
from eddies.state.keys import Key, decode_user_key


def wall_ms() -> int:
    """Processing time now: the wall clock in ms since the epoch (the default clock of
    processing-time timers and TTL)."""
    return _time.time_ns() // 1_000_000

__all__ = ["TimerHeap", "Timers", "WINDOW", "stored_mark_key", "stored_timer_key", "timers_cf"]

_be = struct.Struct(">Q")
_domain_and_time = itemgetter(slice(2, 11))
_first = itemgetter(0)
_OFFSET = 2**63
_GONE: Any = object()
_NO_HORIZON = 2**63
"""The horizon of a heap that holds every live timer (above any int64 time)."""
EVENT = b"e"
PROCESSING = b"p"
WINDOW = b"w"


def _user_key(stored_key: bytes) -> Any:
    """The user key (its state_key form) of a stored timer key (the element at offset 11)."""
    return decode_user_key(stored_key, 11)[0]


def _time_of(stored_key: bytes) -> int:
    return _be.unpack_from(stored_key, 3)[0] - _OFFSET


def stored_timer_key(prefix: bytes, domain: bytes, time: int) -> bytes:
    """The stored key of a timer of the key whose stored-key prefix is ``prefix``."""
    return prefix[:2] + domain + _be.pack(time + _OFFSET) + prefix[2:]


def stored_mark_key(group: bytes, time: int, tag: bytes) -> bytes:
    """The stored key of a window mark of key group ``group`` (2 bytes)."""
    return group + WINDOW + _be.pack(time + _OFFSET) + tag


def timers_cf(operator: str) -> str:
    return f"__timers__.{operator}" if operator else "__timers__"


class TimerHeap:
    """Timers of one time domain, bucketed by time: a min-heap of distinct times, and per time
    a dict from the timer's stored key to the user key (which deduplicates).

    Within one time, stored keys sort as ``key group + key element``: timers fire in that
    order, which survives a restore and never compares keys of different types. Many timers
    share a time (every key's window ends together), so the heap holds one entry per time
    and a due bucket is sorted once, when it starts firing (:meth:`due` walks it in one
    loop). Timers loaded from the backend keep their user key undecoded (None) until they
    fire.

    Once attached to a backend (:meth:`Timers.load`), memory holds only the live timers
    before the horizon, a position in firing order: ``(horizon, horizon_key)``, a time and a
    stored key at that time (``b""``: the whole time is beyond). At most ``limit`` of them;
    ``len()`` counts them, and :meth:`next_time` and :meth:`pop_due` read on from the store
    as time advances (see the module docstring).

    The event-time heap also holds the window marks (``marks``, stored keys), so that they
    go wherever its timers go: replacing the heap forgets both.
    """

    __slots__ = ("times", "buckets", "added", "removed", "marks", "far", "fired", "horizon",
                 "horizon_key", "limit", "on_key", "_count", "_far_count", "_drain_time",
                 "_drain", "_drain_at", "_source", "_ranges", "_spill_at", "_fired_groups",
                 "_fired_upto", "_fired_key", "_at_time", "_at", "new_times")

    def __init__(self) -> None:
        self.times: list[int] = []  # heap; a time stays until its bucket is empty
        self.buckets: dict[int, dict[bytes, Key | None]] = {}
        self.added: set[bytes] = set()
        """Stored keys put in memory since the last collect, to be written by the next.
        None of them is in the store but with its deletion pending (in ``fired`` or
        ``removed``, or a range of ``_fired_groups``): one that fires or is deleted before
        the next collect is simply dropped from here, and never reaches the store."""
        self.removed: set[bytes] = set()  # deleted since the last collect (tombstones)
        self.marks: set[bytes] = set()
        self.far: dict[int, set[bytes]] = {}
        """The pending-write buffer: registrations at or beyond the horizon since the last
        collect, by time (not in the heap)."""
        self.fired: list[bytes] = []
        """Stored timers fired since the last collect, in firing order: sorted, mostly, as
        a backend likes its deletions."""
        self.horizon = _NO_HORIZON
        """Every live timer before ``(horizon, horizon_key)`` is in memory; none after."""
        self.horizon_key = b""
        self.limit: int | None = None
        self.on_key: Callable[[Key, bytes], None] | None = None
        """Called as ``on_key(key, stored-key prefix)`` for a timer read from the store,
        when its key is decoded (as it fires)."""
        self._count = 0
        self._far_count = 0
        self.new_times = 0
        """Times put in memory so far (a count that only grows): a caller that notes it
        can tell whether a timer was added at a new time since, whatever spills did."""
        # The bucket being fired: its stored keys sorted, and the index of the next to fire.
        self._drain_time: int | None = None
        self._drain: list[bytes] = []
        self._drain_at = 0
        self._source: tuple[StateBackend, str, bytes] | None = None
        self._ranges: list[tuple[bytes | None, bytes | None]] = []
        self._spill_at = _NO_HORIZON  # spill when more timers than this are in memory
        # Fired timers beyond ``limit`` between collects are deleted by key-group range:
        # every timer up to the latest fired time is gone once time has passed it.
        self._fired_groups: set[bytes] = set()
        self._fired_upto = -_OFFSET
        self._fired_key = b""  # the last stored timer fired at _fired_upto (see _fired_end)
        # The stored-key bytes of the last (domain, time) registered, built once for the
        # many keys that register one time (an end-of-input or a window-end timer).
        self._at_time: int | None = None
        self._at = b""

    @staticmethod
    def _key(bucket: dict[bytes, Key | None], stored: bytes) -> Key:
        key = bucket[stored]
        if key is None:
            key = bucket[stored] = _user_key(stored)
        return key

    @property
    def heap(self) -> list[tuple[int, bytes, Key]]:
        """Timers in memory as ``(time, stored-key prefix of the user key, key)``, unordered."""
        return [(t, k[:2] + k[11:], self._key(bucket, k)) for t, bucket in self.buckets.items()
                for k in bucket]

    @property
    def live(self) -> set[tuple[int, Key]]:
        """Timers in memory as ``(time, key)`` (all of them unless the window is bounded:
        :meth:`Timers.pending` lists every one)."""
        return {(t, self._key(bucket, k)) for t, bucket in self.buckets.items() for k in bucket}

    @property
    def buffered(self) -> int:
        """Registrations in the pending-write buffer (beyond the horizon, not yet written)."""
        return self._far_count

    def bucket(self, time: int) -> dict[bytes, Key | None]:
        """The bucket of ``time``, created if missing (for bulk loading, not while firing)."""
        bucket = self.buckets.get(time)
        if bucket is None:
            bucket = self.buckets[time] = {}
            heapq.heappush(self.times, time)
        return bucket

    def register(self, domain: bytes, time: int, key: Key, prefix: bytes) -> None:
        """:meth:`add` the timer of ``key`` (whose stored-key prefix is ``prefix``) at
        ``time``, in this heap's ``domain``: the stored key is built here, its time part
        once for a run of registrations at one time."""
        at = self._at
        if time != self._at_time or at[0] != domain[0]:
            at = self._at = domain + _be.pack(time + _OFFSET)
            self._at_time = time
        self.add(time, key, prefix[:2] + at + prefix[2:])

    def add(self, time: int, key: Key | None, stored: bytes, persist: bool = True) -> None:
        """Add the timer ``stored`` at ``time`` (``key``: its user key, None to decode it
        when it fires), to be written with the next checkpoint unless ``persist`` is False.
        A tombstone of the same timer stays: :meth:`collect` writes deletions first."""
        horizon = self.horizon
        if time >= horizon and (time > horizon or stored >= self.horizon_key):
            # Beyond the window: to the pending-write buffer only.
            far = self.far.get(time)
            if far is None:
                far = self.far[time] = set()
            if stored not in far:
                far.add(stored)
                self._far_count += 1
            return
        bucket = self.buckets.get(time)
        if bucket is None:
            bucket = self.buckets[time] = {}
            heapq.heappush(self.times, time)
            self.new_times += 1
        elif stored in bucket:
            return
        bucket[stored] = key
        self._count += 1
        if time == self._drain_time:  # firing now: it takes its turn among the rest
            insort(self._drain, stored, lo=self._drain_at)
        if persist:
            self.added.add(stored)
        if self._count > self._spill_at:
            self._spill()

    def remove(self, time: int, stored: bytes) -> None:
        horizon = self.horizon
        if time >= horizon and (time > horizon or stored >= self.horizon_key):
            # Buffered, stored, or both: a tombstone either way.
            far = self.far.get(time)
            if far is not None and stored in far:
                far.remove(stored)
                self._far_count -= 1
                if not far:
                    del self.far[time]
            self.removed.add(stored)
            return
        bucket = self.buckets.get(time)
        if bucket is not None and stored in bucket:
            del bucket[stored]  # an emptied bucket goes when pop_due reaches it
            self._count -= 1
            added = self.added
            if stored in added:
                added.discard(stored)  # not written yet: nothing to delete (see ``added``)
            else:
                self.removed.add(stored)

    def next_time(self) -> int | None:
        """The time of the earliest live timer, or None. Exact with a bounded window: when
        memory holds none, the next range is read from the store first."""
        times = self.times
        buckets = self.buckets
        while True:
            while times and not buckets.get(times[0]):
                self._drop_time()
            if times:
                return times[0]
            if self.horizon == _NO_HORIZON:
                return None
            self._load_next()

    def _drop_time(self) -> None:
        time = heapq.heappop(self.times)
        self.buckets.pop(time, None)
        if time == self._drain_time:
            self._drain_time = None

    def pop_due(self, until: int) -> tuple[int, Key] | None:
        """Remove and return the earliest timer with time <= ``until``, or None: one step
        of :meth:`due` (the same walk, kept apart for the callers that take one timer at a
        time, at no cost of a generator per call)."""
        times = self.times
        buckets = self.buckets
        while True:
            if not times:
                if self.horizon > until:  # none due before the horizon, none beyond it
                    return None
                self._load_next()
                continue
            time = times[0]
            if time > until:
                return None
            bucket = buckets.get(time)
            if not bucket:
                self._drop_time()
                continue
            if time != self._drain_time:  # (re)start this bucket: sort what is left in it
                self._drain_time = time
                self._drain = sorted(bucket)
                self._drain_at = 0
            drain = self._drain
            while self._drain_at < len(drain):
                stored = drain[self._drain_at]
                self._drain_at += 1
                key = bucket.pop(stored, _GONE)
                if key is _GONE:  # deleted since the bucket was sorted
                    continue
                if key is None:
                    key = _user_key(stored)
                    if self.on_key is not None:
                        self.on_key(key, stored[:2] + stored[11:])
                self._count -= 1
                if time > self._fired_upto:
                    self._fired_upto = time
                    self._fired_key = b""
                if stored in self.added:
                    self.added.discard(stored)  # not written yet (see ``added``)
                else:
                    if stored > self._fired_key:
                        self._fired_key = stored
                    fired = self.fired
                    fired.append(stored)
                    if len(fired) > self._spill_at:
                        self._fired_groups.update(s[:2] for s in fired)
                        fired.clear()
                return time, key
            self._drain_time = None  # drained
            if not bucket:
                self._drop_time()

    def due(self, until: int) -> Iterator[tuple[int, Key]]:
        """Remove and yield, in firing order, every timer with time <= ``until``, each one
        as :meth:`pop_due` would return it: timers registered or deleted between two
        yields are fired in their turn or not at all, in this same pass. A bucket is
        sorted once and walked in one loop, rather than one call per timer (keep the two
        walks alike: tests/runtime/test_timers.py runs both against one model).

        A timer registered and fired (or deleted) between two checkpoints was never
        written, and is not deleted either: the checkpoint holds nothing of it."""
        times = self.times
        buckets = self.buckets
        added = self.added
        fired = self.fired
        gone = _GONE
        while True:
            if not times:
                if self.horizon > until:  # none due before the horizon, none beyond it
                    return
                self._load_next()
                continue
            time = times[0]
            if time > until:
                return
            bucket = buckets.get(time)
            if not bucket:
                self._drop_time()
                continue
            if time != self._drain_time:  # (re)start this bucket: sort what is left in it
                self._drain_time = time
                drain = self._drain = sorted(bucket)
                at = 0
            else:
                drain = self._drain
                at = self._drain_at
            pop = bucket.pop
            on_key = self.on_key
            if time > self._fired_upto:
                self._fired_upto = time
                self._fired_key = b""
            while at < len(drain):  # it grows as timers are registered at ``time``
                stored = drain[at]
                at += 1
                key = pop(stored, gone)
                if key is gone:  # deleted since the bucket was sorted
                    continue
                if key is None:
                    key = _user_key(stored)
                    if on_key is not None:
                        on_key(key, stored[:2] + stored[11:])
                self._count -= 1
                if stored in added:
                    # Not written yet: nothing to delete (see ``added``).
                    added.discard(stored)
                else:
                    if stored > self._fired_key:
                        self._fired_key = stored
                    fired.append(stored)
                    if len(fired) > self._spill_at:
                        self._fired_groups.update(s[:2] for s in fired)
                        fired.clear()
                self._drain_at = at
                yield time, key
                if self._drain_time != time or times[0] != time:
                    break  # an earlier timer was registered, or this bucket spilled
            else:
                self._drain_time = None  # drained
                if not bucket:
                    self._drop_time()

    def __len__(self) -> int:
        return self._count

    # -- the window ----------------------------------------------------------------------------
    def attach(
        self, backend: StateBackend, cf: str, domain: bytes, limit: int | None,
        lower: bytes | None, upper: bytes | None,
    ) -> None:
        """Make the store's ``[lower, upper)`` key-group range part of this heap's timers
        (the caller loads that range's nearest timers), with at most ``limit`` in memory."""
        self._source = (backend, cf, domain)
        if (lower, upper) not in self._ranges:
            self._ranges.append((lower, upper))
        if limit is not None:
            self.limit = self._spill_at = limit

    def beyond(self, time: int, stored: bytes) -> bool:
        """Whether the timer ``(time, stored)`` lies at or beyond the horizon."""
        return time > self.horizon or (time == self.horizon and stored >= self.horizon_key)

    def _move_out(self, time: int, bucket: dict[bytes, Key | None], keys: Iterable[bytes]) -> None:
        """Take ``keys`` out of ``bucket``; those not written yet go to the buffer."""
        added = self.added
        far = None
        for stored in keys:
            del bucket[stored]
            if stored in added:
                added.discard(stored)
                if far is None:
                    far = self.far.setdefault(time, set())
                if stored not in far:
                    far.add(stored)
                    self._far_count += 1

    def loaded(self, n: int) -> None:
        """``n`` timers were just put in memory from the store (into ``bucket(time)``):
        count them, and spill if that takes memory over the limit."""
        self._count += n
        if self._count > self._spill_at:
            self._spill()

    def _spill(self) -> None:
        """Move the last timers in firing order out of memory (to the buffer if not written
        yet), keeping half of ``limit``, and move the horizon back to the first moved out."""
        limit = self.limit
        if limit is None or self._source is None:
            self._spill_at = _NO_HORIZON
            return
        buckets = self.buckets
        target = max(1, limit // 2)
        keep = 0
        cut_time = None
        cut_key = b""
        for t in sorted(buckets):
            bucket = buckets[t]
            if keep + len(bucket) > target:
                cut_time = t
                ordered = sorted(bucket)
                if target > keep:
                    cut_key = ordered[target - keep]
                    self._move_out(t, bucket, ordered[target - keep:])
                else:
                    self._move_out(t, bucket, ordered)
                break
            keep += len(bucket)
        if cut_time is None:
            return
        for t in [t for t in buckets if t > cut_time]:
            bucket = buckets[t]
            self._move_out(t, bucket, list(bucket))
        for t in [t for t in buckets if not buckets[t]]:
            del buckets[t]
            if t == self._drain_time:
                self._drain_time = None
        self.times[:] = sorted(buckets)  # a sorted list is a heap
        self._count = sum(map(len, buckets.values()))
        self.horizon = cut_time
        self.horizon_key = cut_key

    def _groups(self) -> list[bytes]:
        """The key groups with anything stored in this heap's ranges (one seek each)."""
        backend, cf, _ = self._source  # type: ignore[misc]
        groups = []
        for lower, upper in self._ranges:
            cursor = lower or b""
            while True:
                first = backend.keys(cf, cursor, upper, 1)
                if not first:
                    break
                group = first[0][:2]
                groups.append(group)
                following = int.from_bytes(group, "big") + 1
                if following > 0xFFFF:
                    break
                cursor = following.to_bytes(2, "big")
        return groups

    def _load_next(self) -> None:
        """Read the next timers in firing order into memory, half of ``limit`` or so (per key
        group from the store, less tombstones, and from the buffer), and move the horizon
        past them."""
        backend, cf, domain = self._source  # type: ignore[misc]
        horizon, horizon_key = self.horizon, self.horizon_key
        groups = self._groups()
        per_group = max(1, (self.limit or sys.maxsize) // (2 * max(1, len(groups))))
        at = _be.pack(horizon + _OFFSET)
        after = _be.pack(horizon + 1 + _OFFSET)
        end = bytes([domain[0] + 1])
        cover = (_NO_HORIZON, b"")
        reads = []
        for group in groups:
            if not horizon_key or group > horizon_key[:2]:
                lower = group + domain + at
            elif group == horizon_key[:2]:
                lower = horizon_key
            else:  # its timers at the horizon's time come before the horizon: in memory
                lower = group + domain + after
            keys = backend.keys(cf, lower, group + end, per_group)
            if len(keys) == per_group:
                last = keys[-1]
                cover = min(cover, (_time_of(last), last + b"\0"))
            reads.append(keys)
        # Every live timer before ``cover`` is now at hand: stored (less those whose deletion
        # is pending: deleted or fired since the last collect) or buffered.
        cover_time, cover_key = cover
        removed = self.removed
        fired_end = self._fired_end(domain)
        for group, keys in zip(groups, reads, strict=True):
            # Timers fire in firing order, so every stored one before the last fired has
            # fired since the last collect (its deletion pending) or before it (deleted).
            cut = bisect_left(keys, fired_end(group))
            for head, group_run in groupby(islice(keys, cut, None), _domain_and_time):
                time = _be.unpack_from(head, 1)[0] - _OFFSET
                if time > cover_time:
                    break
                run: Iterable[bytes] = group_run
                if time == cover_time:
                    run = [s for s in run if s < cover_key]
                if removed:
                    run = list(filterfalse(removed.__contains__, run))
                bucket = self.bucket(time)
                before = len(bucket)
                bucket.update(zip(run, repeat(None)))
                self._count += len(bucket) - before
        far = self.far
        for time in sorted(t for t in far if t <= cover_time):
            pending = far[time]
            moved = pending if time < cover_time else {s for s in pending if s < cover_key}
            if not moved:
                continue
            bucket = self.bucket(time)
            # Still to be written, but those just read from the store as well.
            new = [stored for stored in moved if stored not in bucket]
            bucket.update(zip(new, repeat(None)))
            self._count += len(new)
            self.added.update(new)
            self._far_count -= len(moved)
            if moved is pending:
                del far[time]
            else:
                pending -= moved
                if not pending:
                    del far[time]
        self.horizon, self.horizon_key = cover
        if self._count > self._spill_at:
            self._spill()

    def stored_beyond(self) -> list[bytes]:
        """Stored keys of the timers stored at or beyond the horizon (less tombstones): a
        full read of this heap's ranges, for inspection."""
        if self._source is None or self.horizon == _NO_HORIZON:
            return []
        backend, cf, domain = self._source
        d = domain[0]
        out = []
        gone = self._deletion_pending(domain)
        for lower, upper in self._ranges:
            for stored in map(_first, backend.iterate(cf, lower, upper)):
                if (stored[2] == d and self.beyond(_time_of(stored), stored)
                        and not gone(stored)):
                    out.append(stored)
        return out

    def _deletion_pending(self, domain: bytes) -> Callable[[bytes], bool]:
        """A test of this heap's stored timers (of ``domain``) the next collect deletes
        (deleted, or fired, since the last one: see :meth:`collect`), which reads must
        skip. A timer registered again since is live in memory or in the buffer, not in
        the store."""
        removed = self.removed
        end = self._fired_end(domain)

        def gone(stored: bytes) -> bool:
            return stored in removed or stored < end(stored[:2])
        return gone

    def _fired_end(self, domain: bytes) -> Callable[[bytes], bytes]:
        """The end (exclusive) of a key group's stored timers that have fired since the last
        collect (or before it, and are deleted): every one before ``_fired_upto``, and at
        that time those up to ``_fired_key``, the last fired. Timers fire in stored-key
        order, key group first; the rest of that time may be in memory or in the store
        still (its firing cut short by an error in on_timer, or not read yet)."""
        upto = self._fired_upto
        at = _be.pack(upto + _OFFSET)
        # After the whole of ``upto``: the next time, or the end of the domain.
        after = (domain + _be.pack(upto + 1 + _OFFSET) if upto + 1 + _OFFSET < 2**64
                 else bytes([domain[0] + 1]))
        last = self._fired_key

        def end(group: bytes) -> bytes:
            if not last or group > last[:2]:
                return group + domain + at
            if group == last[:2]:
                return last + b"\0"
            return group + after
        return end

    def collect(self, batch: Batch, cf: str, domain: bytes) -> None:
        """Write this heap's changes since the last collect into ``batch``."""
        fired = self.fired
        groups = self._fired_groups
        if groups:
            # Every timer up to the latest fired time is gone, but those registered since
            # (in ``added`` or the buffer, written after this): delete by range (see
            # _fired_end for a bucket whose firing an error cut short).
            groups.update(s[:2] for s in fired)
            end = self._fired_end(domain)
            for group in sorted(groups):
                batch.delete_range(cf, group + domain, end(group))
            groups.clear()
        elif fired:
            batch.delete_many(cf, fired.copy())
        fired.clear()
        self._fired_upto = -_OFFSET
        self._fired_key = b""
        if self.removed:
            batch.delete_many(cf, list(self.removed))
            self.removed.clear()
        # Writes after the deletions: a timer registered again after it fired or was
        # deleted stays (``removed`` keeps such a timer's tombstone).
        added = self.added
        if added:
            batch.put_many(cf, list(added), [b""] * len(added))
            added.clear()
        if self.far:
            far = [s for run in self.far.values() for s in run]
            batch.put_many(cf, far, [b""] * len(far))
            self.far.clear()
            self._far_count = 0


class Timers:
    """Both timer domains of one operator, with their persistence.

    ``limit`` bounds the timers each domain keeps in memory once :meth:`load` has attached
    the store (None: all of them)."""

    def __init__(
        self, operator: str, prefix_of: Callable[[Key], bytes], limit: int | None = None
    ) -> None:
        if limit is not None and limit < 1:
            raise ConfigError(f"operator {operator!r}: the timer limit must be at least 1, "
                              f"got {limit}")
        self.cf = timers_cf(operator)
        self.event = TimerHeap()
        self.processing = TimerHeap()
        self.limit = limit
        self._prefix_of = prefix_of
        self.on_key: Callable[[Key, bytes], None] | None = None
        """Given to both heaps at :meth:`load` (see ``TimerHeap.on_key``)."""
        self.loaders: list[Callable[[StateBackend, bytes | None, bytes | None], Any]] = []
        """Called as ``loader(backend, lower, upper)`` at the end of every :meth:`load`, after
        the timers and marks of that key-group range are in (the window operator's index)."""

    def mark(self, group: bytes, time: int, tag: bytes) -> None:
        """Record (with the next checkpoint) a window mark; see the module docstring."""
        heap = self.event
        stored = stored_mark_key(group, time, tag)
        if stored not in heap.marks:
            heap.marks.add(stored)
            heap.added.add(stored)
            heap.removed.discard(stored)

    def unmark(self, group: bytes, time: int, tag: bytes) -> None:
        """Delete a window mark (with the next checkpoint)."""
        heap = self.event
        stored = stored_mark_key(group, time, tag)
        if stored in heap.marks:
            heap.marks.discard(stored)
            heap.added.discard(stored)
            heap.removed.add(stored)

    def register(self, domain: bytes, time: int, key: Key) -> None:
        """Register ``key``'s timer at ``time`` (deduplicated), written with the next
        checkpoint."""
        (self.event if domain == EVENT else self.processing).register(
            domain, time, key, self._prefix_of(key))

    def delete(self, domain: bytes, time: int, key: Key) -> None:
        (self.event if domain == EVENT else self.processing).remove(
            time, stored_timer_key(self._prefix_of(key), domain, time))

    def is_marked(self, group: bytes, time: int, tag: bytes) -> bool:
        return stored_mark_key(group, time, tag) in self.event.marks

    def marks_in(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> list[tuple[bytes, int, bytes]]:
        """The window marks stored in ``[lower, upper)``, as ``(group, time, tag)``."""
        return [(m[:2], _be.unpack_from(m, 3)[0] - _OFFSET, m[11:]) for m in self.event.marks
                if (lower is None or m >= lower) and (upper is None or m < upper)]

    def in_memory(self) -> int:
        """Timers held in memory, both domains (the heaps and the pending-write buffers)."""
        return (len(self.event) + len(self.processing) + self.event.buffered
                + self.processing.buffered)

    def buffer_full(self) -> bool:
        """True when a pending-write buffer holds over twice ``limit`` timers: checkpoint
        early (the buffer empties into the checkpoint)."""
        limit = self.limit
        return limit is not None and (self.event.buffered > 2 * limit
                                      or self.processing.buffered > 2 * limit)

    def collect(self, batch: Batch) -> None:
        """Write added, fired and deleted timers (and marks) into ``batch``."""
        self.event.collect(batch, self.cf, EVENT)
        self.processing.collect(batch, self.cf, PROCESSING)

    def load(
        self, backend: StateBackend, lower: bytes | None = None, upper: bytes | None = None
    ) -> int:
        """Load persisted timers (optionally one key-group range) with one scan, the nearest
        ``limit`` per domain into memory and every mark; returns how many timers the range
        holds. User keys stay undecoded until their timer fires."""
        heaps = {EVENT[0]: self.event, PROCESSING[0]: self.processing}
        for domain, heap in ((EVENT, self.event), (PROCESSING, self.processing)):
            heap.attach(backend, self.cf, domain, self.limit, lower, upper)
            heap.on_key = self.on_key
        window = WINDOW[0]
        marks = self.event.marks
        unpack_time = _be.unpack_from
        count = 0
        chunk = self.limit or sys.maxsize
        # Keys in (key group, domain, time) order, streamed: each run of one domain and time
        # is one bucket, filled in C; beyond a heap's horizon only counted.
        stored_keys = map(_first, backend.iterate(self.cf, lower, upper))
        for head, group_run in groupby(stored_keys, _domain_and_time):
            domain = head[0]
            if domain == window:
                marks.update(group_run)
                continue
            heap = heaps[domain]
            time = unpack_time(head, 1)[0] - _OFFSET
            # In pieces of at most ``limit`` keys, so that one time due for many keys never
            # sits in memory whole: the heap spills between pieces.
            while piece := list(islice(group_run, chunk)):
                count += len(piece)
                if time >= heap.horizon:
                    if time > heap.horizon or not heap.horizon_key:
                        continue
                    piece = [s for s in piece if s < heap.horizon_key]
                    if not piece:
                        continue
                bucket = heap.bucket(time)
                before = len(bucket)
                bucket.update(zip(piece, repeat(None)))
                count -= len(piece) - (len(bucket) - before)  # less those already in memory
                if heap.added:  # registered before their range was loaded: stored now
                    heap.added.difference_update(piece)
                heap.loaded(len(bucket) - before)
        for loader in self.loaders:
            loader(backend, lower, upper)
        return count

    def pending(self, key: Key | None = None) -> Iterator[tuple[str, int, Any]]:
        """Live timers as (domain, time, key), sorted; only ``key``'s if given. Reads the
        timers beyond the in-memory window from the store."""
        out = []
        for domain, heap in (("event", self.event), ("processing", self.processing)):
            live = set(heap.live)
            for time, run in heap.far.items():
                live.update((time, _user_key(s)) for s in run)
            live.update((_time_of(s), _user_key(s)) for s in heap.stored_beyond())
            for time, k in live:
                if key is None or k == key:
                    out.append((domain, time, k))
        return iter(sorted(out, key=lambda t: (t[0], t[1], repr(t[2]))))
