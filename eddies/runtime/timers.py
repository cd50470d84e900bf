"""Per-key event-time and processing-time timers, deduplicated, ordered, and checkpointed.

Timers live in memory as a heap per time domain plus a set for deduplication; changes are
written with the checkpoint batch to the column family ``__timers__.<operator>``::

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
from collections.abc import Callable, Iterator
from typing import Any

from eddies.state.backend import Batch, StateBackend
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
    """Timers of one time domain: a min-heap with a set for dedup and deletes.

    Heap entries are ``(time, order, key)``; ``order`` (the key's stored bytes) makes timers of
    equal time fire in a deterministic order that survives a restore, and keeps keys of
    different types from being compared.
    """

    __slots__ = ("heap", "live", "added", "removed")

    def __init__(self) -> None:
        self.heap: list[tuple[int, bytes, Key]] = []
        self.live: set[tuple[int, Key]] = set()
        self.added: set[tuple[int, Key]] = set()
        self.removed: set[tuple[int, Key]] = set()

    def add(self, time: int, key: Key, order: bytes, persist: bool = True) -> None:
        entry = (time, key)
        if entry in self.live:
            return
        self.live.add(entry)
        heapq.heappush(self.heap, (time, order, key))
        if persist:
            self.added.add(entry)
            self.removed.discard(entry)

    def remove(self, time: int, key: Key) -> None:
        entry = (time, key)
        if entry in self.live:
            self.live.discard(entry)
            self.added.discard(entry)
            self.removed.add(entry)

    def peek_time(self) -> int | None:
        heap = self.heap
        while heap and (heap[0][0], heap[0][2]) not in self.live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, until: int) -> tuple[int, Key] | None:
        """Remove and return the earliest timer with time <= ``until``, or None."""
        heap = self.heap
        live = self.live
        while heap:
            time, _, key = heap[0]
            if (time, key) not in live:
                heapq.heappop(heap)
                continue
            if time > until:
                return None
            heapq.heappop(heap)
            self.remove(time, key)
            return time, key
        return None

    def __len__(self) -> int:
        return len(self.live)


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
        for domain, heap in ((EVENT, self.event), (PROCESSING, self.processing)):
            for time, key in heap.added:
                batch.put(self.cf, self._stored_key(domain, time, key), b"")
            for time, key in heap.removed:
                batch.delete(self.cf, self._stored_key(domain, time, key))
            heap.added.clear()
            heap.removed.clear()

    def load(
        self, backend: StateBackend, lower: bytes | None = None, upper: bytes | None = None
    ) -> int:
        """Load persisted timers (optionally one key-group range) with one scan; returns count."""
        n = 0
        loaded: dict[int, list[tuple[int, bytes, Key]]] = {EVENT[0]: [], PROCESSING[0]: []}
        unpack_time = _be.unpack_from
        for stored_key, _ in backend.iterate(self.cf, lower, upper):
            time = unpack_time(stored_key, 3)[0] - _OFFSET
            loaded[stored_key[2]].append((time, stored_key[:2] + stored_key[11:],
                                          _user_key(stored_key)))
            n += 1
        for domain, heap in ((EVENT, self.event), (PROCESSING, self.processing)):
            entries = loaded[domain[0]]
            if not entries:
                continue
            if heap.heap or heap.live:  # timers already there: add one by one, deduplicated
                for time, order, key in entries:
                    heap.add(time, key, order, persist=False)
                continue
            live = heap.live
            for time, _, key in entries:
                live.add((time, key))
            if len(live) != len(entries):  # equal keys stored twice (1 and 1.0): keep one
                live.clear()
                for time, order, key in entries:
                    heap.add(time, key, order, persist=False)
                continue
            heap.heap = entries
            heapq.heapify(entries)  # O(n), rather than a push per timer
        return n

    def pending(self, key: Key | None = None) -> Iterator[tuple[str, int, Any]]:
        """Live timers as (domain, time, key), sorted; only ``key``'s if given."""
        out = []
        for domain, heap in (("event", self.event), ("processing", self.processing)):
            for time, k in heap.live:
                if key is None or k == key:
                    out.append((domain, time, k))
        return iter(sorted(out, key=lambda t: (t[0], t[1], repr(t[2]))))
