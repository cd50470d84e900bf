"""RocksDbStateBackend: column families in a RocksDB dir through rocksdict.

One column family per state name. ``durability=True`` makes every batch write sync the WAL;
``close()`` flushes the WAL and the memtables, so a clean close leaves nothing to replay.
A dir can be open in one place at a time: a second open gets :class:`StateDirLockedError`.

``read_only=True`` opens a read-only snapshot view instead, which takes no lock: it works while
a running job holds the dir, and sees what that job had written when the view was opened
(memtables are rebuilt from its WAL), nothing written after. Writes to it raise
:class:`BackendError`. ``eddies state ls/get`` open dirs this way.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import groupby, islice, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import rocksdict

from eddies.errors import BackendError, StateDirLockedError
from eddies.state.backend import DELETE, DELETE_MANY, PUT, PUT_MANY, Batch, StateBackend

__all__ = ["RocksDbStateBackend"]

_kind_and_cf = itemgetter(0, 1)
_key_and_value = itemgetter(2, 3)
_key = itemgetter(2)


WRITE_BUFFER_BYTES = 2 << 20
"""Memtable size per column family. A checkpoint rewrites every dirty key, so memtables fill
with versions of the same keys; a small one keeps each insert's skiplist search short and in
cache (a 64 MB memtable made inserts about 2x slower in the 1M-event benchmark, and 8 MB made
jobs 1 and 3 about 6% slower than 2 MB; 1 MB was no faster)."""


def _cf_options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def _options() -> rocksdict.Options:
    opts = _cf_options()
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.increase_parallelism(max(2, os.cpu_count() or 2))
    return opts


class RocksDbStateBackend(StateBackend):
    """State in a RocksDB directory.

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> with RocksDbStateBackend(path) as db:
    ...     batch = Batch(); batch.put("s", b"k", b"v"); db.write(batch)
    ...     with RocksDbStateBackend(path, read_only=True) as view:  # no lock taken
    ...         view.get("s", b"k")
    b'v'
    """

    takes_put_many = True

    def __init__(
        self, path: str | os.PathLike[str], durability: bool = False, *, read_only: bool = False
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.durability = durability
        self.read_only = read_only
        if read_only:
            if not (self.path / "CURRENT").exists():
                raise BackendError(
                    f"{self.path} is not a RocksDB state dir (no CURRENT file); give the dir "
                    "a job ran with state='rocksdb:DIR'"
                )
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"cannot use {self.path} as a RocksDB state dir: {exc}"
                ) from exc
        existing: list[str] = []
        if (self.path / "CURRENT").exists():
            try:
                existing = rocksdict.Rdict.list_cf(str(self.path))
            except Exception as exc:
                raise BackendError(f"cannot read RocksDB dir {self.path}: {exc}") from exc
        try:
            self._db = rocksdict.Rdict(
                str(self.path),
                options=_options(),
                column_families={
                    n: _cf_options() for n in existing if n != "default"
                },
                access_type=(
                    rocksdict.AccessType.read_only() if read_only
                    else rocksdict.AccessType.read_write()
                ),
            )
        except Exception as exc:
            if read_only:
                raise BackendError(
                    f"cannot open RocksDB dir {self.path} read-only: {exc} (if a job is "
                    "compacting it right now, try again)"
                ) from exc
            if "lock" in str(exc).lower():
                raise StateDirLockedError(
                    f"RocksDB state dir {self.path} is in use by another process or backend "
                    "(a running job?). Stop it first, or read it without a lock: "
                    "RocksDbStateBackend(path, read_only=True), as `eddies state ls` does."
                ) from exc
            raise BackendError(f"cannot open RocksDB dir {self.path}: {exc}") from exc
        self._cfs: dict[str, rocksdict.Rdict] = {}
        self._handles: dict[str, rocksdict.ColumnFamily] = {}
        for name in existing:
            if name != "default":
                self._cfs[name] = self._db.get_column_family(name)
                self._handles[name] = self._db.get_column_family_handle(name)
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = durability
        self._sync_opts = rocksdict.WriteOptions()
        self._sync_opts.sync = True
        self._closed = False

    def _cf(self, cf: str) -> rocksdict.Rdict | None:
        return self._cfs.get(cf)

    def _create(self, cf: str) -> rocksdict.ColumnFamily:
        handle = self._handles.get(cf)
        if handle is None:
            self._cfs[cf] = self._db.create_column_family(cf, _cf_options())
            handle = self._handles[cf] = self._db.get_column_family_handle(cf)
        return handle

    def get(self, cf: str, key: bytes) -> bytes | None:
        self.round_trips += 1
        table = self._cfs.get(cf)
        return None if table is None else table.get(key)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return [None] * len(keys)
        return cast("list[bytes | None]", table.get(cast("list[Any]", keys)))

    def keys(self, cf: str, lower: bytes | None, upper: bytes | None, limit: int) -> list[bytes]:
        self.round_trips += 1
        table = self._cfs.get(cf)
        if table is None:
            return []
        ro = rocksdict.ReadOptions()
        if upper is not None:
            ro.set_iterate_upper_bound(upper)
        keys = cast("Iterable[bytes]", table.keys(from_key=lower, read_opt=ro))
        return list(islice(keys, limit))

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
        return self._scan(table, lower, upper, reverse)

    @staticmethod
    def _scan(
        table: rocksdict.Rdict, lower: bytes | None, upper: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        # Only the upper bound goes into ReadOptions: rocksdict's set_iterate_lower_bound
        # stores its argument as the *upper* bound (seen in 0.3.29), which silently widens
        # every range read. The lower bound is a seek going forward and a check going back.
        ro = rocksdict.ReadOptions()
        if upper is not None:
            ro.set_iterate_upper_bound(upper)
        if not reverse:  # items() steps in Rust: half the cost of valid/key/value/next
            yield from table.items(from_key=lower, read_opt=ro)
            return
        it = table.iter(ro)
        it.seek_to_last()
        while it.valid():
            key = it.key()
            if lower is not None and key < lower:
                return
            yield key, it.value()
            it.prev()

    def _apply(self, batch: Batch, sync: bool) -> None:
        if self.read_only:
            raise BackendError(
                f"RocksDB dir {self.path} is open read-only (a snapshot view); open it without "
                "read_only=True to write"
            )
        wb = rocksdict.WriteBatch(raw_mode=True)
        # Runs of ops of one kind on one column family go to the batch through C-level
        # loops (starmap) with that family as the batch's default, in key order: memtable
        # inserts in order reuse the skiplist position of the one before (about half the
        # cost of random order). The sort is stable, so writes to one key keep their order.
        for (kind, cf), run in groupby(batch.ops, _kind_and_cf):
            handle = self._handles.get(cf) or self._create(cf)
            wb.set_default_column_family(handle)
            if kind == PUT:
                deque(starmap(wb.put, map(_key_and_value, sorted(run, key=_key))), 0)
            elif kind == PUT_MANY:
                for _, _, keys, values in run:
                    # The keys are distinct: sorting them alone and looking their values up
                    # costs about half of sorting the (key, value) pairs.
                    value_of = dict(zip(keys, values, strict=True))
                    ordered = sorted(keys)
                    deque(map(wb.put, ordered, map(value_of.__getitem__, ordered)), 0)
            elif kind == DELETE:
                deque(map(wb.delete, sorted(map(_key, run))), 0)
            elif kind == DELETE_MANY:
                for _, _, keys, _ in run:
                    deque(map(wb.delete, sorted(keys)), 0)
            else:  # delete_range ignores the default family (rocksdict 0.3): name it
                for _, _, lower, upper in run:
                    wb.delete_range(lower, cast(bytes, upper), handle)
        self._db.write(wb, self._sync_opts if sync else self._write_opts)

    def estimate(self, cf: str) -> tuple[int, int]:
        """RocksDB's cheap estimates of ``cf``'s entries and bytes (SST data plus memtables),
        for metrics; exact counts need a scan (:meth:`count`)."""
        table = self._cfs.get(cf)
        if table is None:
            return 0, 0
        entries = table.property_int_value("rocksdb.estimate-num-keys") or 0
        size = (table.property_int_value("rocksdb.estimate-live-data-size") or 0) + (
            table.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return entries, size

    def column_families(self) -> list[str]:
        return sorted(self._cfs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.read_only:  # a read-only view has nothing to flush
            self._db.flush_wal(True)
            self._db.flush()
        for table in self._cfs.values():
            if not self.read_only:
                table.flush()  # Rdict.flush() covers only the default column family
            table.close()
        self._cfs.clear()
        self._handles.clear()
        self._db.close()
        del self._db
