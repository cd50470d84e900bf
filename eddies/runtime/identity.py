"""What a state dir belongs to: its job, the job's keyed operators and their states, and the
inputs its sources read up to the checkpoint.

Every checkpoint of the local runner writes the identity into the checkpoint metadata (the
``__meta__`` column family, key ``("identity",)`` in the tuple encoding), in the same atomic
batch as the state and the source positions, as a msgpack map::

    {"version": 1,
     "job": "fraud",
     "operators": [{"name": "Fraud", "states": [["recent", "list"], ["small", "value"]]}],
     "sources": [{"name": "payments.jsonl", "kind": "jsonl",
                  "partitions": [{"path": "/abs/payments.jsonl", "offset": 1234,
                                  "size": 5678, "digest": <16 bytes>}]}]}

``operators`` lists the keyed operators (``process``, windows, broadcast process) in graph
order, each with its states sorted by name as ``[name, kind]`` (kind: ``value``, ``list``,
``map``, ``reducing``, ``broadcast``), and ``"versions": {state: N}`` for the states declared
with a ``version`` other than 1 (absent when there are none, as in identities written before
versions existed: their states are version 1). ``sources`` lists every source in graph order with one
fingerprint per partition (``SourceReader.fingerprint``; ``None`` for inputs that cannot be
told apart, such as an iterable). A file's fingerprint is the offset read up to, the file's
size then, and a digest of its first 4 KiB and of the 4 KiB before the offset.

A run on a dir with an identity checks it before the first event (before any sink is opened,
so a refused run leaves the outputs as they were) and stops with :class:`StateIdentityError`
when:

- the job's name differs (the error names both);
- the keyed operators, their states or the states' kinds or versions differ (a changed
  operator with a generated name is named as the likely cause), or a source was added,
  removed, renamed, split into another number of partitions or read by another kind of
  reader (every difference is refused: restoring into a changed job needs savepoints);
- a file is shorter than the offset read from it, or its bytes up to that offset differ (it
  was replaced or rewritten);
- the previous run read a timestamped source to its end, which ended its event time (the
  watermark went to +infinity: every timer and window fired, TTL state expired), and the file
  has grown since, or this run follows it: new lines would all count as late.

A dir whose previous run ended all its input, unchanged since, has nothing to do: the run
says so and ends without reading or writing anything.

Under Kafka the identity (with no partitions in its sources: input positions are the
markers' offsets) rides on every checkpoint marker (``kafka/changelog.py``); a worker
restoring a partition compares the last marker's identity with its job's by the same rules
before the first event, with :data:`KAFKA_FIX` as the way out. A renamed job has changelog
topics of its own, so only a job of the same name with other operators or states meets it.
Markers written before carry none and are accepted.

A dir's keyed state is stored by key group (``crc32(user key) % max_parallelism``), and its
checkpoint records the ``max_parallelism`` it was written with: a run with another one would
look its keys up in other groups and find no state, so it is refused too
(:func:`check_max_parallelism`); the way to another ``max_parallelism`` is a savepoint,
whose restore recomputes the key groups. A checkpoint that records none was written before
the record existed, with the default of 128 unless the job said otherwise, and is accepted.

Dirs written before identities existed have the job's checkpoint but no identity: a run of
the same job name resumes them (operators and inputs cannot be checked) and writes the
identity at its next checkpoint; a run of another job name is refused as above, since the
checkpoint is stored under the job's name.

>>> import eddies as ed
>>> job = ed.Job("demo")
>>> class Count(ed.KeyedProcessFunction):
...     n = ed.ValueState("n", default=0)
...     def on_event(self, event, ctx):
...         pass
>>> job.source(ed.sources.iterable([])).key_by("k").process(Count()).sink(ed.sinks.collect())
>>> job_identity(job)["operators"]
[{'name': 'Count', 'states': [['n', 'value']]}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eddies.errors import StateIdentityError
from eddies.operators.sources import SourceReader
from eddies.runtime.graph import Job, Node
from eddies.state.descriptors import declared_states
from eddies.state.keys import decode_key, encode_key
from eddies.state.values import pack, unpack

__all__ = [
    "IDENTITY_KEY",
    "IDENTITY_VERSION",
    "RESTORE_KEYS_KEY",
    "RESTORING_KEY",
    "KAFKA_FIX",
    "PartitionInput",
    "check_ended",
    "check_identity",
    "check_max_parallelism",
    "decode_identity",
    "encode_identity",
    "generated_names",
    "job_identity",
    "state_versions",
    "stored_job_names",
]

IDENTITY_KEY = encode_key(("identity",))
"""Where the identity is stored in the ``__meta__`` column family."""
RESTORING_KEY = encode_key(("restoring",))
"""Written in ``__meta__`` before a savepoint restore writes anything, and deleted with its
last write (the identity's): a dir holding it holds an interrupted restore."""
RESTORE_KEYS_KEY = encode_key(("restored-max-parallelism",))
"""The ``max_parallelism`` a savepoint restore placed keys with, for a restore that writes no
job checkpoint (a savepoint written by ``SavepointWriter``)."""
IDENTITY_VERSION = 1
"""Version of the identity map drawn above; another version is refused, never misread."""

_JOB_PREFIX = encode_key(("job",))
_NEW_DIR = "--state rocksdb:NEW_DIR"
KAFKA_FIX = (
    "Give the changed job a new name (ed.Job('...')): its changelog topics and consumer group "
    "are named after it, so it starts afresh; or delete this job's changelog topics "
    "(<job>-*-changelog, the checkpoint topic included) and the workers' state dirs; or run "
    "the job as it was")
"""What to do when a Kafka job's changelog holds another job's checkpoints."""


@dataclass
class PartitionInput:
    """One source partition as a run sees it at startup, for :func:`check_ended`."""

    source: str
    reader: SourceReader
    timestamped: bool
    """The source gives event time (``timestamp=``): an ended partition ended event time."""
    position: Any
    """The checkpointed position, or None."""
    ended: bool
    """The checkpoint has this partition at the end of its input (watermark +infinity)."""


_KEYED_KINDS = ("process", "broadcast_process", "co_process")
"""The node kinds run by a keyed operator (state, timers, a watermark of their own)."""


def _keyed(node: Node) -> bool:
    return node.kind in _KEYED_KINDS


def job_identity(job: Job, fingerprints: dict[str, list[dict[str, Any] | None]] | None = None,
                 ) -> dict[str, Any]:
    """The identity of ``job``; ``fingerprints`` maps each source name to its partitions'
    fingerprints (absent: ``[]``)."""
    fingerprints = fingerprints or {}
    operators = []
    for n in job.nodes:
        if not _keyed(n):
            continue
        states = declared_states(n.params["fn"]).values()
        op: dict[str, Any] = {"name": n.name,
                              "states": sorted([d.name, d.kind] for d in states)}
        versions = {d.name: d.version for d in states if d.version != 1}
        if versions:  # only then: identities of jobs without versions keep their bytes
            op["versions"] = versions
        operators.append(op)
    sources = [
        {"name": n.name, "kind": n.params["source"].kind,
         "partitions": list(fingerprints.get(n.name, []))}
        for n in job.nodes if n.kind == "source"
    ]
    return {"version": IDENTITY_VERSION, "job": job.name, "operators": operators,
            "sources": sources}


def encode_identity(identity: dict[str, Any]) -> bytes:
    """The stored bytes of an identity (msgpack)."""
    return pack(identity)


def decode_identity(data: bytes, where: str) -> dict[str, Any]:
    """An identity from its stored bytes; another version is a :class:`StateIdentityError`."""
    identity = unpack(data)
    version = identity.get("version") if isinstance(identity, dict) else None
    if version != IDENTITY_VERSION:
        raise StateIdentityError(
            f"{where} records its job in identity format version {version!r}, which this "
            f"eddies does not read (it reads version {IDENTITY_VERSION}): run it with the "
            f"eddies version that wrote it, or run the job on a new state dir ({_NEW_DIR})")
    return identity


def stored_job_names(meta: dict[bytes, bytes]) -> list[str]:
    """The job names that have a checkpoint in the ``__meta__`` entries ``meta``."""
    names = []
    for key in meta:
        if key.startswith(_JOB_PREFIX) and len(key) > len(_JOB_PREFIX):
            decoded = decode_key(key)
            if len(decoded) == 2 and isinstance(decoded[1], str):
                names.append(decoded[1])
    return sorted(names)


def _states(states: list[list[str]]) -> str:
    return ", ".join(f"{name!r} ({kind})" for name, kind in states) or "no states"


def state_versions(operator: dict[str, Any]) -> dict[str, int]:
    """Each state's version in an identity's operator entry (1 unless it says otherwise)."""
    versions = operator.get("versions") or {}
    return {name: versions.get(name, 1) for name, _ in operator["states"]}


def generated_names(job: Job) -> set[str]:
    """The names of ``job``'s operators that eddies generated (``tumbling-window-3``,
    ``interval-join-2``, ``<kind>-N``): they shift as operators are added or removed, so
    they cannot address state across a change of the job."""
    return set(job.generated_names)


def _operator_diffs(was: list[dict[str, Any]], now: list[dict[str, Any]]) -> list[str]:
    old = {op["name"]: {name: kind for name, kind in op["states"]} for op in was}
    new = {op["name"]: {name: kind for name, kind in op["states"]} for op in now}
    old_versions = {op["name"]: state_versions(op) for op in was}
    new_versions = {op["name"]: state_versions(op) for op in now}
    diffs = []
    for name, states in old.items():
        if name not in new:
            diffs.append(f"operator {name!r} is gone (it had "
                         f"{_states(sorted([s, k] for s, k in states.items()))})")
    for name, states in new.items():
        if name not in old:
            diffs.append(f"operator {name!r} is new")
            continue
        before = old[name]
        for state, kind in before.items():
            if state not in states:
                diffs.append(f"operator {name!r}: state {state!r} ({kind}) is gone")
            elif states[state] != kind:
                diffs.append(f"operator {name!r}: state {state!r} was a {kind} state and is "
                             f"now a {states[state]} state")
            elif old_versions[name][state] != new_versions[name][state]:
                diffs.append(f"operator {name!r}: state {state!r} was version "
                             f"{old_versions[name][state]} and is now version "
                             f"{new_versions[name][state]} (values are migrated through a "
                             "savepoint: eddies savepoint create, then run --from-savepoint)")
        diffs.extend(f"operator {name!r}: state {state!r} ({kind}) is new"
                     for state, kind in states.items() if state not in before)
    return diffs


def check_identity(stored: dict[str, Any], job: Job,
                   readers: dict[str, list[SourceReader]] | None, where: str,
                   fix: str | None = None) -> None:
    """Raise :class:`StateIdentityError` unless ``job`` (with its sources' ``readers`` by
    source name, opened at the start of their input) may resume from a checkpoint of identity
    ``stored``. See the module docstring for the rules. Without ``readers`` (Kafka: input
    positions are offsets in topics) partitions and fingerprints are not compared; ``fix``
    replaces the local runner's advice (a new state dir)."""
    if stored["job"] != job.name:
        raise StateIdentityError(
            f"{where} belongs to job {stored['job']!r}, not to job {job.name!r}: a state dir "
            "holds one job's state, timers and input positions, and this job would start its "
            "input over on the other job's state. " + (fix or (
                f"Run {job.name!r} on a new state dir ({_NEW_DIR}), or keep the name "
                f"(ed.Job({stored['job']!r})) to resume it")))
    now = job_identity(job)
    diffs = _operator_diffs(stored["operators"], now["operators"])
    old_sources = {s["name"]: s for s in stored["sources"]}
    new_sources = {s["name"]: s for s in now["sources"]}
    diffs.extend(f"source {name!r} is gone" for name in old_sources if name not in new_sources)
    changed: list[str] = []
    for name, source in new_sources.items():
        before = old_sources.get(name)
        if before is None:
            diffs.append(f"source {name!r} is new")
        elif before["kind"] != source["kind"]:
            diffs.append(f"source {name!r} was read as {before['kind']} and is now read as "
                         f"{source['kind']}")
        elif readers is None:
            continue
        elif len(before["partitions"]) != len(readers[name]):
            diffs.append(f"source {name!r} had {len(before['partitions'])} partitions and "
                         f"now has {len(readers[name])}")
        else:
            for reader, fingerprint in zip(readers[name], before["partitions"], strict=True):
                reason = None if fingerprint is None else reader.check_fingerprint(fingerprint)
                if reason is not None:
                    changed.append(f"source {name!r}: {reason}")
    if diffs:
        moved = sorted(set(generated_names(job)) & {op["name"] for op in now["operators"]}
                       - {op["name"] for op in stored["operators"]})
        if moved:
            diffs.append(
                f"operator{'s' * (len(moved) > 1)} {', '.join(map(repr, moved))} "
                "ha" + ("ve" if len(moved) > 1 else "s") + " a name eddies generated, which "
                "shifts when operators are added or removed: give stateful operators "
                "name=... so that their state keeps its address")
        raise StateIdentityError(
            f"{where} holds job {job.name!r} with other operators, states or sources than "
            f"this one: {'; '.join(diffs)}. Its state and input positions do not fit the job "
            "as it is now: " + (fix or (
                f"run it on a new state dir ({_NEW_DIR}), which reads the input from the "
                "start, or run the job as it was on this dir")))
    if changed:
        raise StateIdentityError(
            f"{where}: the input of job {job.name!r} changed since its last checkpoint: "
            f"{'; '.join(changed)}. The positions the job would resume from mean nothing in "
            f"the input as it is now: put the input back as it was, or run the job on a new "
            f"state dir ({_NEW_DIR}) to read it from the start")


def check_max_parallelism(saved: int | None, max_parallelism: int, job: Job,
                          where: str) -> None:
    """Raise :class:`StateIdentityError` when the checkpoint's key groups (``saved``: the
    ``max_parallelism`` it records, None if it records none) are not the ones a run with
    ``max_parallelism`` would read.

    >>> check_max_parallelism(128, 128, Job("demo"), "state dir st")
    >>> check_max_parallelism(7, 128, Job("demo"), "state dir st")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    eddies.errors.StateIdentityError: state dir st holds job 'demo' with its keyed state ...
    """
    if saved is None or saved == max_parallelism:
        return
    raise StateIdentityError(
        f"{where} holds job {job.name!r} with its keyed state in key groups of "
        f"max_parallelism {saved}, and this run has max_parallelism {max_parallelism}: its "
        "keys would be looked up in other key groups and their state not found. Resume it "
        f"with max_parallelism={saved}, or move the state to max_parallelism "
        f"{max_parallelism} through a savepoint, which recomputes the key groups: eddies "
        "savepoint create DIR SP, then run the job on a new state dir from it "
        f"(run_local(job, 'rocksdb:NEW_DIR', from_savepoint=SP, max_parallelism="
        f"{max_parallelism}))")


def check_ended(parts: Sequence[PartitionInput], job: Job, where: str,
                events: int) -> str | None:
    """After a checkpoint whose run ended some input: raise :class:`StateIdentityError` when
    a timestamped partition that ended has grown since or is to be followed; else return
    the "nothing to do" message when every partition ended and none grew, else None.
    ``events``: the events the dir's runs read in all."""
    grown = []
    followed = []
    for part in parts:
        if not part.ended or part.position is None or not part.timestamped:
            continue
        more = part.reader.pending(part.position)
        if more:
            unit = " bytes" if part.reader.can_follow else " records"
            grown.append((part, f"source {part.source!r} ({more:,}{unit} appended)"))
        elif part.reader.follow:
            followed.append((part, f"source {part.source!r}"))
    if grown or followed:
        what = "; ".join(text for _, text in grown or followed)
        now = ("the input has grown since: " + what + ". Its new records would all count as "
               "late" if grown else
               f"this run follows it ({what}): every line appended would count as late")
        if all(part.reader.can_follow for part, _ in grown or followed):
            fix = ("To keep reading a growing input, run with --follow "
                   "(run_local(..., follow=True)), which never ends event time, on a new "
                   f"state dir ({_NEW_DIR} --follow): it reads the input from the start and "
                   "keeps following it")
        else:
            fix = f"Run the job on a new state dir ({_NEW_DIR}) to read the input from the start"
        raise StateIdentityError(
            f"{where}: job {job.name!r} already read its input to the end and ended its event "
            "time there (the watermark went to the end of time: every timer and window fired "
            f"and TTL state expired), and {now}. {fix}")
    if parts and all(p.ended and p.position is not None and p.reader.pending(p.position) == 0
                     for p in parts):
        return (f"{where} already read the input of job {job.name!r} to its end ({events:,} "
                "events) and the input has not grown since: nothing to do. To process it "
                f"again, run on a new state dir ({_NEW_DIR})")
    return None
