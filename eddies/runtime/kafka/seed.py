"""Start a Kafka deployment from a savepoint: ``eddies savepoint restore SP module:job
--broker kafka://HOST:PORT`` writes the savepoint into the job's changelog topics as one
committed checkpoint per partition, so the job's workers, started as usual, restore it.

The savepoint may come from a local run or from a Kafka job with another partition count:
each key goes to the partition its records reach in this deployment (as the worker places
keys: Kafka's default partitioner on the key field for a topic partitioned by it, crc32 of
the encoded key for a repartition topic), its timers with it. States map onto the job's by
the rules of ``restore.py`` (names, ``renamed_from``, ``version``/``migrate``,
``--allow-non-restored-state``; generated operator names refused). Input positions do not
carry over (offsets of other topics or files): every partition's marker starts its input
at ``offset`` (0: the beginning), with the savepoint's watermark.

The job must be new on this broker: a checkpoint topic that holds records is refused (give
the job a new name, ``ed.Job("...")``). The deltas go out first; the markers, one per
partition, after every delta is acknowledged, as a worker's checkpoint does.

``eddies worker ... --from-savepoint SP`` (:func:`seed_if_new`) seeds the same way when
the deployment is new, and just runs when it was already seeded from the same savepoint
(another worker did, or this one restarts with the same command line). Who seeds is
decided without broker transactions (Tansu has none) by the order of one partition, the
seed topic ``<job>-__seed__-changelog`` (1 partition, compacted)::

    claim   key b"claim:" + claimant   value msgpack {"digest", "claimant", "savepoint"}
    done    key b"done"                value msgpack {"digest", "claimant", "records"}

``digest`` is the savepoint file's sha256 and ``claimant`` the host and state dir of the
worker (so a restart is the same claimant). Each would-be seeder reads the topic: a
``done`` of the same digest means seeded (run); a first claim of another digest, or
checkpoints without any claim, mean the job has other state (refused). Otherwise it appends
its claim (once: a claimant never writes a second one, so compaction keeps the order) and
reads the partition again: the first claim in the log wins. The winner writes the
deltas and markers, then ``done``; the others wait for ``done`` before they run, so no
worker checkpoints while the seed is written, and a late seeder never writes over a running
job's checkpoints. The token of the seed's deltas and markers is taken from the digest,
so a winner that dies and restarts with the same state dir writes the same records again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from eddies.errors import ConfigError, SavepointError
from eddies.runtime.graph import KEYED_KINDS, Job
from eddies.runtime.identity import job_identity
from eddies.runtime.kafka.changelog import (
    MARKER_KEY,
    InputPosition,
    Marker,
    encode_marker,
    key_group_of,
    token_header,
)
from eddies.runtime.kafka.plan import plan_job
from eddies.runtime.kafka.topics import changelog_topic, create_topics, topic_partitions
from eddies.runtime.keyed import KeyedOperator
from eddies.runtime.restore import restore_savepoint
from eddies.runtime.savepoint import read_savepoint
from eddies.runtime.watermarks import MIN_TIME
from eddies.state.keys import as_tuple, decode_prefixed, encode_key
from eddies.state.memory import InMemoryStateBackend

__all__ = ["savepoint_digest", "seed_if_new", "seed_kafka_job", "seed_topic"]


async def _partition_count(bootstrap: str, plan: Any, job: Job) -> int:
    """The key groups' count, as the worker finds it (``KafkaWorker.prepare_topics``)."""
    counts = {}
    for topic in plan.group_topics:
        if topic in plan.repartitions.values():
            continue
        n = await topic_partitions(bootstrap, topic)
        if n is None:
            raise ConfigError(f"input topic {topic!r} does not exist on {bootstrap}; create "
                              "it first (eddies produce creates it): its partition count is "
                              "the deployment's")
        counts[topic] = n
    keyed = [t for t in plan.stateful_topics if t in counts]
    inputs = list(counts)
    if not inputs:
        raise ConfigError(f"job {job.name!r} has no Kafka input read by the group")
    return counts[keyed[0]] if keyed else counts[inputs[0]]


def _partitioner(plan: Any, partitions: int) -> Any:
    """``element -> partition`` of a user key element, as the worker places the key."""
    from aiokafka.partitioner import DefaultPartitioner

    repartitioned = bool(plan.stateful_topics) and plan.stateful_topics[0] in (
        plan.repartitions.values())
    default = DefaultPartitioner()
    every = list(range(partitions))

    def partition(element: bytes) -> int:
        key = as_tuple(decode_prefixed(element, 0)[0])
        if repartitioned:
            return zlib.crc32(encode_key(key)) % partitions
        raw = key[0] if len(key) == 1 else key
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
        return int(default(data, every, every))
    return partition


async def _has_records(bootstrap: str, topic: str) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    n = await topic_partitions(bootstrap, topic)
    if not n:
        return False
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return any(ends[tp] > starts[tp] for tp in tps)
    finally:
        await consumer.stop()


_SEED_WAIT_S = 600.0
"""How long a worker waits for another worker's seed to finish."""


def seed_topic(job: str) -> str:
    """``<job>-__seed__-changelog``: who seeds the job from which savepoint, and when done."""
    return changelog_topic(job, "__seed__")


def savepoint_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of the savepoint file at ``path``: the savepoint's identity."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _SeedLog:
    """The seed topic as read: its claims in log order, and ``done`` if written."""

    claims: list[dict[str, Any]]
    done: dict[str, Any] | None

    @property
    def first(self) -> dict[str, Any] | None:
        return self.claims[0] if self.claims else None


async def _read_seed_log(bootstrap: str, topic: str) -> _SeedLog:
    from eddies.runtime.kafka.savepoint import read_topic_records

    claims: list[dict[str, Any]] = []
    done = None
    for key, value, _ in (await read_topic_records(bootstrap, topic)).get(0, []):
        if key is None or value is None:
            continue
        record = msgpack.unpackb(value, raw=False)
        if key == b"done":
            done = record
        elif key.startswith(b"claim:"):
            claims.append(record)
    return _SeedLog(claims, done)


async def _append(bootstrap: str, topic: str, key: bytes, record: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, msgpack.packb(record), key=key, partition=0))
    finally:
        await producer.stop()


def _other_state(job: Job, bootstrap: str, topic: str, log: _SeedLog, digest: str,
                 path: str | os.PathLike[str]) -> SavepointError:
    first = log.first
    held = ("checkpoints that did not come from a savepoint" if first is None else
            f"state started from another savepoint ({first['savepoint']}, sha256 "
            f"{first['digest'][:12]})")
    return SavepointError(
        f"job {job.name!r} already has checkpoints on {bootstrap} (topic {topic!r}): "
        f"{held}, not from savepoint {os.fspath(path)} (sha256 {digest[:12]}); a savepoint "
        "starts a new deployment: run the workers without --from-savepoint to resume the "
        "state the job has, or give the job a new name (ed.Job('...')) to start it from "
        "the savepoint, or delete its changelog topics and workers' state dirs first")


async def _seed(path: str | os.PathLike[str], job: Job, bootstrap: str,
                allow_non_restored_state: bool, offset: int, claimant: str | None,
                wait_s: float) -> dict[str, Any]:
    """Seed the job from the savepoint under the claim protocol (module docstring).

    ``claimant`` None: the command ``eddies savepoint restore``, which refuses a job already
    seeded or being seeded; else a worker, which runs on a job seeded from this savepoint."""
    plan = plan_job(job)
    if not plan.stateful_topics:
        raise SavepointError(f"job {job.name!r} keeps no keyed state on Kafka: there is "
                             "nothing to restore a savepoint into")
    partitions = await _partition_count(bootstrap, plan, job)
    sp = read_savepoint(path)
    digest = savepoint_digest(path)
    # Restored in memory before any claim: a savepoint that does not fit is refused
    # without leaving a claim behind.
    backend = InMemoryStateBackend()
    operators = {n.name: KeyedOperator(n.name, n.params["fn"], backend)
                 for n in plan.job.nodes if n.kind in KEYED_KINDS}
    dropped = restore_savepoint(path, job, backend, operators, {}, max_parallelism=1,
                                allow_non_restored_state=allow_non_restored_state,
                                where=f"job {job.name!r} on {bootstrap}",
                                key_group=_partitioner(plan, partitions))
    topic = seed_topic(job.name)
    await create_topics(bootstrap, {topic: 1})
    log = await _read_seed_log(bootstrap, topic)
    me = claimant or f"savepoint restore on {socket.gethostname()} pid {os.getpid()}"
    seeded = {"partitions": partitions, "records": 0, "dropped": dropped, "seeded": False}
    if log.first is not None and log.first["digest"] != digest:
        raise _other_state(job, bootstrap, plan.checkpoint_topic, log, digest, path)
    if log.done is not None:
        if claimant is None:
            raise SavepointError(
                f"job {job.name!r} already has checkpoints on {bootstrap} (topic "
                f"{plan.checkpoint_topic!r}, seeded from this savepoint): a savepoint starts "
                "a new deployment once; start its workers (eddies worker), or give the job a "
                "new name (ed.Job('...')) to seed another")
        return {**seeded, "records": log.done["records"]}
    if not any(c["claimant"] == me for c in log.claims):
        if log.first is None and await _has_records(bootstrap, plan.checkpoint_topic):
            raise _other_state(job, bootstrap, plan.checkpoint_topic, log, digest, path)
        await _append(bootstrap, topic, b"claim:" + me.encode(),
                      {"digest": digest, "claimant": me, "savepoint": os.fspath(path)})
        log = await _read_seed_log(bootstrap, topic)
    first = log.first
    assert first is not None  # our claim at least
    if first["digest"] != digest:
        raise _other_state(job, bootstrap, plan.checkpoint_topic, log, digest, path)
    if first["claimant"] != me:
        if claimant is None:
            raise SavepointError(
                f"job {job.name!r} is being seeded from this savepoint by "
                f"{first['claimant']} (topic {topic!r}): start its workers once that is done")
        deadline = time.monotonic() + wait_s
        while log.done is None:
            if time.monotonic() > deadline:
                raise SavepointError(
                    f"job {job.name!r} is being seeded from savepoint {os.fspath(path)} by "
                    f"{first['claimant']}, which has not finished within {wait_s:g} s: if "
                    "that worker stopped, start it again with the same command line (it "
                    "finishes the seed), or delete the job's changelog topics "
                    f"({job.name}-*-changelog) and start again")
            await asyncio.sleep(0.5)
            log = await _read_seed_log(bootstrap, topic)
        return {**seeded, "records": log.done["records"]}
    records = await _write_seed(sp, backend, job, plan, bootstrap, partitions, offset,
                                digest)
    await _append(bootstrap, topic, b"done",
                  {"digest": digest, "claimant": me, "records": records})
    return {**seeded, "records": records, "seeded": True}


async def _write_seed(sp: Any, backend: InMemoryStateBackend, job: Job, plan: Any,
                      bootstrap: str, partitions: int, offset: int, digest: str) -> int:
    """Write the restored ``backend`` as the first checkpoint; returns the delta count."""
    from aiokafka import AIOKafkaProducer

    topics = plan.changelog_topics()
    await create_topics(bootstrap, {**{t: partitions for t in topics.values()},
                                    plan.checkpoint_topic: partitions})
    # The same records on a second try (a winner restarted): the token is the digest's.
    token = int.from_bytes(bytes.fromhex(digest[:16]), "big") or 1
    headers = [token_header(token)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    records = 0
    try:
        sends = []
        for cf, topic in topics.items():
            for key, value in backend.iterate(cf):
                group = key_group_of(cf, key)
                if group is None:
                    continue
                sends.append(await producer.send(topic, value, key=key, partition=group,
                                                 headers=headers))
                records += 1
        for send in sends:
            await send  # every delta acknowledged before any marker
        watermarks = [wm for wm in sp.watermarks.values() if wm is not None]
        watermark = min(watermarks) if watermarks else MIN_TIME
        identity = job_identity(job)
        inputs = ({t: InputPosition(offset, watermark) for t in plan.stateful_topics}
                  if len(plan.stateful_topics) > 1 else None)
        marks = [await producer.send(
            plan.checkpoint_topic,
            encode_marker(Marker(token, offset, watermark, 1, identity=identity,
                                 inputs=inputs)),
            key=MARKER_KEY, partition=p, headers=headers) for p in range(partitions)]
        for send in marks:
            await send
    finally:
        await producer.stop()
    return records


def seed_kafka_job(path: str | os.PathLike[str], job: Job, bootstrap: str, *,
                   allow_non_restored_state: bool = False, offset: int = 0) -> dict[str, Any]:
    """Write the savepoint at ``path`` into Kafka job ``job``'s changelogs on the broker at
    ``bootstrap`` (``host:port``) as its first checkpoint; returns ``{"partitions",
    "records", "dropped"}``. A job already seeded, or being seeded, is refused. See the
    module docstring."""
    return asyncio.run(_seed(path, job, bootstrap, allow_non_restored_state, offset, None,
                             _SEED_WAIT_S))


def seed_if_new(path: str | os.PathLike[str], job: Job, bootstrap: str, claimant: str, *,
                allow_non_restored_state: bool = False,
                wait_s: float = _SEED_WAIT_S) -> dict[str, Any]:
    """``eddies worker --from-savepoint``: seed ``job`` from the savepoint at ``path``
    unless it already was (by this ``claimant`` or another worker, which it waits for);
    refuse a job that has other checkpoints. Returns ``{"partitions", "records",
    "dropped", "seeded"}`` (``seeded``: this call wrote the seed). See the module
    docstring."""
    return asyncio.run(_seed(path, job, bootstrap, allow_non_restored_state, 0, claimant,
                             wait_s))
