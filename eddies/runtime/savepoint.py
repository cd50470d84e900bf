"""Savepoints: a job's keyed state, timers, watermarks and input positions in one portable,
versioned file, taken from a stopped (or running) job and restored into a new state dir.

A savepoint is one file rather than a directory: it is written in one pass, streamed (a
state of a million keys never sits in memory), renamed into place when complete, and copied
or uploaded as one object. It holds the stored bytes of every entry, so it reads and
restores without RocksDB and whatever backend wrote it::

    +-----------+---------+-------+-------------------+--------------+-------------+-----------+
    | "EDDIESSP"| header  | CRC32 | sections (chunks) | footer       | footer      | "EDDIESSP"|
    | 8 B magic | msgpack | 4 B BE| framed arrays     | framed map   | offset 8 B  | 8 B magic |
    +-----------+---------+-------+-------------------+--------------+-------------+-----------+

    frame   length (4 B, big-endian) | CRC32 of the msgpack bytes (4 B, BE) | msgpack bytes

    header  {"format": 2, "key_layout": 2, "job": NAME, "max_parallelism": N or None,
             "identity": <the job's identity (identity.py), with its sources' fingerprints>,
             "watermarks": {operator: watermark},
             "sources": {source: [[position, watermark], ...]},   one pair per partition
             "meta": {"sinks": {sink: position}, "stats": [...], ...}}  the job's
                                                           checkpoint (None: none)
    footer  {"sections": [[what, operator, state, kind, version, entries, offset], ...],
             "entries": total}
            what is "state" (state is its name) or "timers" (state and kind None, version 0);
            offset is the section's first byte in the file (its first chunk's frame)
    section chunks of up to 1,024 entries, each a frame of a flat msgpack array:
            state:  [key, value, key, value, ...]   (bin, bin)
            timers: [key, key, ...]                 (bin)

``key`` and ``value`` are the stored bytes of the state layout (``store.py``,
``values.py``, ``entries.py``; ``timers.py`` for timers): ``key group (2 B BE) | user key
element | map key or list index`` and ``expires_at (8 B LE) | msgpack payload`` (a MapState
entry with metadata: ``c1 | [metadata, value]``). So TTL stamps and metadata travel as they
were, and a savepoint restored and taken again is byte-equal. ``key_layout`` is the key
codec's version (``eddies.state.keys.KEY_LAYOUT_VERSION``); another one, or another
``format``, is refused, never misread. Whatever the version, the header is the msgpack map
right after the magic, so a reader learns the version before anything else (a newer file
is "of another version", not "damaged"). The header, every chunk and the footer carry a
CRC32 of their bytes: a damaged file is refused with the byte offset of the damage, never
restored with wrong values. Format 1 (the same without checksums) is refused.
``max_parallelism`` says the key groups are ``crc32(user key element) % N`` (None: another
layout, such as a Kafka job's partitions);
a restore with the same N keeps the stored keys as they are, any other recomputes them.

Restoring one (``run_local(..., from_savepoint=PATH)``, ``eddies run --from-savepoint``)
is ``restore.py``'s job: its docstring has the rules for a changed job. A Kafka job's
savepoint is read from its changelogs (``kafka/savepoint.py``), and a savepoint starts a
Kafka deployment by becoming its changelogs' first checkpoint (``kafka/seed.py``).

>>> import eddies as ed, tempfile, os
>>> class Count(ed.KeyedProcessFunction):
...     n = ed.ValueState("n", default=0)
...     def on_event(self, event, ctx):
...         self.n.set(self.n.get() + 1)
...         yield {"k": ctx.key, "n": self.n.get()}
>>> def job(data):
...     j = ed.Job("counts"); out = ed.sinks.collect()
...     j.source(ed.sources.iterable(data)).key_by("k").process(Count()).sink(out)
...     return j, out
>>> backend = ed.state.InMemoryStateBackend()
>>> j, out = job([{"k": "a"}, {"k": "a"}])
>>> _ = ed.run_local(j, state=backend)
>>> path = os.path.join(tempfile.mkdtemp(), "sp")
>>> [(s.operator, s.name, s.entries) for s in create_savepoint(backend, path).states]
[('Count', 'n', 1)]
>>> j, out = job([{"k": "a"}, {"k": "a"}, {"k": "a"}])
>>> ed.run_local(j, from_savepoint=path).collected(out)
[{'k': 'a', 'n': 3}]
"""

from __future__ import annotations

import os
import struct
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import msgpack

from eddies.errors import SavepointError
from eddies.runtime.identity import (
    IDENTITY_KEY,
    RESTORING_KEY,
    decode_identity,
    state_versions,
)
from eddies.runtime.keyed import META_CF
from eddies.runtime.timers import WINDOW, timers_cf
from eddies.state.backend import StateBackend
from eddies.state.entries import decode_payload, payload
from eddies.state.keys import (
    KEY_LAYOUT_VERSION,
    as_tuple,
    decode_key,
    decode_user_key,
    encode_element,
    encode_key,
    state_key,
)
from eddies.state.store import MAX_KEY_GROUPS
from eddies.state.values import BIG_INT_EXT, NEVER, NEVER_STAMP, pack, read_stamp, stamp, unpack

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "OperatorInfo",
    "Savepoint",
    "SavepointEntry",
    "SavepointWriter",
    "StateInfo",
    "create_savepoint",
    "read_savepoint",
    "write_savepoint_file",
]

MAGIC = b"EDDIESSP"
"""The first and last 8 bytes of every savepoint file."""
FORMAT_VERSION = 2
"""The savepoint layout drawn above; a file of another version is refused."""
CHUNK = 1024
"""Entries per chunk of a section."""
_trailer = struct.Struct(">Q")
_frame = struct.Struct(">II")  # length, CRC32 of the msgpack bytes that follow
_crc = struct.Struct(">I")
_KEYED_KINDS = ("process", "broadcast_process", "co_process")


@dataclass(frozen=True)
class StateInfo:
    """One saved state: its operator, name, kind, version and number of stored entries."""

    operator: str
    name: str
    kind: str
    version: int
    entries: int
    offset: int = field(default=0, repr=False, compare=False)


@dataclass(frozen=True)
class OperatorInfo:
    """One saved keyed operator: its watermark, states and number of stored timers."""

    name: str
    watermark: int | None
    states: list[StateInfo]
    timers: int


def _map_key(key: Any) -> Any:
    """A map key as given to ``m.put`` in the form :class:`SavepointEntry` holds it: a tuple,
    None for ``()`` (no suffix), so ``None`` is ``(None,)``.

    >>> _map_key(None), _map_key("x"), _map_key(("a", 1)), _map_key(())
    ((None,), ('x',), ('a', 1), None)
    """
    return as_tuple(key) or None


@dataclass(frozen=True)
class SavepointEntry:
    """One decoded entry of a saved state: the user key, the map key (MapState,
    BroadcastState) or list index as a 1-tuple (ListState) or None, the value, its expiry
    (ms, None for never) and a MapState entry's metadata."""

    key: Any
    map_key: Any
    value: Any
    expires_at: int | None = None
    metadata: Any = None


def _ext(code: int, data: bytes) -> Any:
    if code == BIG_INT_EXT:
        return int.from_bytes(data, "big", signed=True)
    return msgpack.ExtType(code, data)


def _unpacker(file: IO[bytes]) -> msgpack.Unpacker:
    return msgpack.Unpacker(file, raw=False, strict_map_key=False, ext_hook=_ext,
                            use_list=True, max_buffer_size=1 << 31)


# -- reading ---------------------------------------------------------------------------------------
class Savepoint:
    """A savepoint file opened for reading: its header (:attr:`job`, :attr:`identity`,
    :attr:`watermarks`, :attr:`sources`), the list of saved :attr:`states` and timers, and
    their entries as Python values (:meth:`entries`) or stored bytes (:meth:`raw_entries`).

    This is the reading half of the State Processor API; :class:`SavepointWriter` writes one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        where = f"savepoint {str(self.path)!r}"
        self.where = where
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(MAGIC))
                size = f.seek(0, os.SEEK_END)
                if head != MAGIC:
                    raise SavepointError(
                        f"{where} is not an eddies savepoint (it does not start with "
                        f"{MAGIC!r}); give the file `eddies savepoint create` wrote")
                # The header first, whatever the version: a file of another version says so
                # (its trailer may be laid out otherwise) rather than "truncated".
                f.seek(len(MAGIC))
                unpacker = _unpacker(f)
                try:
                    header = next(unpacker)
                except StopIteration:
                    raise self._truncated(where) from None
                except (ValueError, TypeError, msgpack.UnpackException) as exc:
                    raise self._damaged(len(MAGIC), "header", f"unreadable ({exc})") from exc
                if not isinstance(header, dict):
                    raise self._damaged(len(MAGIC), "header", "not a map")
                if header.get("format") != FORMAT_VERSION:
                    raise SavepointError(
                        f"{where} is in savepoint format version {header.get('format')!r}, "
                        "which this eddies does not read (it reads version "
                        f"{FORMAT_VERSION}): restore it with the eddies version that wrote "
                        "it, and take a new savepoint there")
                header_end = len(MAGIC) + unpacker.tell()
                f.seek(len(MAGIC))
                crc = zlib.crc32(f.read(header_end - len(MAGIC)))
                stored = f.read(_crc.size)
                if len(stored) < _crc.size:
                    raise self._truncated(where)
                if _crc.unpack(stored)[0] != crc:
                    raise self._damaged(len(MAGIC), "header", "its checksum does not match")
                if size < header_end + _crc.size + _trailer.size + len(MAGIC):
                    raise self._truncated(where)
                f.seek(size - len(MAGIC) - _trailer.size)
                tail = f.read(_trailer.size + len(MAGIC))
                if tail[_trailer.size:] != MAGIC:
                    raise self._truncated(where)
                footer_at = _trailer.unpack(tail[:_trailer.size])[0]
                end = size - len(MAGIC) - _trailer.size
                if not header_end + _crc.size <= footer_at < end:
                    raise self._truncated(where)
                f.seek(footer_at)
                footer, _ = self._frame(f, footer_at, end, "footer")
                if not isinstance(footer, dict):
                    raise self._damaged(footer_at, "footer", "not a map")
        except SavepointError:
            raise
        except OSError as exc:
            raise SavepointError(f"cannot read {where}: {exc}") from exc
        self._footer_at = footer_at
        self._data_at = header_end + _crc.size
        if header.get("key_layout") != KEY_LAYOUT_VERSION:
            raise SavepointError(
                f"{where} stores keys in key layout version {header.get('key_layout')!r}; "
                f"this eddies uses version {KEY_LAYOUT_VERSION}: restore it with the eddies "
                "version that wrote it")
        self.header: dict[str, Any] = header
        self.job: str = header["job"]
        self.max_parallelism: int | None = header["max_parallelism"]
        """N when key groups are ``crc32(user key) % N``, else None."""
        self.identity: dict[str, Any] = header["identity"]
        self.watermarks: dict[str, int] = header["watermarks"]
        self.sources: dict[str, list[list[Any]]] = header["sources"]
        self.meta: dict[str, Any] | None = header["meta"]
        self.total_entries: int = footer["entries"]
        self.states: list[StateInfo] = []
        self._timers: dict[str, tuple[int, int]] = {}
        for what, op, name, kind, version, entries, offset in footer["sections"]:
            if what == "state":
                self.states.append(StateInfo(op, name, kind, version, entries, offset))
            else:
                self._timers[op] = (entries, offset)
        # Where each section ends: at the next section that starts later, or the footer.
        starts = sorted({row[6] for row in footer["sections"]} | {footer_at})
        self._ends = dict(zip(starts, starts[1:], strict=False))

    @staticmethod
    def _truncated(where: str) -> SavepointError:
        return SavepointError(
            f"{where} is truncated or damaged (its end marker or index is missing or "
            "unreadable): it was not written to the end; take the savepoint again")

    def _damaged(self, at: int, what: str, reason: str) -> SavepointError:
        return SavepointError(
            f"{self.where} is damaged at byte {at} ({what}: {reason}): take the "
            "savepoint again, or use an intact copy of the file")

    def _frame(self, f: IO[bytes], at: int, limit: int, what: str) -> tuple[Any, int]:
        """The msgpack object of the frame at byte ``at`` of ``f`` (positioned there), which
        ends by ``limit``, checked against its CRC32; and the offset after the frame."""
        head = f.read(_frame.size)
        if len(head) < _frame.size:
            raise self._damaged(at, what, "the file ends inside it")
        length, crc = _frame.unpack(head)
        after = at + _frame.size + length
        if after > limit:
            raise self._damaged(at, what, f"its length {length} runs past its section")
        data = f.read(length)
        if len(data) < length or zlib.crc32(data) != crc:
            raise self._damaged(at, what, "its checksum does not match")
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext,
                                   use_list=True), after
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise self._damaged(at, what, f"unreadable ({exc})") from exc

    @property
    def operators(self) -> list[OperatorInfo]:
        """The saved keyed operators, in the job's graph order."""
        out = []
        for op in self.identity["operators"]:
            name = op["name"]
            states = [s for s in self.states if s.operator == name]
            out.append(OperatorInfo(name, self.watermarks.get(name), states,
                                    self._timers.get(name, (0, 0))[0]))
        return out

    def state(self, name: str, operator: str | None = None) -> StateInfo:
        """The saved state ``name`` (of ``operator``, if given)."""
        for info in self.states:
            if info.name == name and (operator is None or info.operator == operator):
                return info
        known = ", ".join(f"{s.operator}/{s.name}" for s in self.states) or "none"
        raise SavepointError(f"{self.where} has no state {name!r}"
                             + (f" in operator {operator!r}" if operator else "")
                             + f"; it holds: {known}")

    def _chunks(self, offset: int, items: int, what: str,
                per_entry: int) -> Iterator[list[Any]]:
        """The chunks of the section at ``offset``: ``items`` msgpack items in all, ``per_entry``
        per entry; each checked against its CRC32 before it is yielded."""
        if not items:
            return
        end = self._ends.get(offset, self._footer_at)
        with open(self.path, "rb") as f:
            f.seek(offset)
            at = offset
            seen = 0
            while seen < items:
                if at >= end:
                    raise self._damaged(at, what, f"{seen // per_entry} entries where its "
                                        f"index says {items // per_entry}")
                chunk, after = self._frame(f, at, end, what)
                if not isinstance(chunk, list) or not chunk or len(chunk) % per_entry:
                    raise self._damaged(at, what, "a chunk that is not a list of entries")
                seen += len(chunk)
                if seen > items:
                    raise self._damaged(at, what, "more entries than its index says")
                yield chunk
                at = after

    def verify(self) -> None:
        """Check every chunk against its CRC32, and each section's number of entries against
        the index, without decoding entries; raises :class:`~eddies.errors.SavepointError`
        (``damaged at byte N``) at the first difference. A restore runs it before writing
        anything, so a damaged savepoint leaves the new state dir empty."""
        sections = [(s.offset, s.entries * 2, self._what(s), 2) for s in self.states]
        sections += [(offset, entries, f"timers of operator {op!r}", 1)
                     for op, (entries, offset) in self._timers.items()]
        owners = sorted((offset, what) for offset, items, what, _ in sections if items)
        starts = [offset for offset, _ in owners]
        frames: dict[int, tuple[int, int]] = {}  # offset: (items, offset after)
        with open(self.path, "rb") as f:
            f.seek(self._data_at)
            at = self._data_at
            while at < self._footer_at:
                owner = bisect_right(starts, at) - 1
                what = owners[owner][1] if owner >= 0 else "a chunk before the first section"
                head = f.read(_frame.size)
                if len(head) < _frame.size:
                    raise self._damaged(at, what, "the file ends inside it")
                length, crc = _frame.unpack(head)
                after = at + _frame.size + length
                if after > self._footer_at:
                    raise self._damaged(at, what, f"its length {length} runs past its section")
                data = f.read(length)
                if zlib.crc32(data) != crc:
                    raise self._damaged(at, what, "its checksum does not match")
                frames[at] = (_array_length(data), after)
                at = after
        for offset, items, what, per_entry in sections:
            at, seen = offset, 0
            end = self._ends.get(offset, self._footer_at)
            while items and at < end:
                if at not in frames:
                    raise self._damaged(at, what, "no chunk starts where its index says")
                count, after = frames[at]
                if count <= 0 or count % per_entry:
                    raise self._damaged(at, what, "a chunk that is not a list of entries")
                seen, at = seen + count, after
            if seen != items:
                raise self._damaged(offset, what, f"{seen // per_entry} entries where its "
                                    f"index says {items // per_entry}")

    @staticmethod
    def _what(info: StateInfo) -> str:
        return f"state {info.name!r} of operator {info.operator!r}"

    def raw_entries(self, state: StateInfo | str) -> Iterator[tuple[bytes, bytes]]:
        """``(stored key, stored value)`` of each entry of ``state``, in stored-key order."""
        info = self.state(state) if isinstance(state, str) else state
        for chunk in self._chunks(info.offset, info.entries * 2, self._what(info), 2):
            it = iter(chunk)
            yield from zip(it, it, strict=True)

    def raw_chunks(self, state: StateInfo) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The stored keys and values of ``state``, a chunk (up to 1,024 entries) at a time."""
        for chunk in self._chunks(state.offset, state.entries * 2, self._what(state), 2):
            yield chunk[0::2], chunk[1::2]

    def raw_timers(self, operator: str) -> Iterator[bytes]:
        """The stored keys of ``operator``'s timers and window marks (``timers.py``)."""
        entries, offset = self._timers.get(operator, (0, 0))
        for chunk in self._chunks(offset, entries, f"timers of operator {operator!r}", 1):
            yield from chunk

    def entries(self, state: StateInfo | str) -> Iterator[SavepointEntry]:
        """The entries of ``state`` as Python values, in stored-key order (by key group,
        then key). A key is in the form handlers see (``ctx.key``): a bare value for a
        1-tuple."""
        info = self.state(state) if isinstance(state, str) else state
        for key, data in self.raw_entries(info):
            user_key, end = decode_user_key(key, 2)
            rest = key[end:]
            value, metadata = decode_payload(data)
            expires_at = read_stamp(data)
            yield SavepointEntry(
                user_key, decode_key(rest) if rest else None, value,
                None if expires_at == NEVER else expires_at, metadata)

    def timers(self, operator: str) -> Iterator[tuple[str, int, Any]]:
        """``(domain, time, key)`` of ``operator``'s timers: domain ``"event"`` or
        ``"processing"`` (window marks left out)."""
        for key in self.raw_timers(operator):
            domain = key[2:3]
            if domain == WINDOW:
                continue
            time = _be.unpack_from(key, 3)[0] - 2**63
            yield ("event" if domain == b"e" else "processing", time,
                   decode_user_key(key, 11)[0])

    def summary(self) -> dict[str, Any]:
        """What ``eddies savepoint inspect`` prints: the job, its operators with their
        watermark, states (kind, version, entries) and timers, and its sources' positions."""
        return {
            "format": FORMAT_VERSION, "key_layout": self.header["key_layout"],
            "job": self.job, "entries": self.total_entries,
            "operators": [
                {"name": op.name, "watermark": op.watermark, "timers": op.timers,
                 "states": [{"name": s.name, "kind": s.kind, "version": s.version,
                             "entries": s.entries} for s in op.states]}
                for op in self.operators],
            "sources": [{"name": name, "partitions": [{"position": p, "watermark": w}
                                                      for p, w in parts]}
                        for name, parts in self.sources.items()],
        }


_be = struct.Struct(">Q")


def _array_length(data: bytes) -> int:
    """The number of items of the msgpack array ``data`` (-1: not an array)."""
    first = data[:1]
    if first and 0x90 <= first[0] <= 0x9F:
        return first[0] & 0x0F
    if first == b"\xdc" and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if first == b"\xdd" and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    return -1


def read_savepoint(path: str | os.PathLike[str]) -> Savepoint:
    """Open the savepoint at ``path`` (raises :class:`~eddies.errors.SavepointError` for a
    file that is not one, is truncated, or is of another format version)."""
    return Savepoint(path)


# -- writing ---------------------------------------------------------------------------------------
class _FileWriter:
    """Streams a savepoint to ``path.tmp`` and renames it into place on :meth:`finish`."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        if path.exists():
            raise SavepointError(f"{str(path)!r} exists: a savepoint is never overwritten; "
                                 "give a new path (or delete the old savepoint first)")
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        if not path.parent.is_dir():
            raise SavepointError(f"cannot write savepoint {str(path)!r}: directory "
                                 f"{str(path.parent)!r} does not exist; create it first, or "
                                 "give a path in an existing directory")
        try:
            self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()/abort()
        except OSError as exc:
            raise SavepointError(f"cannot write savepoint {str(path)!r}: {exc}; give a path "
                                 "in a directory you can write to") from exc
        self.file.write(MAGIC)
        data = pack(header)
        self.file.write(data)
        self.file.write(_crc.pack(zlib.crc32(data)))
        self.sections: list[list[Any]] = []
        self.total = 0

    def section(self, what: str, operator: str, name: str | None, kind: str | None,
                version: int, items: Iterable[Any], per_entry: int) -> int:
        """Write ``items`` (flat: ``per_entry`` items per entry) as chunks; returns entries."""
        offset = self.file.tell()
        write = self.file.write
        limit = CHUNK * per_entry
        n = 0
        it = iter(items)
        head, crc32 = _frame.pack, zlib.crc32
        while chunk := list(islice(it, limit)):  # C-level loops: no Python step per item
            data = pack(chunk)
            write(head(len(data), crc32(data)))
            write(data)
            n += len(chunk)
        entries = n // per_entry
        self.sections.append([what, operator, name, kind, version, entries, offset])
        self.total += entries
        return entries

    def finish(self) -> None:
        footer_at = self.file.tell()
        data = pack({"sections": self.sections, "entries": self.total})
        self.file.write(_frame.pack(len(data), zlib.crc32(data)))
        self.file.write(data)
        self.file.write(_trailer.pack(footer_at) + MAGIC)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def write_savepoint_file(path: Path, header: dict[str, Any],
                         sections: Iterable[tuple[str, str, str | None, str | None, int,
                                                  Iterable[Any]]]) -> Savepoint:
    """Write a savepoint of ``header`` and ``sections`` to ``path``; returns it opened.

    A section is ``("state", operator, state, kind, version, (key, value) pairs)`` or
    ``("timers", operator, None, None, 0, keys)``, stored bytes in stored-key order."""
    writer = _FileWriter(path, header)
    try:
        for what, operator, name, kind, version, items in sections:
            if what == "state":
                writer.section(what, operator, name, kind, version, _flat(items), 2)
            else:
                writer.section(what, operator, None, None, 0, iter(items), 1)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return Savepoint(path)


def _flat(pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    return chain.from_iterable(pairs)


def _open_source(state: str | os.PathLike[str] | StateBackend) -> tuple[StateBackend, bool]:
    if isinstance(state, StateBackend):
        return state, False
    from eddies.state.rocksdb import RocksDbStateBackend

    text = os.fspath(state)
    path = text[len("rocksdb:"):] if text.startswith("rocksdb:") else text
    if not Path(path).is_dir():
        raise SavepointError(f"state dir {path!r} does not exist; give the dir a job ran "
                             "on (--state rocksdb:DIR)")
    return RocksDbStateBackend(path, read_only=True), True


def create_savepoint(state: str | os.PathLike[str] | StateBackend,
                     out: str | os.PathLike[str]) -> Savepoint:
    """Write a savepoint of the last checkpoint in ``state`` (a RocksDB dir, ``"rocksdb:DIR"``,
    or a backend a run has finished with) to ``out``; returns it opened.

    A dir is opened as a read-only view, as ``eddies state ls`` does: it may be in use by a
    running job, whose last checkpoint is what the savepoint holds.
    """
    backend, opened = _open_source(state)
    where = (f"state dir {str(getattr(backend, 'path', ''))!r}"
             if getattr(backend, "path", None) is not None else "the state backend")
    try:
        meta = dict(backend.iterate(META_CF))
        restoring = meta.get(RESTORING_KEY)
        if restoring is not None:
            raise SavepointError(
                f"{where} holds a restore of savepoint {unpack(restoring)!r} that was "
                "interrupted before it finished, not a job's checkpoint: restore it again "
                "(--from-savepoint) and take the savepoint after the job has run")
        data = meta.get(IDENTITY_KEY)
        if data is None:
            raise SavepointError(
                f"{where} holds no checkpoint with a job identity (no job has checkpointed "
                "there, or it was written before identities existed): run the job on it "
                "once (eddies run ... --state rocksdb:DIR) and take the savepoint then")
        identity = decode_identity(data, where)
        job_meta = meta.get(encode_key(("job", identity["job"])))
        sources = {}
        for source in identity["sources"]:
            parts = []
            for i in range(len(source["partitions"])):
                pos = meta.get(encode_key(("source", source["name"], i)))
                wm = meta.get(encode_key(("source-wm", source["name"], i)))
                parts.append([None if pos is None else unpack(pos),
                              None if wm is None else unpack(wm)])
            sources[source["name"]] = parts
        watermarks = {}
        for op in identity["operators"]:
            wm = meta.get(encode_key(("watermark", op["name"])))
            if wm is not None:
                watermarks[op["name"]] = unpack(wm)
        saved_meta = None if job_meta is None else unpack(job_meta)
        header = {"format": FORMAT_VERSION, "key_layout": KEY_LAYOUT_VERSION,
                  "job": identity["job"],
                  "max_parallelism": (saved_meta or {}).get("max_parallelism"),
                  "identity": identity, "watermarks": watermarks, "sources": sources,
                  "meta": saved_meta}
        cfs = set(backend.column_families())
        path = Path(out)
        writer = _FileWriter(path, header)
        try:
            for op in identity["operators"]:
                versions = state_versions(op)
                for name, kind in op["states"]:
                    items = _flat(backend.iterate(name)) if name in cfs else iter(())
                    writer.section("state", op["name"], name, kind, versions[name], items, 2)
                tcf = timers_cf(op["name"])
                keys = (k for k, _ in backend.iterate(tcf)) if tcf in cfs else iter(())
                writer.section("timers", op["name"], None, None, 0, keys, 1)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    finally:
        if opened:
            backend.close()
    return Savepoint(path)


class SavepointWriter:
    """Write a savepoint from Python (the writing half of the State Processor API): a new
    one from plain data, to bootstrap state offline (``job=``), or a transformed copy of
    one (``base=``), which keeps its positions, watermarks, timers and every state not
    replaced with :meth:`state` or removed with :meth:`drop`.

    Keys are stored in key groups of ``max_parallelism`` (128 for a new savepoint). A copy
    keeps the stored keys of its base, so it keeps the base's ``max_parallelism`` (None for
    a Kafka job's savepoint, whose groups are its partitions; keys added to it go to group
    0); another one is refused. Restoring recomputes the groups for the target anyway.

    :meth:`state` takes entries as :class:`SavepointEntry` (what :meth:`Savepoint.entries`
    yields) or as tuples: ``(key, value)`` for ValueState and ReducingState, ``(key,
    map_key, value)`` for MapState, ``(key, [values])`` for ListState, ``(map_key, value)``
    for BroadcastState. A job restored from a new savepoint reads its sources from the
    beginning (it has no positions) and its states from here.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "balances.sp")
    >>> with SavepointWriter(path, job="bank") as w:
    ...     w.state("Balances", "balance", "value", [("alice", 100), ("bob", 5)])
    >>> sp = read_savepoint(path)
    >>> [(e.key, e.value) for e in sp.entries("balance")]
    [('bob', 5), ('alice', 100)]
    >>> with SavepointWriter(path + ".cents", base=sp) as w:  # a transformed copy
    ...     w.state("Balances", "balance", "value",
    ...             [(e.key, e.value * 100) for e in sp.entries("balance")], version=2)
    >>> [(e.key, e.value) for e in read_savepoint(path + ".cents").entries("balance")]
    [('bob', 500), ('alice', 10000)]
    """

    def __init__(self, path: str | os.PathLike[str], *, job: str | None = None,
                 base: Savepoint | None = None, max_parallelism: int | None = None) -> None:
        if job is None and base is None:
            raise SavepointError("SavepointWriter needs job= (the name of the job it is for) "
                                 "or base= (a Savepoint to transform)")
        self.path = Path(path)
        self.base = base
        self.job: str = job if job is not None else base.job  # type: ignore[union-attr]
        if max_parallelism is not None and (type(max_parallelism) is not int
                                            or not 1 <= max_parallelism <= MAX_KEY_GROUPS):
            raise SavepointError(f"SavepointWriter: max_parallelism must be an int in "
                                 f"1..{MAX_KEY_GROUPS}, as a job's, got {max_parallelism!r}")
        if base is None:
            self.max_parallelism: int | None = 128 if max_parallelism is None else max_parallelism
        elif max_parallelism is None or max_parallelism == base.max_parallelism:
            # The copy keeps the base's stored keys, so it keeps their key groups too.
            self.max_parallelism = base.max_parallelism
        else:
            grouped = ("by the partitions of the Kafka job it was taken from"
                       if base.max_parallelism is None
                       else f"by max_parallelism {base.max_parallelism}")
            raise SavepointError(
                f"{base.where} groups its keys {grouped}, and a transformed copy keeps its "
                f"stored keys, so it cannot be written with max_parallelism "
                f"{max_parallelism}: leave max_parallelism out (a restore recomputes the key "
                "groups for whatever max_parallelism or partitions it restores into)")
        self._operators: dict[str, dict[str, Any]] = {}
        self._sections: dict[tuple[str, str], tuple[str, int, Any]] = {}
        self.watermarks: dict[str, int] = {}
        """Operator watermarks to save (a new savepoint has none: event time starts afresh)."""
        if base is not None:
            for op in base.identity["operators"]:
                self._operators[op["name"]] = {"name": op["name"], "states": [
                    list(s) for s in op["states"]], "versions": dict(op.get("versions", {}))}
            for info in base.states:
                self._sections[(info.operator, info.name)] = (info.kind, info.version, info)
            self.watermarks.update(base.watermarks)

    def _prefix(self, key: Any, kind: str) -> bytes:
        if kind == "broadcast":
            return b"\x00\x00" + encode_element(())
        element = encode_element(state_key(key))
        if self.max_parallelism is None:  # a Kafka base: every restore recomputes the groups
            return b"\x00\x00" + element
        return (zlib.crc32(element) % self.max_parallelism).to_bytes(2, "big") + element

    def state(self, operator: str, name: str, kind: str, rows: Iterable[Any], *,
              version: int = 1) -> None:
        """Add (or replace) state ``name`` (``kind``: value, reducing, list, map, broadcast)
        of ``operator`` with ``rows`` (see the class docstring), saved as ``version``."""
        if kind not in ("value", "reducing", "list", "map", "broadcast"):
            raise SavepointError(f"state {name!r}: unknown kind {kind!r}; use value, "
                                 "reducing, list, map or broadcast")
        pairs: list[tuple[bytes, bytes]] = []
        for row in rows:
            if isinstance(row, SavepointEntry):
                entry = row
            elif kind in ("value", "reducing"):
                entry = SavepointEntry(row[0], None, row[1])
            elif kind == "broadcast":
                entry = SavepointEntry((), _map_key(row[0]), row[1])
            elif kind == "list":
                prefix = self._prefix(row[0], kind)
                pairs.extend((prefix + encode_key(i), NEVER_STAMP + pack(v))
                             for i, v in enumerate(row[1]))
                continue
            else:
                entry = SavepointEntry(row[0], _map_key(row[1]), row[2])
            key = self._prefix(entry.key, kind)
            if entry.map_key is not None:
                key += encode_key(entry.map_key)
            expires = NEVER if entry.expires_at is None else entry.expires_at
            try:
                pairs.append((key, stamp(expires) + payload(entry.value, entry.metadata)))
            except (TypeError, ValueError, OverflowError) as exc:
                raise SavepointError(f"state {name!r} of operator {operator!r}, key "
                                     f"{entry.key!r}: cannot serialize {entry.value!r} "
                                     f"({exc}); give None, bool, int, float, str, bytes, "
                                     "or lists/dicts of those") from exc
        pairs.sort()
        self.drop(operator, name)
        op = self._operators.setdefault(operator, {"name": operator, "states": [],
                                                   "versions": {}})
        op["states"] = sorted([*op["states"], [name, kind]])
        if version != 1:
            op["versions"][name] = version
        self._sections[(operator, name)] = (kind, version, pairs)

    def drop(self, operator: str, name: str) -> None:
        """Leave state ``name`` of ``operator`` out (nothing if there is none)."""
        self._sections.pop((operator, name), None)
        op = self._operators.get(operator)
        if op is not None:
            op["states"] = [s for s in op["states"] if s[0] != name]
            op["versions"].pop(name, None)

    def write(self) -> Savepoint:
        """Write the file (also done on leaving a ``with`` block); returns it opened."""
        base = self.base
        operators = []
        for op in self._operators.values():
            entry = {"name": op["name"], "states": op["states"]}
            if op["versions"]:
                entry["versions"] = op["versions"]
            operators.append(entry)
        identity = {"version": 1, "job": self.job, "operators": operators,
                    "sources": base.identity["sources"] if base is not None else []}
        header = {"format": FORMAT_VERSION, "key_layout": KEY_LAYOUT_VERSION, "job": self.job,
                  "max_parallelism": self.max_parallelism,
                  "identity": identity, "watermarks": dict(self.watermarks),
                  "sources": base.sources if base is not None else {},
                  "meta": base.meta if base is not None else None}
        writer = _FileWriter(self.path, header)
        try:
            for op in operators:
                for name, _ in op["states"]:
                    kind, version, rows = self._sections[(op["name"], name)]
                    items = (_flat(base.raw_entries(rows))  # type: ignore[union-attr]
                             if isinstance(rows, StateInfo) else _flat(rows))
                    writer.section("state", op["name"], name, kind, version, items, 2)
                timers = base.raw_timers(op["name"]) if base is not None else iter(())
                writer.section("timers", op["name"], None, None, 0, timers, 1)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        return Savepoint(self.path)

    def __enter__(self) -> SavepointWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.write()
