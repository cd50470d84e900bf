"""Per-key event-time and processing-time timers, deduplicated, ordered, and checkpointed.

Timers live in memory per time domain as a heap of distinct times, each with a dict of the
keys due then (which deduplicates); changes are written with the checkpoint batch to the column family ``__timers__.<operator>``::

    +---------------------+---------+----------------------------+------------------------+
    | key group (2 B, BE) | domain  | time + 2**63 (8 B, BE)     | user key element       |
    |                     | e / p   |                            | (05 .. 00, tuple codec)|
    +---------------------+---------+----------------------------+------------------------+
    value: empty

Leading with the key group keeps one partition's timers one contiguous range (the unit that
moves between Kafka workers); within it, timers sort by domain and time. Startup loads them
with one range scan.

The same column family holds window marks, domain ``w``: ``key group | w | time + 2**63 |
tag``, value empty. The window operator fires its windows without a timer per key; a mark
records that the windows identified by ``tag`` (an encoded ``(start, end)``), ending at
``time``, have fired for the keys of that key group, so a restore (or the next owner of the
partition) knows they are waiting for their lateness to pass rather than for their watermark.
Functions that keep such an index of their own rebuild it in :meth:`Timers.load`, through
``Timers.loaders``.
"""

from __future__ import annotations

import heapq
import struct
import sys
from bisect import insort
from collections.abc import Callable, Iterator
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any

from eddies.state.backend import Batch, StateBackend
from eddies.state.keys import Key, decode_user_key

__all__ = ["TimerHeap", "Timers", "WINDOW", "stored_mark_key", "stored_timer_key", "timers_cf"]

_be = struct.Struct(">Q")
_domain_and_time = itemgetter(slice(2, 11))
_OFFSET = 2**63
EVENT = b"e"
PROCESSING = b"p"
WINDOW = b"w"


def _user_key(stored_key: bytes) -> Any:
    """The user key (its state_key form) of a stored timer key (the element at offset 11)."""
    return decode_user_key(stored_key, 11)[0]


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
    and a due bucket is sorted once, when it starts firing. Timers loaded from the backend
    keep their user key undecoded (None) until they fire.

    The event-time heap also holds the window marks (``marks``, stored keys), so that they
    go wherever its timers go: replacing the heap forgets both.
    """

    __slots__ = ("times", "buckets", "added", "removed", "marks", "_count", "_drain_time",
                 "_drain", "_drain_at")

    def __init__(self) -> None:
        self.times: list[int] = []  # heap; a time stays until its bucket is empty
        self.buckets: dict[int, dict[bytes, Key | None]] = {}
        self.added: set[bytes] = set()  # stored keys since the last collect
        self.removed: set[bytes] = set()
        self.marks: set[bytes] = set()
        self._count = 0
        # The bucket being fired: its stored keys sorted, and the index of the next to fire.
        self._drain_time: int | None = None
        self._drain: list[bytes] = []
        self._drain_at = 0

    @staticmethod
    def _key(bucket: dict[bytes, Key | None], stored: bytes) -> Key:
        key = bucket[stored]
        if key is None:
            key = bucket[stored] = _user_key(stored)
        return key

    @property
    def heap(self) -> list[tuple[int, bytes, Key]]:
        """Live timers as ``(time, stored-key prefix of the user key, key)``, unordered."""
        return [(t, k[:2] + k[11:], self._key(bucket, k)) for t, bucket in self.buckets.items()
                for k in bucket]

    @property
    def live(self) -> set[tuple[int, Key]]:
        """Live timers as ``(time, key)``."""
        return {(t, self._key(bucket, k)) for t, bucket in self.buckets.items() for k in bucket}

    def bucket(self, time: int) -> dict[bytes, Key | None]:
        """The bucket of ``time``, created if missing (for bulk loading, not while firing)."""
        bucket = self.buckets.get(time)
        if bucket is None:
            bucket = self.buckets[time] = {}
            heapq.heappush(self.times, time)
        return bucket

    def add(self, time: int, key: Key | None, stored: bytes, persist: bool = True) -> None:
        bucket = self.buckets.get(time)
        if bucket is None:
            bucket = self.buckets[time] = {}
            heapq.heappush(self.times, time)
        elif stored in bucket:
            return
        bucket[stored] = key
        self._count += 1
        if time == self._drain_time:  # firing now: it takes its turn among the rest
            insort(self._drain, stored, lo=self._drain_at)
        if persist:
            self.added.add(stored)
            if self.removed:
                self.removed.discard(stored)

    def remove(self, time: int, stored: bytes) -> None:
        bucket = self.buckets.get(time)
        if bucket is not None and stored in bucket:
            del bucket[stored]  # an emptied bucket goes when pop_due reaches it
            self._count -= 1
            self.added.discard(stored)
            self.removed.add(stored)

    def peek_time(self) -> int | None:
        times = self.times
        buckets = self.buckets
        while times and not buckets.get(times[0]):
            self._drop_time()
        return times[0] if times else None

    def _drop_time(self) -> None:
        time = heapq.heappop(self.times)
        self.buckets.pop(time, None)
        if time == self._drain_time:
            self._drain_time = None

    def pop_due(self, until: int) -> tuple[int, Key] | None:
        """Remove and return the earliest timer with time <= ``until``, or None."""
        times = self.times
        buckets = self.buckets
        while times:
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
                if stored in bucket:  # else deleted since the bucket was sorted
                    key = bucket.pop(stored)
                    if key is None:
                        key = _user_key(stored)
                    self._count -= 1
                    self.added.discard(stored)
                    self.removed.add(stored)
                    return time, key
            self._drain_time = None  # every remaining entry was stale
            if not bucket:
                self._drop_time()
        return None

    def __len__(self) -> int:
        return self._count


class Timers:
    """Both timer domains of one operator, with their persistence."""

    def __init__(self, operator: str, prefix_of: Callable[[Key], bytes]) -> None:
        self.cf = timers_cf(operator)
        self.event = TimerHeap()
        self.processing = TimerHeap()
        self._prefix_of = prefix_of
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
        (self.event if domain == EVENT else self.processing).add(
            time, key, stored_timer_key(self._prefix_of(key), domain, time))

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

    def collect(self, batch: Batch) -> None:
        """Write added and deleted timers into ``batch``."""
        cf = self.cf
        for heap in (self.event, self.processing):
            # Disjoint sets (add and remove each discard from the other): order is free.
            added = heap.added
            if added:
                batch.put_many(cf, list(added), [b""] * len(added))
                added.clear()
            if heap.removed:
                batch.delete_many(cf, list(heap.removed))
                heap.removed.clear()

    def load(
        self, backend: StateBackend, lower: bytes | None = None, upper: bytes | None = None
    ) -> int:
        """Load persisted timers (optionally one key-group range) with one scan; returns count.

        User keys stay undecoded until their timer fires."""
        before = len(self.event) + len(self.processing)
        event = EVENT[0]
        window = WINDOW[0]
        marks = self.event.marks
        unpack_time = _be.unpack_from
        # Keys only (the values are empty), in one read. They come in (key group, domain,
        # time) order, so each run of one domain and time is one bucket, filled in C.
        stored_keys = backend.keys(self.cf, lower, upper, sys.maxsize)
        for head, run in groupby(stored_keys, _domain_and_time):
            domain = head[0]
            if domain == window:
                marks.update(run)
                continue
            heap = self.event if domain == event else self.processing
            heap.bucket(unpack_time(head, 1)[0] - _OFFSET).update(zip(run, repeat(None)))
        for heap in (self.event, self.processing):
            heap._count = sum(len(b) for b in heap.buckets.values())
        for loader in self.loaders:
            loader(backend, lower, upper)
        return len(self.event) + len(self.processing) - before

    def pending(self, key: Key | None = None) -> Iterator[tuple[str, int, Any]]:
        """Live timers as (domain, time, key), sorted; only ``key``'s if given."""
        out = []
        for domain, heap in (("event", self.event), ("processing", self.processing)):
            for time, k in heap.live:
                if key is None or k == key:
                    out.append((domain, time, k))
        return iter(sorted(out, key=lambda t: (t[0], t[1], repr(t[2]))))
