"""InMemoryStateBackend: sorted in-process column families, for tests and development.

A column family is a dict of its entries plus, once a range read asked for it, a sorted
list of its keys. Writes touch the dict: a new key joins an unsorted list, merged into the
sorted one at the next range read (one timsort merge of two sorted runs); a deleted key stays
in the sorted list, skipped by reads, until deleted keys make up a quarter of it. A table
written far more than it is read (window and timer state, between restarts) drops its order
and sorts afresh at the next read. A checkpoint of many new keys (timers, windows,
expiry-index entries) therefore costs dict stores, not one sorted insert each.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import groupby, repeat
from operator import itemgetter

from eddies.state.backend import DELETE, PUT, Batch, StateBackend

__all__ = ["InMemoryStateBackend"]

_kind_and_cf = itemgetter(0, 1)
_key_and_value = itemgetter(2, 3)
_key = itemgetter(2)


class _Table:
    """One column family: entries, and their keys in order (see the module docstring)."""

    __slots__ = ("data", "order", "fresh", "gone")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        # Sorted keys, kept from the first range read on; None when no range read has asked
        # since many writes (then the next read sorts the keys afresh).
        self.order: list[bytes] | None = None
        self.fresh: list[bytes] = []  # new keys, not in ``order`` yet
        self.gone: set[bytes] = set()  # deleted keys still in ``order``

    def put(self, key: bytes, value: bytes) -> None:
        data = self.data
        if key not in data and self.order is not None:
            gone = self.gone
            if key in gone:
                gone.discard(key)  # still in order
            else:
                self.fresh.append(key)
                if len(self.fresh) + len(gone) > max(65_536, len(data)):
                    self._unread()
        data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None and self.order is not None:
            gone = self.gone
            gone.add(key)
            if len(self.fresh) + len(gone) > max(65_536, len(self.data)):
                self._unread()

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """``put`` of each ``(key, value)`` in order, with the order bookkeeping done once."""
        data = self.data
        new = [key for key, _ in items if key not in data]
        data.update(items)
        if self.order is None or not new:
            return
        if len(new) > 1:
            new = list(dict.fromkeys(new))  # a key put twice in the run joins once
        gone = self.gone
        if gone:
            back = gone.intersection(new)  # deleted but still in order: in order again
            if back:
                gone.difference_update(back)
                new = [key for key in new if key not in back]
        self.fresh.extend(new)
        if len(self.fresh) + len(gone) > max(65_536, len(data)):
            self._unread()

    def delete_many(self, keys: list[bytes]) -> None:
        """``delete`` of each key, with the order bookkeeping done once."""
        popped = list(map(self.data.pop, keys, repeat(None)))
        order = self.order
        if order is None:
            return
        n = len(keys)
        if n and order[:n] == keys:
            # The first keys in order, as a sweep deletes the expiry index it just read from
            # the front: cut them off now. (The list compare is by identity here, since they
            # are the very objects of the order; probing each one later to find it deleted
            # would be a cache miss per key.)
            del order[:n]
            return
        gone = self.gone
        gone.update(key for key, old in zip(keys, popped, strict=True) if old is not None)
        if len(self.fresh) + len(gone) > max(65_536, len(self.data)):
            self._unread()

    def _unread(self) -> None:
        """Stop keeping the order of a table written much more than it is range-read: the
        next range read sorts its keys afresh."""
        self.order = None
        self.fresh = []
        self.gone = set()

    def sorted_keys(self) -> list[bytes]:
        """The keys in order, brought up to date in place."""
        order = self.order
        if order is None:
            order = self.order = sorted(self.data)
            return order
        fresh = self.fresh
        if fresh:
            fresh.sort()
            if order and fresh[0] < order[-1]:
                # New keys mostly land at the end (expiry times, timers): merge the tail
                # they overlap, not the whole list.
                p = bisect_left(order, fresh[0])
                fresh.extend(order[p:])
                del order[p:]
                fresh.sort()
            order.extend(fresh)
            self.fresh = []
        gone = self.gone
        if gone:
            data = self.data
            if order[0] not in data:
                # Deleted keys at the front (the expiry index, swept from its oldest end):
                # dropped in O(deleted) rather than by filtering the whole list.
                i = 1
                while i < len(order) and order[i] not in data:
                    i += 1
                gone.difference_update(order[:i])
                del order[:i]
            if len(gone) * 4 > len(order):
                order[:] = [k for k in order if k in data]
                gone.clear()
        return order

    def keys_between(self, lower: bytes | None, upper: bytes | None) -> tuple[list[bytes], int, int]:
        order = self.sorted_keys()
        lo = 0 if lower is None else bisect_left(order, lower)
        hi = len(order) if upper is None else bisect_left(order, upper)
        return order, lo, hi


def _scan(table: _Table, order: list[bytes], lo: int, hi: int,
          reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    get = table.data.get
    for i in (range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)):
        key = order[i]
        value = get(key)
        if value is not None:
            yield key, value


class InMemoryStateBackend(StateBackend):
    """Column families held in memory, in key order; nothing survives the process.

    >>> b = InMemoryStateBackend()
    >>> batch = Batch(); batch.put("s", b"b", b"2"); batch.put("s", b"a", b"1")
    >>> b.write(batch); list(b.iterate("s"))
    [(b'a', b'1'), (b'b', b'2')]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cfs: dict[str, _Table] = {}

    def _cf(self, cf: str) -> _Table:
        table = self._cfs.get(cf)
        if table is None:
            table = self._cfs[cf] = _Table()
        return table

    def get(self, cf: str, key: bytes) -> bytes | None:
        self.round_trips += 1
        table = self._cfs.get(cf)
        return None if table is None else table.data.get(key)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return [None] * len(keys)
        return list(map(table.data.get, keys))

    def iterate(
        self,
        cf: str,
        lower: bytes | None = None,
        upper: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return iter(())
        # Lazy, over the key list as it is now: as with any backend, do not write (or start
        # another range read of the table) while holding the iterator.
        order, lo, hi = table.keys_between(lower, upper)
        return _scan(table, order, lo, hi, reverse)

    def _apply(self, batch: Batch, sync: bool) -> None:
        # Runs of ops of one kind on one column family; a run of puts to a table no range
        # read has asked for (no key order to keep) is one dict update, in C.
        for (kind, cf), run in groupby(batch.ops, _kind_and_cf):
            table = self._cf(cf)
            if kind == PUT:
                if table.order is None:
                    table.data.update(map(_key_and_value, run))
                else:
                    table.put_many(list(map(_key_and_value, run)))
            elif kind == DELETE:
                table.delete_many(list(map(_key, run)))
            else:
                for _, _, lower, upper in run:
                    order, lo, hi = table.keys_between(lower, upper)
                    for k in order[lo:hi]:
                        table.delete(k)

    def column_families(self) -> list[str]:
        return sorted(self._cfs)

    def count(self, cf: str) -> int:
        table = self._cfs.get(cf)
        return 0 if table is None else len(table.data)

    def keys(self, cf: str, lower: bytes | None, upper: bytes | None, limit: int) -> list[bytes]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return []
        order, lo, hi = table.keys_between(lower, upper)
        live = table.data.__contains__
        out: list[bytes] = []
        while lo < hi and len(out) < limit:  # deleted keys may still be in the order
            step = min(hi, lo + limit - len(out))
            out.extend(filter(live, order[lo:step]))
            lo = step
        return out

    def is_empty(self, cf: str) -> bool:
        self.round_trips += 1
        table = self._cfs.get(cf)
        return table is None or not table.data  # no range read: the table stays unordered

    def close(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""
