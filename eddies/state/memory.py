"""InMemoryStateBackend: sorted in-process column families, for tests and development.

A column family is a dict of its entries plus, once a range read asked for it, its keys in
order as a few sorted runs. Writes touch the dict: a new key joins an unsorted list, which the
next range read sorts into a run of its own; runs are merged when one is no more than twice
the size of the next (as timsort keeps its stack), so a key takes part in O(log n) merges,
however often the table is read. A range read bisects every run and merges the slices in
range. That suits an expiry index: every checkpoint adds keys all over it and every sweep
reads its front; merging the new keys into one sorted list at every read compared each key of
the index, a cache miss each, at every sweep. A deleted key stays in its run, skipped by
reads, until deleted keys make up a quarter of the table, except that deleting the first keys
of runs (a sweep deleting what it just read) cuts them off at once. A table written far more
than it is read (window and timer state, between restarts) drops its order and sorts afresh
at the next read. A checkpoint of many new keys (timers, windows, expiry-index entries)
therefore costs dict stores, not one sorted insert each.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import filterfalse, groupby, repeat
from operator import itemgetter

from eddies.state.backend import DELETE, DELETE_MANY, PUT, PUT_MANY, Batch, StateBackend

__all__ = ["InMemoryStateBackend"]

_kind_and_cf = itemgetter(0, 1)
_key_and_value = itemgetter(2, 3)
_key = itemgetter(2)


class _Table:
    """One column family: entries, and their keys in order (see the module docstring).

    Every key of ``data``, and every key of ``gone``, is in exactly one run or in ``fresh``.
    """

    __slots__ = ("data", "runs", "fresh", "gone")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        # Sorted runs of keys, largest first, kept from the first range read on; None when
        # no range read has asked since many writes (then the next read sorts afresh).
        self.runs: list[list[bytes]] | None = None
        self.fresh: list[bytes] = []  # new keys, in no run yet
        self.gone: set[bytes] = set()  # deleted keys still in a run or in fresh

    def _check_size(self) -> None:
        if len(self.fresh) + len(self.gone) > max(65_536, len(self.data)):
            self._unread()

    def put(self, key: bytes, value: bytes) -> None:
        data = self.data
        if key not in data and self.runs is not None:
            gone = self.gone
            if key in gone:
                gone.discard(key)  # still in its run
            else:
                self.fresh.append(key)
                self._check_size()
        data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None and self.runs is not None:
            self.gone.add(key)
            self._check_size()

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """``put`` of each ``(key, value)`` in order, with the order bookkeeping done once."""
        data = self.data
        new = [key for key, _ in items if key not in data]
        data.update(items)
        if self.runs is None or not new:
            return
        if len(new) > 1:
            new = list(dict.fromkeys(new))  # a key put twice in the run joins once
        gone = self.gone
        if gone:
            back = gone.intersection(new)  # deleted but still in a run: live again
            if back:
                gone.difference_update(back)
                new = [key for key in new if key not in back]
        self.fresh.extend(new)
        self._check_size()

    def put_columns(self, keys: list[bytes], values: list[bytes]) -> None:
        """``put_many`` of ``keys`` and their ``values``, in C-level loops (a repeated key
        takes its last value and joins the key order once)."""
        data = self.data
        if self.runs is None:
            data.update(zip(keys, values, strict=True))
            return
        new = list(filterfalse(data.__contains__, keys))
        data.update(zip(keys, values, strict=True))
        if not new:
            return
        if len(new) > 1:
            new = list(dict.fromkeys(new))
        gone = self.gone
        if gone:
            back = gone.intersection(new)  # deleted but still in a run: live again
            if back:
                gone.difference_update(back)
                new = [key for key in new if key not in back]
        self.fresh.extend(new)
        self._check_size()

    def delete_many(self, keys: list[bytes]) -> None:
        """``delete`` of each key, with the order bookkeeping done once."""
        popped = list(map(self.data.pop, keys, repeat(None)))
        runs = self.runs
        if runs is None:
            return
        killed = {key for key, old in zip(keys, popped, strict=True) if old is not None}
        if not killed:
            return
        # Keys at the front of runs, as a sweep deletes the index entries it just read: cut
        # off now (they were just read, so testing them is no cache miss).
        cut: set[bytes] = set()
        for run in runs:
            i = 0
            n = len(run)
            while i < n and run[i] in killed:
                i += 1
            if i:
                cut.update(run[:i])
                del run[:i]
        if cut:
            runs[:] = [run for run in runs if run]
            killed.difference_update(cut)
        if killed:
            self.gone.update(killed)
            self._check_size()

    def _unread(self) -> None:
        """Stop keeping the order of a table written much more than it is range-read: the
        next range read sorts its keys afresh."""
        self.runs = None
        self.fresh = []
        self.gone = set()

    def _settled_runs(self) -> list[list[bytes]]:
        """The runs, with the fresh keys sorted into one of their own and runs merged while
        one is no more than twice the size of the next."""
        runs = self.runs
        if runs is None:
            runs = self.runs = [sorted(self.data)] if self.data else []
            self.fresh = []
            self.gone = set()
            return runs
        fresh = self.fresh
        if fresh:
            fresh.sort()
            runs.append(fresh)
            self.fresh = []
            while len(runs) > 1 and len(runs[-2]) <= 2 * len(runs[-1]):
                newer = runs.pop()
                older = runs[-1]
                older.extend(newer)
                older.sort()  # two sorted runs: one merge
        gone = self.gone
        if gone and len(gone) * 4 > sum(map(len, runs)):
            data = self.data
            runs[:] = [kept for kept in ([k for k in run if k in data] for run in runs) if kept]
            gone.clear()
        return runs

    def keys_between(self, lower: bytes | None, upper: bytes | None) -> tuple[list[bytes], int, int]:
        """``(keys, lo, hi)``: ``keys[lo:hi]`` holds every key in ``[lower, upper)`` in order,
        deleted ones among them (readers skip those)."""
        runs = self._settled_runs()
        pieces = []
        for run in runs:
            lo = 0 if lower is None else bisect_left(run, lower)
            hi = len(run) if upper is None else bisect_left(run, upper)
            if lo < hi:
                pieces.append((run, lo, hi))
        if not pieces:
            return [], 0, 0
        if len(pieces) == 1:
            return pieces[0]
        if 2 * sum(hi - lo for _, lo, hi in pieces) > sum(map(len, runs)):
            # A read of most of the table: merge every run into one, for the reads after.
            whole = [key for run in runs for key in run]
            whole.sort()
            runs[:] = [whole]
            lo = 0 if lower is None else bisect_left(whole, lower)
            hi = len(whole) if upper is None else bisect_left(whole, upper)
            return whole, lo, hi
        merged: list[bytes] = []
        for run, lo, hi in pieces:
            merged += run[lo:hi]
        merged.sort()
        return merged, 0, len(merged)


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

    takes_put_many = True

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
                if table.runs is None:
                    table.data.update(map(_key_and_value, run))
                else:
                    table.put_many(list(map(_key_and_value, run)))
            elif kind == PUT_MANY:
                for _, _, keys, values in run:
                    table.put_columns(keys, values)
            elif kind == DELETE:
                table.delete_many(list(map(_key, run)))
            elif kind == DELETE_MANY:
                for _, _, keys, _ in run:
                    table.delete_many(keys)
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
        if not table.gone:  # every key in the runs is live: no probe per key
            return order[lo:min(hi, lo + limit)]
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
