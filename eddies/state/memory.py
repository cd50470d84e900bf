"""InMemoryStateBackend: sorted in-process column families, for tests and development."""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedDict

from eddies.state.backend import DELETE, PUT, Batch, StateBackend

__all__ = ["InMemoryStateBackend"]


class InMemoryStateBackend(StateBackend):
    """Column families held in sorted dicts; nothing survives the process.

    >>> b = InMemoryStateBackend()
    >>> batch = Batch(); batch.put("s", b"b", b"2"); batch.put("s", b"a", b"1")
    >>> b.write(batch); list(b.iterate("s"))
    [(b'a', b'1'), (b'b', b'2')]
    """

    def __init__(self) -> None:
        super().__init__()
        self._cfs: dict[str, SortedDict] = {}

    def _cf(self, cf: str) -> SortedDict:
        table = self._cfs.get(cf)
        if table is None:
            table = self._cfs[cf] = SortedDict()
        return table

    def get(self, cf: str, key: bytes) -> bytes | None:
        self.round_trips += 1
        table = self._cfs.get(cf)
        return None if table is None else table.get(key)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return [None] * len(keys)
        return [table.get(k) for k in keys]

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
        # Lazy: callers must not write to the backend while they hold the iterator.
        keys = table.irange(lower, upper, inclusive=(True, False), reverse=reverse)
        return ((k, table[k]) for k in keys)

    def _apply(self, batch: Batch, sync: bool) -> None:
        # Rewriting a key that exists is a plain dict store: SortedDict.__setitem__ would
        # check its sorted key list first, which is most of the cost of a checkpoint here.
        set_existing = dict.__setitem__
        last_cf = None
        table: SortedDict = None  # type: ignore[assignment]
        for kind, cf, key, value in batch.ops:
            if cf is not last_cf:
                table = self._cf(cf)
                last_cf = cf
            if kind == PUT:
                if key in table:
                    set_existing(table, key, value)
                else:
                    table[key] = value
            elif kind == DELETE:
                if key in table:
                    del table[key]
            else:
                for k in list(table.irange(key, value, inclusive=(True, False))):
                    del table[k]

    def column_families(self) -> list[str]:
        return sorted(self._cfs)

    def count(self, cf: str) -> int:
        table = self._cfs.get(cf)
        return 0 if table is None else len(table)

    def close(self) -> None:
        """Nothing to release; the data stays readable until the object is dropped."""
