"""The storage interface every state backend implements, and the atomic write batch.

A backend is a set of named column families (one per state, plus internal ones such as timers
and checkpoint metadata), each an ordered map from bytes to bytes. Writes go in one atomic
:class:`Batch`; that batch is what makes a checkpoint all-or-nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

__all__ = ["Batch", "StateBackend", "PUT", "DELETE", "DELETE_RANGE", "PUT_MANY", "DELETE_MANY"]

PUT = 0
DELETE = 1
DELETE_RANGE = 2
PUT_MANY = 3
"""A run of puts to one column family as one op: ``(PUT_MANY, cf, keys, values)``."""
DELETE_MANY = 4
"""A run of deletes from one column family as one op: ``(DELETE_MANY, cf, keys, None)``."""
_MANY = (PUT_MANY, DELETE_MANY)

Op = tuple[int, str, Any, Any]
"""``(kind, cf, key, value)``; for PUT_MANY the key and value are lists of them, for
DELETE_MANY the key."""


@dataclass
class Batch:
    """An ordered list of writes applied atomically by :meth:`StateBackend.write`.

    >>> b = Batch()
    >>> b.put("counts", b"k", b"v"); b.delete("counts", b"old"); len(b)
    2
    >>> b.put_many("counts", [b"a", b"b"], [b"1", b"2"]); len(b), len(b.ops)
    (4, 3)
    >>> list(b.singles())[2:]
    [(0, 'counts', b'a', b'1'), (0, 'counts', b'b', b'2')]
    """

    ops: list[Op] = field(default_factory=list)

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        self.ops.append((PUT, cf, key, value))

    def put_many(self, cf: str, keys: list[bytes], values: list[bytes]) -> None:
        """Put ``values[i]`` at ``keys[i]`` as one op, the same as ``put`` of each pair in
        order (a repeated key takes its last value), with no tuple per entry: a checkpoint's
        dirty ValueState goes to the backend this way, column by column."""
        if keys:
            self.ops.append((PUT_MANY, cf, keys, values))

    def delete(self, cf: str, key: bytes) -> None:
        self.ops.append((DELETE, cf, key, None))

    def delete_many(self, cf: str, keys: list[bytes]) -> None:
        """Delete each of ``keys``, as one op (a sweep's deletions go this way)."""
        if keys:
            self.ops.append((DELETE_MANY, cf, keys, None))

    def delete_range(self, cf: str, lower: bytes, upper: bytes) -> None:
        """Delete every key in ``[lower, upper)``."""
        self.ops.append((DELETE_RANGE, cf, lower, upper))

    def extend(self, other: Batch) -> None:
        self.ops.extend(other.ops)

    def singles(self) -> Iterator[Op]:
        """Every op in order, each PUT_MANY and DELETE_MANY spelled out as single ops."""
        return singles(self.ops)

    def expanded(self) -> Batch:
        """This batch with no PUT_MANY or DELETE_MANY op (itself if it has none), for
        backends without :attr:`StateBackend.takes_put_many`."""
        if not any(op[0] in _MANY for op in self.ops):
            return self
        return Batch(list(self.singles()))

    def size_bytes(self) -> int:
        """Bytes of keys and values written (for metrics)."""
        total = 0
        for kind, _, key, value in self.ops:
            if kind == PUT_MANY:
                total += sum(map(len, key)) + sum(map(len, value))
            elif kind == DELETE_MANY:
                total += sum(map(len, key))
            else:
                total += len(key) + len(value or b"")
        return total

    def __len__(self) -> int:
        """Entries written or deleted (a PUT_MANY or DELETE_MANY counts each of its keys)."""
        return sum(len(op[2]) if op[0] in _MANY else 1 for op in self.ops)


def singles(ops: Iterable[Op]) -> Iterator[Op]:
    """``ops`` in order, each PUT_MANY and DELETE_MANY spelled out as single ops."""
    for op in ops:
        if op[0] == PUT_MANY:
            yield from zip(repeat(PUT), repeat(op[1]), op[2], op[3])
        elif op[0] == DELETE_MANY:
            yield from zip(repeat(DELETE), repeat(op[1]), op[2], repeat(None))
        else:
            yield op


WriteListener = Callable[[Batch], None]


class StateBackend(ABC):
    """Ordered bytes-to-bytes column families with atomic batched writes.

    Subclass it to add a store; ``InMemoryStateBackend`` and ``RocksDbStateBackend`` are the
    two that ship. Listeners added with :meth:`add_write_listener` see every batch after it is
    applied (the Kafka changelog is one); they may see PUT_MANY and DELETE_MANY ops (read
    them through :meth:`Batch.singles`).
    """

    takes_put_many = False
    """Whether ``_apply`` handles PUT_MANY and DELETE_MANY ops; if not, :meth:`write` spells
    them out first."""

    def __init__(self) -> None:
        self._listeners: list[WriteListener] = []
        self.round_trips = 0
        """Backend calls made (gets, multi-gets, range scans and batch writes)."""

    @abstractmethod
    def get(self, cf: str, key: bytes) -> bytes | None:
        """The value at ``key`` in column family ``cf``, or None."""

    @abstractmethod
    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        """Values for many keys in one call, in the order asked."""

    @abstractmethod
    def iterate(
        self,
        cf: str,
        lower: bytes | None = None,
        upper: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Entries with ``lower <= key < upper`` in key order (descending if ``reverse``)."""

    @abstractmethod
    def _apply(self, batch: Batch, sync: bool) -> None:
        """Apply ``batch`` atomically."""

    @abstractmethod
    def column_families(self) -> list[str]:
        """Names of the column families that exist."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the backend."""

    def write(self, batch: Batch, sync: bool = False) -> None:
        """Apply ``batch`` atomically, then tell the write listeners."""
        if not batch.ops:
            return
        self.round_trips += 1
        self._apply(batch if self.takes_put_many else batch.expanded(), sync)
        for listener in self._listeners:
            listener(batch)

    def add_write_listener(self, listener: WriteListener) -> None:
        self._listeners.append(listener)

    def count(self, cf: str) -> int:
        """Number of entries in ``cf`` (``eddies inspect``; a full scan unless the backend
        knows it)."""
        return sum(1 for _ in self.iterate(cf))

    def keys(self, cf: str, lower: bytes | None, upper: bytes | None, limit: int) -> list[bytes]:
        """The first ``limit`` keys with ``lower <= key < upper``, in order, as one list."""
        out: list[bytes] = []
        for key, _ in self.iterate(cf, lower, upper):
            out.append(key)
            if len(out) >= limit:
                break
        return out

    def is_empty(self, cf: str) -> bool:
        """Whether ``cf`` holds no entry (one step of a range read)."""
        return next(iter(self.iterate(cf)), None) is None

    def __enter__(self) -> StateBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
