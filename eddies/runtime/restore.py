"""Restoring a savepoint (``savepoint.py``) into a job's new state: the rules that map a
saved job onto a changed one, and the writes that put its entries where the job reads them.

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
- A savepoint of a run that read its input to the end has ended event time (watermark
  +infinity: timers and windows fired, TTL state expired): it restores only into the same
  inputs (``identity.py`` then says there is nothing to do, or offers follow mode), never
  into new ones, where every event would be late.
- Sources continue from the saved positions under the rules of ``identity.py``: a file
  replaced or shorter than its position is refused; a source the savepoint lacks starts from
  the beginning; a saved source the job lacks needs ``allow_non_restored_state``. Sinks of
  the same name resume at their saved length (as a restart would); others start fresh.

Into RocksDB, a state copied as stored (no migration, no TTL index) is loaded past the
write-ahead log and flushed once (``RocksDbStateBackend.load``): the dir is new, and is a
job's only once the restore has written its identity, last.

Errors name the operator and state and say what to do; all of them come before anything is
written. A restore that fails while writing (a ``migrate`` that raises) deletes what it
wrote, so the dir is empty again. Its first write marks the dir as holding a restore, and its
last one (the identity) clears the mark: a run on a dir whose restore was cut short (kill
-9, power loss) is refused, and the same restore run again starts over.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eddies.errors import SavepointError
from eddies.operators.sources import SourceReader
from eddies.runtime.graph import Job
from eddies.runtime.identity import (
    IDENTITY_KEY,
    RESTORE_KEYS_KEY,
    RESTORING_KEY,
    decode_identity,
    encode_identity,
    generated_names,
    job_identity,
)
from eddies.runtime.keyed import META_CF, KeyedOperator
from eddies.runtime.savepoint import Savepoint, StateInfo, read_savepoint
from eddies.runtime.timers import WINDOW, timers_cf
from eddies.runtime.watermarks import MAX_TIME
from eddies.state.backend import PUT, Batch, StateBackend
from eddies.state.descriptors import StateDescriptor, declared_states
from eddies.state.entries import decode_payload, payload
from eddies.state.keys import decode_key, decode_user_key, encode_key
from eddies.state.rocksdb import RocksDbStateBackend
from eddies.state.values import NEVER_STAMP, pack

__all__ = ["restore_savepoint"]

_RESTORE_BATCH = 50_000
"""Entries per write while restoring (each a backend batch)."""


@dataclass
class _Target:
    saved: StateInfo
    descriptor: StateDescriptor
    operator: KeyedOperator


def _plan(sp: Savepoint, job: Job, operators: dict[str, KeyedOperator],
          readers: dict[str, list[SourceReader]] | None, allow_non_restored: bool,
          ) -> tuple[list[_Target], list[str]]:
    """Match the savepoint's states with the job's; raise SavepointError listing every
    mismatch. Returns the states to restore and what is dropped (allow_non_restored)."""
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
    for info in sp.operators:
        if info.timers and info.name in by_op and info.name in generated and not any(
                t.saved.operator == info.name for t in targets):
            problems.append(f"operator {info.name!r} has {info.timers:,} saved timers and a "
                            f"name eddies generated: give it name={info.name!r}")
        elif info.timers and info.name not in by_op:
            if allow_non_restored:
                dropped.append(f"{info.timers:,} timers of operator {info.name!r}")
            else:
                problems.append(f"operator {info.name!r} has {info.timers:,} saved timers and "
                                f"the job has no operator of that name; {fix_drop}")
    if readers is not None:
        problems.extend(_source_problems(sp, job, readers, allow_non_restored))
    ended = sorted(name for name, wm in sp.watermarks.items()
                   if wm == MAX_TIME and name in operators)
    if ended and (readers is None or any(name not in sp.sources for name in readers)):
        # The same inputs, unchanged or grown, meet the checks of identity.check_ended.
        problems.append(
            f"operator{'s' * (len(ended) > 1)} {', '.join(map(repr, ended))} ended event "
            "time in the savepoint (its job read its input to the end, so every timer and "
            "window fired and TTL state expired there): new input would all count as late. "
            "Take the savepoint from a run stopped before the end of its input (Ctrl-C or "
            "SIGTERM, or eddies run --follow)")
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
        if name not in sp.sources:
            continue  # no positions saved (a Kafka job's offsets are not kept)
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


def _element_end(key: bytes, pos: int) -> int:
    """The offset after the user key element at ``pos`` of a stored key."""
    if key[pos:pos + 2] == b"\x05\x02":  # one str: decode_user_key's fast path, undecoded
        end = key.find(b"\x00", pos + 2)
        if end > 0 and key[end + 1:end + 2] == b"\x00" and key[end + 2:end + 3] != b"\xff":
            return end + 2
    return decode_user_key(key, pos)[1]


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
                      where: str = "the state backend",
                      key_group: Callable[[bytes], int] | None = None) -> list[str]:
    """Write the savepoint at ``path`` into the empty ``backend`` of ``job``, whose keyed
    ``operators`` are built (by name) and whose sources are ``readers`` (by source name, at
    the start of their input); returns the saved states dropped (with
    ``allow_non_restored_state``). See the module docstring for the rules; every mismatch
    raises :class:`~eddies.errors.SavepointError` before anything is written. The local
    runner calls it (``run_local(..., from_savepoint=)``).

    ``key_group(user key element) -> group`` places keys another way than ``crc32 %
    max_parallelism`` (a Kafka deployment's partitions); input positions are then neither
    checked nor restored (``readers`` is ignored)."""
    sp = read_savepoint(path)
    sp.verify()  # a damaged file is refused before anything is written
    local = key_group is None
    # A dir holding an interrupted restore (kill -9, power loss) is cleared and restored
    # again, once the savepoint is known to fit the job.
    interrupted = local and backend.get(META_CF, RESTORING_KEY) is not None
    for cf in () if interrupted else backend.column_families():
        if cf != "default" and not backend.is_empty(cf):
            data = backend.get(META_CF, IDENTITY_KEY)
            held = None if data is None else decode_identity(data, where)["job"]
            resume = ("" if held is None else
                      f"; it holds job {held!r}'s checkpoints (a savepoint is restored once, "
                      "then the job checkpoints there): to resume them, run without "
                      "--from-savepoint")
            raise SavepointError(
                f"{where} is not empty (it holds {cf!r}): a savepoint restores into a new "
                f"state dir; give --state rocksdb:NEW_DIR (or delete this one){resume}")
    targets, dropped = _plan(sp, job, operators, None if key_group else readers,
                             allow_non_restored_state)
    if interrupted:
        _clear(backend, [cf for cf in backend.column_families() if cf != "default"])
    touched: set[str] = set()
    try:
        if local:
            # Until the last write deletes it, the dir holds a restore, not a job's state.
            touched.add(META_CF)
            started = Batch()
            started.put(META_CF, RESTORING_KEY, pack(os.fspath(path)))
            backend.write(started, sync=True)
        _write_state(sp, backend, targets, operators, max_parallelism, touched, key_group)
        if local:
            _write_meta(sp, job, backend, operators, readers, max_parallelism)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            _clear(backend, touched)
        raise
    for op in operators.values():
        op.store.backend.reset_sweep_floor()
    return dropped


def _clear(backend: StateBackend, cfs: Any) -> None:
    """Delete every entry of the column families ``cfs``."""
    batch = Batch()
    for cf in cfs:
        batch.delete_range(cf, b"", b"\xff" * 10)
    backend.write(batch)


def _write_state(sp: Savepoint, backend: StateBackend, targets: list[_Target],
                 operators: dict[str, KeyedOperator], max_parallelism: int,
                 touched: set[str], key_group: Callable[[bytes], int] | None) -> None:
    crc32 = zlib.crc32
    groups = [g.to_bytes(2, "big") for g in range(max_parallelism)]
    if key_group is not None:
        def group_of(element: bytes) -> bytes:
            return key_group(element).to_bytes(2, "big")
    else:
        def group_of(element: bytes) -> bytes:
            return groups[crc32(element) % max_parallelism]
    same_groups = key_group is None and sp.max_parallelism == max_parallelism

    def regroup(chunk: list[bytes]) -> list[bytes]:
        if key_group is not None:
            return [group_of(k[2:]) + k[2:] for k in chunk]
        return [groups[crc32(e) % max_parallelism] + e for e in [k[2:] for k in chunk]]
    marked = set() if same_groups else {
        name for name in operators if any(k[2:3] == WINDOW for k in sp.raw_timers(name))}
    moves: dict[str, set[bytes]] = {}  # operator: (old group + new group) of its keys
    for target in targets:
        cf = target.descriptor.name
        convert = _migrator(target)
        ttl = target.operator.store.backend
        if target.saved.kind == "map" and ttl.index_target(cf) is None:
            # Entries put with expire_at= and no Ttl: indexed and swept on the default
            # clock, the one MapState.put(expire_at=) registers.
            ttl.register_clock(cf, ttl.time_domain(cf))
        indexed = ttl.index_target(cf) is not None
        track = target.saved.operator in marked
        if convert is None and (same_groups or (
                not track and target.saved.kind in ("value", "reducing"))):
            # A chunk at a time: the stored keys as they are (same key groups), or regrouped
            # without decoding (the user key element is all of the key after its group).
            _copy_chunks(sp, target.saved, backend, ttl, cf, indexed, touched,
                         None if same_groups else regroup)
            continue
        moved = moves.setdefault(target.saved.operator, set())
        broadcast = target.saved.kind == "broadcast"
        keys: list[bytes] = []
        values: list[bytes] = []
        touched.add(cf)
        for key, data in sp.raw_entries(target.saved):
            if convert is not None:
                data = convert(key, data)
            if not broadcast and not same_groups:  # broadcast state: group 0, no key
                group = group_of(key[2:_element_end(key, 2)])
                if track:
                    moved.add(key[:2] + group)
                key = group + key[2:]
            keys.append(key)
            values.append(data)
            if len(keys) >= _RESTORE_BATCH:
                _flush(backend, ttl, cf, keys, values, indexed, touched)
                keys, values = [], []
        _flush(backend, ttl, cf, keys, values, indexed, touched)
    for name in operators:
        stored = list(sp.raw_timers(name))
        if not stored:
            continue
        cf = timers_cf(name)
        touched.add(cf)
        to: dict[bytes, list[bytes]] = {}
        for pair in sorted(moves.get(name, ())):
            to.setdefault(pair[:2], []).append(pair[2:])
        out: list[bytes] = stored if same_groups else []
        for key in () if same_groups else stored:
            if key[2:3] == WINDOW:  # a mark: every group its key group's keys went to
                out.extend(group + key[2:] for group in to.get(key[:2], ()))
                continue
            out.append(group_of(key[11:_element_end(key, 11)]) + key[2:])
        batch = Batch()
        batch.put_many(cf, out, [b""] * len(out))
        backend.write(batch)


def _copy_chunks(sp: Savepoint, info: StateInfo, backend: StateBackend, ttl: Any, cf: str,
                 indexed: bool, touched: set[str],
                 regroup: Callable[[list[bytes]], list[bytes]] | None) -> None:
    touched.add(cf)
    if not indexed and isinstance(backend, RocksDbStateBackend):
        # A new dir: written past the WAL and flushed once (the dir's identity, which makes
        # it a job's, is written after).
        runs = sp.raw_chunks(info)
        backend.load(cf, runs if regroup is None else (
            (regroup(keys), values) for keys, values in runs))
        return
    keys: list[bytes] = []
    values: list[bytes] = []
    for chunk_keys, chunk_values in sp.raw_chunks(info):
        keys += chunk_keys if regroup is None else regroup(chunk_keys)
        values += chunk_values
        if len(keys) >= _RESTORE_BATCH:
            _flush(backend, ttl, cf, keys, values, indexed, touched)
            keys, values = [], []
    _flush(backend, ttl, cf, keys, values, indexed, touched)


def _flush(backend: StateBackend, ttl: Any, cf: str, keys: list[bytes], values: list[bytes],
           indexed: bool, touched: set[str]) -> None:
    if not keys:
        return
    batch = Batch()
    batch.put_many(cf, keys, values)
    if indexed:  # a state with a TTL clock: an expiry-index entry per stamped value
        index = ttl.index_ops([(PUT, cf, k, v) for k, v in zip(keys, values, strict=True)
                               if v[:8] != NEVER_STAMP])
        touched.update(op[1] for op in index)
        batch.ops.extend(index)
    backend.write(batch)


def _write_meta(sp: Savepoint, job: Job, backend: StateBackend,
                operators: dict[str, KeyedOperator],
                readers: dict[str, list[SourceReader]], max_parallelism: int) -> None:
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
                                  if k in sink_names},
                "max_parallelism": max_parallelism}  # the key groups written here
        batch.put(META_CF, encode_key(("job", job.name)), pack(meta))
    else:
        # A SavepointWriter file has no job checkpoint: the key groups written here, for the
        # runs that resume them before their first checkpoint writes the job's.
        batch.put(META_CF, RESTORE_KEYS_KEY, pack(max_parallelism))
    batch.put(META_CF, IDENTITY_KEY, encode_identity(job_identity(job, fingerprints)))
    batch.delete(META_CF, RESTORING_KEY)
    backend.write(batch)

