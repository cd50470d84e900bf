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
"""

from __future__ import annotations

import heapq
import struct
from bisect import insort
from collections.abc import Callable, Iterator
from typing import Any

from eddies.state.backend import DELETE, PUT, Batch, StateBackend
from eddies.state.keys import Key, decode_prefixed

__all__ = ["TimerHeap", "Timers", "timers_cf"]

_be = struct.Struct(">Q")
_OFFSET = 2**63
EVENT = b"e"
PROCESSING = b"p"


def _user_key(stored_key: bytes) -> Key:
    """The user key of a stored timer key (the tuple element at offset 11)."""
    # The common key, one str without NUL bytes (05 02 <utf-8> 00 00), decoded directly.
    if (stored_key[11:13] == b"\x05\x02" and stored_key.endswith(b"\x00\x00")
            and stored_key.find(b"\x00", 13) == len(stored_key) - 2):
        return (stored_key[13:-2].decode("utf-8"),)
    return decode_prefixed(stored_key, 11)[0]


def timers_cf(operator: str) -> str:
    return f"__timers__.{operator}" if operator else "__timers__"


class TimerHeap:
    """Timers of one time domain, bucketed by time: a min-heap of distinct times, and per time
    a dict of the keys due then (which deduplicates).

    Timers fire in ``(time, order)`` order, ``order`` being the key's stored bytes: a
    deterministic order that survives a restore and never compares keys of different types.
    Many timers share a time (every key's window ends together), so the heap holds one entry
    per time and a due bucket is sorted once, when it starts firing.
    """

    __slots__ = ("times", "buckets", "added", "removed", "_count", "_drain_time", "_drain",
                 "_drain_at")

    def __init__(self) -> None:
        self.times: list[int] = []  # heap; a time stays until its bucket is empty
        self.buckets: dict[int, dict[Key, bytes]] = {}
        self.added: set[tuple[int, Key]] = set()
        self.removed: set[tuple[int, Key]] = set()
        self._count = 0
        # The bucket being fired: its (order, key) pairs sorted, and the next to fire.
        self._drain_time: int | None = None
        self._drain: list[tuple[bytes, Key]] = []
        self._drain_at = 0

    @property
    def heap(self) -> list[tuple[int, bytes, Key]]:
        """Live timers as ``(time, order, key)``, unordered."""
        return [(t, o, k) for t, bucket in self.buckets.items() for k, o in bucket.items()]

    @property
    def live(self) -> set[tuple[int, Key]]:
        """Live timers as ``(time, key)``."""
        return {(t, k) for t, bucket in self.buckets.items() for k in bucket}

    def add(self, time: int, key: Key, order: bytes, persist: bool = True) -> None:
        bucket = self.buckets.get(time)
        if bucket is None:
            bucket = self.buckets[time] = {}
            heapq.heappush(self.times, time)
        elif key in bucket:
            return
        bucket[key] = order
        self._count += 1
        if time == self._drain_time:  # firing now: it takes its turn among the rest
            insort(self._drain, (order, key), lo=self._drain_at)
        if persist:
            entry = (time, key)
            self.added.add(entry)
            if self.removed:
                self.removed.discard(entry)

    def remove(self, time: int, key: Key) -> None:
        bucket = self.buckets.get(time)
        if bucket is not None and key in bucket:
            del bucket[key]  # an emptied bucket goes when pop_due reaches it
            self._count -= 1
            entry = (time, key)
            self.added.discard(entry)
            self.removed.add(entry)

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
                self._drain = sorted([(o, k) for k, o in bucket.items()])
                self._drain_at = 0
            drain = self._drain
            while self._drain_at < len(drain):
                key = drain[self._drain_at][1]
                self._drain_at += 1
                if key in bucket:  # else deleted since the bucket was sorted
                    del bucket[key]
                    self._count -= 1
                    entry = (time, key)
                    self.added.discard(entry)
                    self.removed.add(entry)
                    return entry
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

    def register(self, domain: bytes, time: int, key: Key) -> None:
        (self.event if domain == EVENT else self.processing).add(time, key, self._prefix_of(key))

    def delete(self, domain: bytes, time: int, key: Key) -> None:
        (self.event if domain == EVENT else self.processing).remove(time, key)

    def _stored_key(self, domain: bytes, time: int, key: Key) -> bytes:
        prefix = self._prefix_of(key)
        return prefix[:2] + domain + _be.pack(time + _OFFSET) + prefix[2:]

    def collect(self, batch: Batch) -> None:
        """Write added and deleted timers into ``batch``."""
        append = batch.ops.append
        cf = self.cf
        prefix_of = self._prefix_of
        pack_time = _be.pack
        for domain, heap in ((EVENT, self.event), (PROCESSING, self.processing)):
            for time, key in heap.added:
                p = prefix_of(key)
                append((PUT, cf, p[:2] + domain + pack_time(time + _OFFSET) + p[2:], b""))
            for time, key in heap.removed:
                p = prefix_of(key)
                append((DELETE, cf, p[:2] + domain + pack_time(time + _OFFSET) + p[2:], None))
            heap.added.clear()
            heap.removed.clear()

    def load(
        self, backend: StateBackend, lower: bytes | None = None, upper: bytes | None = None
    ) -> int:
        """Load persisted timers (optionally one key-group range) with one scan; returns count."""
        n = 0
        adds = {EVENT[0]: self.event.add, PROCESSING[0]: self.processing.add}
        unpack_time = _be.unpack_from
        for stored_key, _ in backend.iterate(self.cf, lower, upper):
            adds[stored_key[2]](unpack_time(stored_key, 3)[0] - _OFFSET, _user_key(stored_key),
                                stored_key[:2] + stored_key[11:], False)
            n += 1
        return n

    def pending(self, key: Key | None = None) -> Iterator[tuple[str, int, Any]]:
        """Live timers as (domain, time, key), sorted; only ``key``'s if given."""
        out = []
        for domain, heap in (("event", self.event), ("processing", self.processing)):
            for time, k in heap.live:
                if key is None or k == key:
                    out.append((domain, time, k))
        return iter(sorted(out, key=lambda t: (t[0], t[1], repr(t[2]))))
