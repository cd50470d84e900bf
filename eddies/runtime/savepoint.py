"""Savepoints: a job's keyed state, timers, watermarks and input positions in one portable,
versioned file, taken from a stopped (or running) state dir and restored into a new one.

A savepoint is one file rather than a directory: it is written in one pass, streamed (a
state of a million keys never sits in memory), renamed into place when complete, and copied
or uploaded as one object. It holds the stored bytes of every entry, so it reads and
restores without RocksDB and whatever backend wrote it::

    +-------------+----------+-------------------------+--------+------------------+-------------+
    | "EDDIESSP"  | header   | sections (chunks)       | footer | footer offset    | "EDDIESSP"  |
    | 8 B magic   | msgpack  | msgpack arrays          | msgpack| 8 B, big-endian  | 8 B magic   |
    +-------------+----------+-------------------------+--------+------------------+-------------+

    header  {"format": 1, "key_layout": 2, "job": NAME,
             "identity": <the job's identity (identity.py), with its sources' fingerprints>,
             "watermarks": {operator: watermark},
             "sources": {source: [[position, watermark], ...]},   one pair per partition
             "meta": {"sinks": {sink: position}, "stats": [...]}}  the job's checkpoint
    footer  {"sections": [[what, operator, state, kind, version, entries, offset], ...],
             "entries": total}
            what is "state" (state is its name) or "timers" (state and kind None, version 0);
            offset is the section's first byte in the file
    section chunks of up to 1,024 entries, each a flat msgpack array:
            state:  [key, value, key, value, ...]   (bin, bin)
            timers: [key, key, ...]                 (bin)

``key`` and ``value`` are the stored bytes of the state layout (``store.py``,
``values.py``, ``entries.py``; ``timers.py`` for timers): ``key group (2 B BE) | user key
element | map key or list index`` and ``expires_at (8 B LE) | msgpack payload`` (a MapState
entry with metadata: ``c1 | [metadata, value]``). So TTL stamps and metadata travel as they
were, and a savepoint restored and taken again is byte-equal. ``key_layout`` is the key
codec's version (``eddies.state.keys.KEY_LAYOUT_VERSION``); another one, or another
``format``, is refused, never misread.

Restoring (``run_local(..., from_savepoint=PATH)``, ``eddies run --from-savepoint``) writes
into a new, empty state dir (or memory), before the first event and before any sink opens:

- Each saved state goes to the state of the same name in the operator of the same name, or to
  the state that declares ``renamed_from=`` that name. A saved state with no such state in
  the job is an error unless ``allow_non_restored_state`` (``--allow-non-restored-state``),
  which drops it; states the job has and the savepoint lacks start empty.
- Operators are addressed by name: restoring into an operator whose name eddies generated
  (``tumbling-window-3``, ``interval-join-2``) is refused with a request for ``name=``, since
  such names shift when the graph changes. ``process(fn)`` without a name is named after
  fn's class, which stays put.
- A state whose kind changed is refused. A state whose declared ``version`` is above the
  saved one is migrated eagerly, at restore, by its ``migrate(old_value, old_version)``: once
  per value for ValueState and ReducingState, per entry for MapState and BroadcastState
  (metadata and expiry kept), per element for ListState. A lower version, or a missing
  ``migrate``, is refused.
- Key groups are recomputed for the target (``crc32(user key) % max_parallelism``), so a
  savepoint restores into another ``max_parallelism`` or from a Kafka job's partitions;
  timers follow their keys and window marks their keys' groups.
- Sources continue from the saved positions under the rules of ``identity.py``: a file
  replaced or shorter than its position is refused; a source the savepoint lacks starts from
  the beginning; a saved source the job lacks needs ``allow_non_restored_state``. Sinks of
  the same name resume at their saved length (as a restart would); others start fresh.

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

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack

from eddies.errors import SavepointError
from eddies.operators.sources import SourceReader
from eddies.runtime.graph import Job
from eddies.runtime.identity import (
    IDENTITY_KEY,
    decode_identity,
    encode_identity,
    generated_names,
    job_identity,
    state_versions,
)
from eddies.runtime.keyed import META_CF, KeyedOperator
from eddies.runtime.timers import WINDOW, timers_cf
from eddies.state.backend import PUT, Batch, StateBackend
from eddies.state.descriptors import StateDescriptor, declared_states
from eddies.state.entries import decode_payload, payload
from eddies.state.keys import KEY_LAYOUT_VERSION, decode_key, decode_user_key, encode_key
from eddies.state.values import BIG_INT_EXT, NEVER, pack, read_stamp, stamp, unpack

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
    "restore_savepoint",
]

MAGIC = b"EDDIESSP"
"""The first and last 8 bytes of every savepoint file."""
FORMAT_VERSION = 1
"""The savepoint layout drawn above; a file of another version is refused."""
CHUNK = 1024
"""Entries per chunk of a section."""
_RESTORE_BATCH = 50_000
"""Entries per write while restoring (each a backend batch)."""
_trailer = struct.Struct(">Q")
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
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(MAGIC))
                size = f.seek(0, os.SEEK_END)
                if head != MAGIC:
                    raise SavepointError(
                        f"{where} is not an eddies savepoint (it does not start with "
                        f"{MAGIC!r}); give the file `eddies savepoint create` wrote")
                if size < 2 * len(MAGIC) + _trailer.size:
                    raise self._truncated(where)
                f.seek(size - len(MAGIC) - _trailer.size)
                tail = f.read(_trailer.size + len(MAGIC))
                if tail[_trailer.size:] != MAGIC:
                    raise self._truncated(where)
                footer_at = _trailer.unpack(tail[:_trailer.size])[0]
                f.seek(len(MAGIC))
                header = next(_unpacker(f))
                if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
                    version = header.get("format") if isinstance(header, dict) else None
                    raise SavepointError(
                        f"{where} is in savepoint format version {version!r}, which this "
                        f"eddies does not read (it reads version {FORMAT_VERSION}): restore it "
                        "with the eddies version that wrote it, and take a new savepoint there")
                f.seek(footer_at)
                footer = next(_unpacker(f))
        except SavepointError:
            raise
        except OSError as exc:
            raise SavepointError(f"cannot read {where}: {exc}") from exc
        except (ValueError, StopIteration, msgpack.UnpackException) as exc:
            raise self._truncated(where) from exc
        if header.get("key_layout") != KEY_LAYOUT_VERSION:
            raise SavepointError(
                f"{where} stores keys in key layout version {header.get('key_layout')!r}; "
                f"this eddies uses version {KEY_LAYOUT_VERSION}: restore it with the eddies "
                "version that wrote it")
        self.where = where
        self.header: dict[str, Any] = header
        self.job: str = header["job"]
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

    @staticmethod
    def _truncated(where: str) -> SavepointError:
        return SavepointError(
            f"{where} is truncated or damaged (its end marker or index is missing or "
            "unreadable): it was not written to the end; take the savepoint again")

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

    def _chunks(self, offset: int, entries: int) -> Iterator[list[Any]]:
        if not entries:
            return
        with open(self.path, "rb") as f:
            f.seek(offset)
            seen = 0
            for chunk in _unpacker(f):
                yield chunk
                seen += len(chunk)
                if seen >= entries:
                    return
        raise self._truncated(self.where)

    def raw_entries(self, state: StateInfo | str) -> Iterator[tuple[bytes, bytes]]:
        """``(stored key, stored value)`` of each entry of ``state``, in stored-key order."""
        info = self.state(state) if isinstance(state, str) else state
        for chunk in self._chunks(info.offset, info.entries * 2):
            it = iter(chunk)
            yield from zip(it, it, strict=True)

    def raw_timers(self, operator: str) -> Iterator[bytes]:
        """The stored keys of ``operator``'s timers and window marks (``timers.py``)."""
        entries, offset = self._timers.get(operator, (0, 0))
        for chunk in self._chunks(offset, entries):
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


def read_savepoint(path: str | os.PathLike[str]) -> Savepoint:
    """Open the savepoint at ``path`` (raises :class:`~eddies.errors.SavepointError` for a
    file that is not one, is truncated, or is of another format version)."""
    return Savepoint(path)


# -- writing ---------------------------------------------------------------------------------------
class _FileWriter:
    """Streams a savepoint to ``path.tmp`` and renames it into place on :meth:`finish`."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self.file.write(MAGIC)
        self.file.write(pack(header))
        self.sections: list[list[Any]] = []
        self.total = 0

    def section(self, what: str, operator: str, name: str | None, kind: str | None,
                version: int, items: Iterable[Any], per_entry: int) -> int:
        """Write ``items`` (flat: ``per_entry`` items per entry) as chunks; returns entries."""
        offset = self.file.tell()
        write = self.file.write
        chunk: list[Any] = []
        limit = CHUNK * per_entry
        n = 0
        for item in items:
            chunk.append(item)
            if len(chunk) >= limit:
                write(pack(chunk))
                n += len(chunk)
                chunk = []
        if chunk:
            write(pack(chunk))
            n += len(chunk)
        entries = n // per_entry
        self.sections.append([what, operator, name, kind, version, entries, offset])
        self.total += entries
        return entries

    def finish(self) -> None:
        footer_at = self.file.tell()
        self.file.write(pack({"sections": self.sections, "entries": self.total}))
        self.file.write(_trailer.pack(footer_at) + MAGIC)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _flat(pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    for key, value in pairs:
        yield key
        yield value


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
        header = {"format": FORMAT_VERSION, "key_layout": KEY_LAYOUT_VERSION,
                  "job": identity["job"], "identity": identity, "watermarks": watermarks,
                  "sources": sources,
                  "meta": None if job_meta is None else unpack(job_meta)}
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
    """Write a savepoint from plain data (the writing half of the State Processor API): to
    bootstrap state offline, or to write back a transformed :class:`Savepoint`.

    Declare each operator's states with :meth:`state`, giving its entries as
    :class:`SavepointEntry` or tuples: ``(key, value)`` for ValueState and ReducingState,
    ``(key, map_key, value)`` for MapState, ``(key, [values])`` for ListState,
    ``(map_key, value)`` for BroadcastState. A job restored from it reads its sources from
    the beginning (the savepoint has no positions), its states from here.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "balances.sp")
    >>> with SavepointWriter(path, job="bank") as w:
    ...     w.state("Balances", "balance", "value", [("alice", 100), ("bob", 5)])
    >>> [(e.key, e.value) for e in read_savepoint(path).entries("balance")]
    [('bob', 5), ('alice', 100)]
    """

    def __init__(self, path: str | os.PathLike[str], *, job: str,
                 max_parallelism: int = 128) -> None:
        self.path = Path(path)
        self.job = job
        self.max_parallelism = max_parallelism
        self._operators: dict[str, dict[str, Any]] = {}
        self._sections: list[tuple[str, str, str, int, list[tuple[bytes, bytes]]]] = []
        self._timers: dict[str, list[bytes]] = {}
        self.watermarks: dict[str, int] = {}
        """Operator watermarks to save (none by default: event time starts afresh)."""

    def _prefix(self, key: Any, kind: str) -> bytes:
        from eddies.state.keys import encode_element, state_key

        if kind == "broadcast":
            return b"\x00\x00" + encode_element(())
        element = encode_element(state_key(key))
        return (zlib.crc32(element) % self.max_parallelism).to_bytes(2, "big") + element

    def state(self, operator: str, name: str, kind: str, rows: Iterable[Any], *,
              version: int = 1) -> None:
        """Add state ``name`` (``kind``: value, reducing, list, map, broadcast) of
        ``operator`` with ``rows`` (see the class docstring)."""
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
                entry = SavepointEntry((), row[0], row[1])
            elif kind == "list":
                for i, v in enumerate(row[1]):
                    pairs.append((self._prefix(row[0], kind) + encode_key(i), stamp(NEVER)
                                  + payload(v, None)))
                continue
            else:
                entry = SavepointEntry(row[0], row[1], row[2])
            key = self._prefix(entry.key, kind)
            if entry.map_key is not None:
                key += encode_key(entry.map_key)
            expires = NEVER if entry.expires_at is None else entry.expires_at
            try:
                pairs.append((key, stamp(expires) + payload(entry.value, entry.metadata)))
            except (TypeError, ValueError, OverflowError) as exc:
                raise SavepointError(f"state {name!r} of operator {operator!r}, key "
                                     f"{entry.key!r}: cannot serialize {entry.value!r} "
                                     f"({exc})") from exc
        pairs.sort()
        op = self._operators.setdefault(operator, {"name": operator, "states": []})
        op["states"].append([name, kind])
        op["states"].sort()
        if version != 1:
            op.setdefault("versions", {})[name] = version
        self._sections.append((operator, name, kind, version, pairs))

    def write(self) -> Savepoint:
        """Write the file (also done on leaving a ``with`` block); returns it opened."""
        identity = {"version": 1, "job": self.job, "operators": list(self._operators.values()),
                    "sources": []}
        header = {"format": FORMAT_VERSION, "key_layout": KEY_LAYOUT_VERSION, "job": self.job,
                  "identity": identity, "watermarks": dict(self.watermarks), "sources": {},
                  "meta": None}
        writer = _FileWriter(self.path, header)
        try:
            for op in self._operators:
                for operator, name, kind, version, pairs in self._sections:
                    if operator == op:
                        writer.section("state", op, name, kind, version, _flat(pairs), 2)
                writer.section("timers", op, None, None, 0, iter(self._timers.get(op, ())), 1)
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


# -- restoring -------------------------------------------------------------------------------------
@dataclass
class _Target:
    saved: StateInfo
    descriptor: StateDescriptor
    operator: KeyedOperator


def _plan(sp: Savepoint, job: Job, operators: dict[str, KeyedOperator],
          readers: dict[str, list[SourceReader]], allow_non_restored: bool,
          ) -> tuple[list[_Target], list[str]]:
    """Match the savepoint's states with the job's; raise SavepointError listing every
    mismatch. Returns the targets and the operators whose timers and watermark restore."""
    problems: list[str] = []
    dropped: list[str] = []
    generated = generated_names(job)
    targets: list[_Target] = []
    fix_drop = ("restore with --allow-non-restored-state (allow_non_restored_state=True) to "
                "drop it, or declare it in the job")
    by_op: dict[str, tuple[dict[str, StateDescriptor], dict[str, StateDescriptor]]] = {}
    for name, op in operators.items():
        states = declared_states(op.function).values()
        by_op[name] = ({d.name: d for d in states},
                       {d.renamed_from: d for d in states if d.renamed_from is not None})
    claimed: dict[tuple[str, str], str] = {}
    for saved in sp.states:
        where = f"{saved.kind} state {saved.name!r} of operator {saved.operator!r}"
        found = by_op.get(saved.operator)
        if found is None:
            if allow_non_restored:
                dropped.append(where)
                continue
            problems.append(f"{where}: the job has no operator {saved.operator!r} "
                            f"(its keyed operators: {', '.join(map(repr, by_op)) or 'none'}); "
                            f"give the operator that takes this state name={saved.operator!r}, "
                            f"or {fix_drop}")
            continue
        by_name, by_old = found
        saved_here = {s.name for s in sp.states if s.operator == saved.operator}
        desc = by_old.get(saved.name)
        if desc is None:
            desc = by_name.get(saved.name)
            if desc is not None and desc.renamed_from in saved_here:
                desc = None  # it takes the state it was renamed from; this one is not kept
        if desc is None:
            if allow_non_restored:
                dropped.append(where)
                continue
            problems.append(f"{where}: operator {saved.operator!r} declares no state "
                            f"{saved.name!r} (its states: {', '.join(map(repr, by_name))}); "
                            f"if it was renamed, declare renamed_from={saved.name!r} on it; "
                            f"or {fix_drop}")
            continue
        if saved.operator in generated:
            problems.append(
                f"{where}: operator {saved.operator!r} has a name eddies generated, which "
                "shifts when operators are added or removed, so it cannot address saved "
                f"state; give it name={saved.operator!r} (and name your stateful operators "
                "in production jobs)")
            continue
        other = claimed.setdefault((saved.operator, desc.name), saved.name)
        if other != saved.name:
            problems.append(f"{where}: state {desc.name!r} would take both {other!r} and "
                            f"{saved.name!r}; keep one (drop renamed_from or rename)")
            continue
        if desc.kind != saved.kind:
            problems.append(f"{where} is declared as a {desc.kind} state "
                            f"({desc!r}): a state cannot change kind across a savepoint; "
                            "keep its kind, or give the new state another name (it starts "
                            "empty) and restore with --allow-non-restored-state")
            continue
        if desc.version < saved.version:
            problems.append(f"{where} was saved at version {saved.version}, above the "
                            f"version {desc.version} declared: restore it into the job "
                            "version that wrote it")
            continue
        if desc.version > saved.version and desc.migrate is None:
            problems.append(f"{where} was saved at version {saved.version} and is declared "
                            f"version {desc.version} without migrate=: give "
                            f"migrate=fn(old_value, old_version) to convert its values")
            continue
        targets.append(_Target(saved, desc, operators[saved.operator]))
    for op in sp.operators:
        if op.timers and op.name in by_op and op.name in generated and not any(
                t.saved.operator == op.name for t in targets):
            problems.append(f"operator {op.name!r} has {op.timers:,} saved timers and a name "
                            f"eddies generated: give it name={op.name!r}")
        elif op.timers and op.name not in by_op and not allow_non_restored:
            problems.append(f"operator {op.name!r} has {op.timers:,} saved timers and the job "
                            f"has no operator of that name; {fix_drop}")
    problems.extend(_source_problems(sp, job, readers, allow_non_restored))
    if problems:
        raise SavepointError(
            f"{sp.where} (job {sp.job!r}) does not fit job {job.name!r}: "
            + "; ".join(problems))
    return targets, dropped


def _source_problems(sp: Savepoint, job: Job, readers: dict[str, list[SourceReader]],
                     allow_non_restored: bool) -> list[str]:
    problems = []
    kinds = {n.name: n.params["source"].kind for n in job.nodes if n.kind == "source"}
    for source in sp.identity["sources"]:
        name = source["name"]
        if name not in readers:
            if not allow_non_restored:
                problems.append(f"source {name!r} has saved positions and the job has no "
                                "source of that name; restore with "
                                "--allow-non-restored-state to drop them")
            continue
        if kinds[name] != source["kind"]:
            problems.append(f"source {name!r} was read as {source['kind']} and is now read as "
                            f"{kinds[name]}: its saved positions mean nothing to this reader")
            continue
        parts = readers[name]
        if len(parts) != len(source["partitions"]):
            problems.append(f"source {name!r} had {len(source['partitions'])} partitions and "
                            f"now has {len(parts)}: its positions do not carry over")
            continue
        for reader, fingerprint in zip(parts, source["partitions"], strict=True):
            reason = None if fingerprint is None else reader.check_fingerprint(fingerprint)
            if reason is not None:
                problems.append(f"source {name!r}: {reason}; its saved position means nothing "
                                "in the input as it is now: put the input back as it was")
    return problems


def _group_of(key: bytes, kind: str, max_parallelism: int) -> bytes:
    if kind == "broadcast":
        return key[:2]
    end = decode_user_key(key, 2)[1]
    return (zlib.crc32(key[2:end]) % max_parallelism).to_bytes(2, "big")


def _migrator(target: _Target) -> Callable[[bytes, bytes], bytes] | None:
    saved, desc = target.saved, target.descriptor
    if desc.version == saved.version:
        return None
    migrate = desc.migrate
    assert migrate is not None
    old = saved.version

    def convert(key: bytes, data: bytes) -> bytes:
        value, metadata = decode_payload(data)
        try:
            new = migrate(value, old)
            return data[:8] + payload(new, metadata)
        except Exception as exc:
            user_key, end = decode_user_key(key, 2)
            rest = f", map key {decode_key(key[end:])!r}" if key[end:] else ""
            raise SavepointError(
                f"migrating {saved.kind} state {saved.name!r} of operator {saved.operator!r} "
                f"from version {old} to {desc.version}: migrate raised {exc!r} on the value "
                f"{value!r} of key {user_key!r}{rest} (or returned what msgpack cannot "
                "store); fix migrate and restore again (nothing was restored)") from exc
    return convert


def restore_savepoint(path: str | os.PathLike[str], job: Job, backend: StateBackend,
                      operators: dict[str, KeyedOperator],
                      readers: dict[str, list[SourceReader]], *,
                      max_parallelism: int, allow_non_restored_state: bool = False,
                      where: str = "the state backend") -> list[str]:
    """Write the savepoint at ``path`` into the empty ``backend`` of ``job``, whose keyed
    ``operators`` are built (by name) and whose sources are ``readers`` (by source name, at
    the start of their input); returns the saved states dropped (with
    ``allow_non_restored_state``). See the module docstring for the rules; every mismatch
    raises :class:`~eddies.errors.SavepointError` before anything is written. The local
    runner calls it (``run_local(..., from_savepoint=)``)."""
    sp = read_savepoint(path)
    for cf in backend.column_families():
        if cf != "default" and not backend.is_empty(cf):
            raise SavepointError(
                f"{where} is not empty (it holds {cf!r}): a savepoint restores into a new "
                "state dir; give --state rocksdb:NEW_DIR (or delete this one)")
    targets, dropped = _plan(sp, job, operators, readers, allow_non_restored_state)
    touched: set[str] = set()
    try:
        _write_state(sp, backend, targets, operators, max_parallelism, touched)
        _write_meta(sp, job, backend, operators, readers)
    except BaseException:
        undo = Batch()
        for cf in touched:
            undo.delete_range(cf, b"", b"\xff" * 10)
        with contextlib.suppress(Exception):  # the first error is the one to report
            backend.write(undo)
        raise
    for op in operators.values():
        op.store.backend.reset_sweep_floor()
    return dropped


def _write_state(sp: Savepoint, backend: StateBackend, targets: list[_Target],
                 operators: dict[str, KeyedOperator], max_parallelism: int,
                 touched: set[str]) -> None:
    groups: dict[str, dict[bytes, set[bytes]]] = {}  # operator: old group -> new groups
    for target in targets:
        cf = target.descriptor.name
        kind = target.saved.kind
        convert = _migrator(target)
        ttl = target.operator.store.backend
        moves = groups.setdefault(target.saved.operator, {})
        batch: list[tuple[int, str, bytes, bytes]] = []
        touched.add(cf)
        for key, data in sp.raw_entries(target.saved):
            group = _group_of(key, kind, max_parallelism)
            if group != key[:2]:
                moves.setdefault(key[:2], set()).add(group)
                new_key = group + key[2:]
            else:
                moves.setdefault(group, set()).add(group)
                new_key = key
            if convert is not None:
                data = convert(key, data)
            batch.append((PUT, cf, new_key, data))
            if len(batch) >= _RESTORE_BATCH:
                _flush(backend, ttl, batch, touched)
                batch = []
        _flush(backend, ttl, batch, touched)
    for name in operators:
        keys = list(sp.raw_timers(name))
        if not keys:
            continue
        cf = timers_cf(name)
        touched.add(cf)
        moves = groups.get(name, {})
        out = Batch()
        for key in keys:
            if key[2:3] == WINDOW:  # a mark: every group its key group's keys went to
                for group in sorted(moves.get(key[:2], ())):
                    out.put(cf, group + key[2:], b"")
                continue
            end = decode_user_key(key, 11)[1]
            group = (zlib.crc32(key[11:end]) % max_parallelism).to_bytes(2, "big")
            out.put(cf, group + key[2:], b"")
        backend.write(out)


def _flush(backend: StateBackend, ttl: Any, ops: list[tuple[int, str, bytes, bytes]],
           touched: set[str]) -> None:
    if not ops:
        return
    index = ttl.index_ops(ops)
    for _, cf, _, _ in index[:1]:
        touched.add(cf)
    backend.write(Batch(list(ops) + index))


def _write_meta(sp: Savepoint, job: Job, backend: StateBackend,
                operators: dict[str, KeyedOperator],
                readers: dict[str, list[SourceReader]]) -> None:
    batch = Batch()
    for name in operators:
        wm = sp.watermarks.get(name)
        if wm is not None:
            batch.put(META_CF, encode_key(("watermark", name)), pack(wm))
    saved_fp = {s["name"]: s["partitions"] for s in sp.identity["sources"]}
    fingerprints: dict[str, list[Any]] = {}
    for name, parts in readers.items():
        saved = sp.sources.get(name)
        if saved is None or len(saved) != len(parts):
            fingerprints[name] = [None] * len(parts)
            continue
        fingerprints[name] = list(saved_fp.get(name, [None] * len(parts)))
        for i, (position, wm) in enumerate(saved):
            if position is not None:
                batch.put(META_CF, encode_key(("source", name, i)), pack(position))
            if wm is not None:
                batch.put(META_CF, encode_key(("source-wm", name, i)), pack(wm))
    meta = sp.meta
    if meta is not None:
        sink_names = {n.name for n in job.nodes if n.kind == "sink"} | {"__dead_letters__"}
        meta = {**meta, "sinks": {k: v for k, v in meta.get("sinks", {}).items()
                                  if k in sink_names}}
        batch.put(META_CF, encode_key(("job", job.name)), pack(meta))
    batch.put(META_CF, IDENTITY_KEY, encode_identity(job_identity(job, fingerprints)))
    backend.write(batch)

