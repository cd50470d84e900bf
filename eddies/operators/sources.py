"""Sources: where a job's records come from, read in batches from checkpointable positions.

A source has one or more partitions; each partition reader reads a batch of records, reports
malformed ones as dead letters (with raw text, position and reason) and exposes a position
that a checkpoint stores and a resumed run seeks back to.

>>> src = iterable([{"k": "a"}, {"k": "b"}])
>>> reader = src.partitions()[0]
>>> reader.read(10)
([{'k': 'a'}, {'k': 'b'}], [])
>>> reader.position, reader.done
(2, True)
"""

from __future__ import annotations

import csv as _csv
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from eddies.errors import ConfigError

__all__ = ["DeadLetter", "Source", "SourceReader", "csv", "iterable", "jsonl", "kafka"]


@dataclass
class DeadLetter:
    """A record that could not be processed: where it came from, its raw text, and why."""

    source: str
    position: Any
    raw: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "position": self.position, "raw": self.raw,
                "reason": self.reason}


class SourceReader(ABC):
    """Reads one partition of a source in batches."""

    partition: int = 0
    done: bool = False

    @property
    @abstractmethod
    def position(self) -> Any:
        """Where the next read starts; msgpack-able, stored in checkpoints."""

    @abstractmethod
    def seek(self, position: Any) -> None:
        """Continue from a checkpointed ``position``."""

    @abstractmethod
    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        """Up to ``max_records`` records (fewer at the end), plus dead letters met on the way."""

    def size_hint(self) -> int | None:
        """Total size in position units if known (for progress), else None."""
        return None

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        """Where the ``index``-th record of the last ``read`` came from, for dead letters:
        ``(position, raw text or None)``, or None if unknown."""
        return None

    def close(self) -> None:
        """Release files or connections."""
        return None


class Source(ABC):
    """A named, partitioned input."""

    name: str = "source"
    bounded: bool = True

    @abstractmethod
    def partitions(self) -> list[SourceReader]:
        """Readers for every partition, positioned at the start."""


# -- files ---------------------------------------------------------------------------------------
class _LineReader(SourceReader):
    """Lines of a file by byte offset; subclasses parse them."""

    def __init__(self, source: _FileSource) -> None:
        self.source = source
        self.path = source.path
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise ConfigError(f"source {source.name!r}: cannot open {self.path}: {exc}") from exc
        self._offset = 0
        self._line = 0
        self.done = False
        # (raw line, offset, line number) of each record the last read() returned
        self._read: list[tuple[bytes, int, int]] = []
        self.start()

    def start(self) -> None:
        """Hook run at open (CSV reads its header here)."""

    @property
    def position(self) -> Any:
        return [self._offset, self._line]

    def seek(self, position: Any) -> None:
        offset, line = position
        self._file.seek(offset)
        self._offset, self._line = offset, line
        self.done = False

    def size_hint(self) -> int | None:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return None

    def _lines(self, max_records: int) -> Iterator[tuple[bytes, int, int]]:
        """Yield (line, offset, line number) for up to ``max_records`` non-blank lines."""
        readline = self._file.readline
        n = 0
        while n < max_records:
            raw = readline()
            if not raw:
                self.done = True
                return
            offset, lineno = self._offset, self._line + 1
            self._offset += len(raw)
            self._line = lineno
            if raw.strip():
                n += 1
                yield raw, offset, lineno

    def _where(self, offset: int, line: int) -> dict[str, Any]:
        return {"file": str(self.path), "offset": offset, "line": line}

    def dead(self, raw: bytes, offset: int, line: int, reason: str) -> DeadLetter:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        return DeadLetter(self.source.name, self._where(offset, line), text, reason)

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        if not 0 <= index < len(self._read):
            return None
        raw, offset, line = self._read[index]
        return self._where(offset, line), raw.decode("utf-8", "replace").rstrip("\r\n")

    def close(self) -> None:
        self._file.close()


class _JsonlReader(_LineReader):
    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        loads = orjson.loads
        out: list[Any] = []
        dead: list[DeadLetter] = []
        self._read = located = []
        for item in self._lines(max_records):
            try:
                out.append(loads(item[0]))
            except orjson.JSONDecodeError as exc:
                dead.append(self.dead(*item, f"invalid JSON: {exc}"))
            else:
                located.append(item)
        return out, dead


class _CsvReader(_LineReader):
    def start(self) -> None:
        header = self._file.readline()
        if not header:
            self.done = True
            self.fields: list[str] = []
            return
        self._offset = len(header)
        self._line = 1
        self.fields = next(_csv.reader([header.decode("utf-8-sig")]))
        self._types = self.source.types

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        fields = self.fields
        width = len(fields)
        types = self._types
        out: list[Any] = []
        dead: list[DeadLetter] = []
        self._read = located = []
        batch = list(self._lines(max_records))
        if not batch:
            return out, dead
        try:
            texts = [raw.decode("utf-8") for raw, _, _ in batch]
            rows = list(_csv.reader(texts, strict=True))
        except (UnicodeDecodeError, _csv.Error):
            rows = None
        if rows is not None and len(rows) != len(batch):
            # A stray quote made the reader join lines into one row: parse line by line so
            # each row stays tied to its own line (and the bad one alone goes to dead letters).
            rows = None
        for i, (raw, offset, line) in enumerate(batch):
            if rows is None:
                try:
                    row = next(_csv.reader([raw.decode("utf-8")], strict=True))
                except (UnicodeDecodeError, _csv.Error) as exc:
                    dead.append(self.dead(raw, offset, line, f"invalid CSV: {exc}"))
                    continue
            else:
                row = rows[i]
            if len(row) != width:
                dead.append(self.dead(raw, offset, line,
                                      f"CSV row has {len(row)} fields, header has {width}"))
                continue
            record = dict(zip(fields, row, strict=True))
            if types:
                try:
                    for name, convert in types.items():
                        record[name] = convert(record[name])
                except (ValueError, TypeError, KeyError) as exc:
                    dead.append(self.dead(raw, offset, line,
                                          f"field {name!r}: cannot convert with "
                                          f"{getattr(convert, '__name__', convert)}: {exc}"))
                    continue
            out.append(record)
            located.append((raw, offset, line))
        return out, dead


class _FileSource(Source):
    reader: type[_LineReader]

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name

    def partitions(self) -> list[SourceReader]:
        return [self.reader(self)]

    def __repr__(self) -> str:
        return f"{type(self).__name__.lstrip('_')}({str(self.path)!r})"


class _Jsonl(_FileSource):
    reader = _JsonlReader


class _Csv(_FileSource):
    reader = _CsvReader

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        types: dict[str, Callable[[str], Any]] | None = None,
    ) -> None:
        super().__init__(path, name)
        self.types = dict(types or {})


def jsonl(path: str | os.PathLike[str], *, name: str | None = None) -> Source:
    """One JSON value per line. Bad JSON goes to dead letters with its line and offset.

    >>> jsonl("payments.jsonl")
    Jsonl('payments.jsonl')
    """
    return _Jsonl(path, name)


def csv(
    path: str | os.PathLike[str],
    *,
    types: dict[str, Callable[[str], Any]] | None = None,
    name: str | None = None,
) -> Source:
    """A CSV file with a header row; each row becomes a dict of str.

    ``types`` converts fields, e.g. ``{"ts": int, "amount": float}``; a failed conversion or a
    row of the wrong width goes to dead letters.
    """
    return _Csv(path, name, types)


# -- in-memory -----------------------------------------------------------------------------------
class _IterableReader(SourceReader):
    def __init__(self, source: _Iterable) -> None:
        self.source = source
        self._it = iter(source.items)
        self._count = 0
        self._last = 0
        self.done = False

    @property
    def position(self) -> Any:
        return self._count

    def seek(self, position: Any) -> None:
        for _ in range(position - self._count):
            next(self._it, None)
        self._count = position

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        start = self._count - self._last
        return (start + index, None) if 0 <= index < self._last else None

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        out = []
        it = self._it
        for _ in range(max_records):
            try:
                out.append(next(it))
            except StopIteration:
                self.done = True
                break
        self._count += len(out)
        self._last = len(out)
        if len(out) < max_records:
            self.done = True
        return out, []

    def size_hint(self) -> int | None:
        items = self.source.items
        return len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]


class _Iterable(Source):
    def __init__(self, items: Iterable[Any], name: str) -> None:
        self.items = items
        self.name = name

    def partitions(self) -> list[SourceReader]:
        return [_IterableReader(self)]


def iterable(items: Iterable[Any], *, name: str = "iterable") -> Source:
    """Records from a Python iterable (a list in tests).

    Its position is a count of records, so resuming replays correctly only when the iterable
    yields the same records again (a list does; a generator is consumed once).
    """
    return _Iterable(items, name)


def kafka(topic: str, *, key: str | None = None, value_format: str = "json",
          name: str | None = None) -> Source:
    """Read Kafka ``topic`` under ``eddies worker``; ``key`` is the field it is partitioned
    by (a key_by on it needs no repartition). See ``eddies.operators.kafka``."""
    from eddies.operators.kafka import kafka_source

    return kafka_source(topic, key=key, value_format=value_format, name=name)
