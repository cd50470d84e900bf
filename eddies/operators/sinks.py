"""Sinks: where a job's results go, written in batches and positioned by checkpoints.

A file sink records its byte length in every checkpoint. A fresh run replaces the file; a
resumed run truncates it back to the checkpointed length, so output written after the last
checkpoint (which the replay produces again) is never doubled and no torn line is left.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import orjson

from eddies.errors import ConfigError

__all__ = ["CollectSink", "Sink", "collect", "jsonl", "kafka", "stdout"]

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def to_json_line(value: Any) -> bytes:
    """One JSON line for ``value``; values JSON cannot hold are written with ``str()``.

    Ints beyond 64 bits, which orjson refuses, are written exactly, and everything else as
    orjson writes it (NaN as null, datetimes in ISO form):

    >>> to_json_line({"id": 2**70, "n": 1.5, "x": float("nan")})
    b'{"id":1180591620717411303424,"n":1.5,"x":null}\\n'
    """
    return dumps_exact(value, _OPTS | orjson.OPT_APPEND_NEWLINE)


def dumps_exact(value: Any, option: int = 0) -> bytes:
    """``orjson.dumps(value, default=str, option=option)``, except that ints beyond 64 bits,
    which orjson refuses, are written exactly: they go in as pre-serialized fragments, so the
    rest of the value is written by orjson's rules all the same.

    >>> dumps_exact({"id": -2**70, "tags": [2**64]})
    b'{"id":-1180591620717411303424,"tags":[18446744073709551616]}'
    """
    try:
        return orjson.dumps(value, default=str, option=option)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
    return orjson.dumps(_big_ints_as_fragments(value), default=str, option=option)


def _big_ints_as_fragments(value: Any) -> Any:
    """``value`` with every int outside orjson's range, in dicts, lists and tuples, replaced by
    its digits as an ``orjson.Fragment`` (an int dict key by its str, as JSON keys are)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(1 << 63) <= value < (1 << 64) else orjson.Fragment(str(value))
    if isinstance(value, dict):  # subclasses too (Counter, OrderedDict), as orjson writes them
        return {(str(k) if isinstance(k, int) and not isinstance(k, bool) else k):
                _big_ints_as_fragments(v) for k, v in value.items()}
    if isinstance(value, list) or type(value) is tuple:  # (orjson writes a namedtuple by str)
        return [_big_ints_as_fragments(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _big_ints_as_fragments(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    return value


class Sink(ABC):
    """A named output. ``position()`` is stored in checkpoints; ``open(position)`` resumes."""

    name: str = "sink"

    @abstractmethod
    def open(self, position: Any | None) -> None:
        """Start fresh (``position`` None) or resume from a checkpointed position."""

    @abstractmethod
    def write(self, values: list[Any]) -> None:
        """Write a batch of values. One that raises TypeError or ValueError (a value it
        cannot write) must have written none of them: the runner then writes them one at a
        time, and the values refused go to dead letters."""

    def position(self) -> Any:
        """Flush buffers and return where the output ends now (None if not resumable)."""
        return None

    def close(self) -> None:
        """Flush and release."""
        return None


class _JsonlSink(Sink):
    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._file: Any = None

    def open(self, position: Any | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if position is None or not self.path.exists():
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            return
        self._file = open(self.path, "r+b")  # noqa: SIM115
        size = self._file.seek(0, os.SEEK_END)
        # Checkpointed lengths are line boundaries; a file shorter than that (lost page cache)
        # is cut back to its last complete line.
        keep = int(position) if size >= int(position) else self._last_complete_line(size)
        self._file.truncate(keep)
        self._file.seek(keep)

    def _last_complete_line(self, limit: int) -> int:
        """The end of the last newline-terminated line at or before ``limit``."""
        if limit == 0:
            return 0
        f = self._file
        pos = limit
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0

    def write(self, values: list[Any]) -> None:
        if values:
            self._file.write(b"".join(map(to_json_line, values)))

    def position(self) -> Any:
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"jsonl({str(self.path)!r})"


class _StdoutSink(Sink):
    name = "stdout"

    def open(self, position: Any | None) -> None:
        pass

    def write(self, values: list[Any]) -> None:
        if values:
            out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
            data = b"".join(map(to_json_line, values))
            if out is not None:
                sys.stdout.flush()
                out.write(data)
                out.flush()
            else:  # pragma: no cover - replaced stdout (e.g. doctest)
                sys.stdout.write(data.decode())


class CollectSink(Sink):
    """Keeps results in memory; read them from ``run_local(...).collected(sink)``."""

    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.items: list[Any] = []

    def open(self, position: Any | None) -> None:
        self.items = []

    def write(self, values: list[Any]) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"collect({self.name!r})"


def jsonl(path: str | os.PathLike[str], *, name: str | None = None) -> Sink:
    """Write one JSON line per result (objects JSON has no type for are written as
    ``str()``; a value it cannot hold at all, such as a tuple dict key or a lone surrogate,
    goes to dead letters with the reason)."""
    if not str(path):
        raise ConfigError("sinks.jsonl needs a file path")
    return _JsonlSink(path, name)


def stdout() -> Sink:
    """Print one JSON line per result."""
    return _StdoutSink()


def collect(name: str = "collect") -> CollectSink:
    """Collect results in memory (tests, notebooks).

    >>> import eddies as ed
    >>> job = ed.Job("demo"); out = ed.sinks.collect()
    >>> job.source(ed.sources.iterable([1, 2, 3])).map(lambda x: x * 10).sink(out)
    >>> ed.run_local(job).collected(out)
    [10, 20, 30]
    """
    return CollectSink(name)

def kafka(topic: str, *, key: Any = None, value_format: str = "json",
          name: str | None = None, exactly_once: bool = False) -> Sink:
    """Write to Kafka ``topic`` under ``eddies worker``, keyed by field (or function) ``key``;
    at-least-once, or with ``exactly_once=True`` in Kafka transactions committed with each
    checkpoint (for ``read_committed`` consumers). See ``eddies.operators.kafka``."""
    from eddies.operators.kafka import kafka_sink

    return kafka_sink(topic, key=key, value_format=value_format, name=name,
                      exactly_once=exactly_once)
