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
"""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import Any

from eddies.errors import ConfigError, SavepointError
from eddies.runtime.graph import KEYED_KINDS, Job
from eddies.runtime.identity import job_identity
from eddies.runtime.kafka.changelog import (
    MARKER_KEY,
    InputPosition,
    Marker,
    encode_marker,
    key_group_of,
    new_token,
    token_header,
)
from eddies.runtime.kafka.plan import plan_job
from eddies.runtime.kafka.topics import create_topics, topic_partitions
from eddies.runtime.keyed import KeyedOperator
from eddies.runtime.restore import restore_savepoint
from eddies.runtime.savepoint import read_savepoint
from eddies.runtime.watermarks import MIN_TIME
from eddies.state.keys import as_tuple, decode_prefixed, encode_key
from eddies.state.memory import InMemoryStateBackend

__all__ = ["seed_kafka_job"]


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


async def _seed(path: str | os.PathLike[str], job: Job, bootstrap: str,
                allow_non_restored_state: bool, offset: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    plan = plan_job(job)
    if not plan.stateful_topics:
        raise SavepointError(f"job {job.name!r} keeps no keyed state on Kafka: there is "
                             "nothing to restore a savepoint into")
    partitions = await _partition_count(bootstrap, plan, job)
    if await _has_records(bootstrap, plan.checkpoint_topic):
        raise SavepointError(
            f"job {job.name!r} already has checkpoints on {bootstrap} (topic "
            f"{plan.checkpoint_topic!r}): a savepoint starts a new deployment; give the job "
            "a new name (ed.Job('...')), or delete its changelog topics and workers' state "
            "dirs first")
    sp = read_savepoint(path)
    backend = InMemoryStateBackend()
    operators = {n.name: KeyedOperator(n.name, n.params["fn"], backend)
                 for n in plan.job.nodes if n.kind in KEYED_KINDS}
    dropped = restore_savepoint(path, job, backend, operators, {}, max_parallelism=1,
                                allow_non_restored_state=allow_non_restored_state,
                                where=f"job {job.name!r} on {bootstrap}",
                                key_group=_partitioner(plan, partitions))
    topics = plan.changelog_topics()
    await create_topics(bootstrap, {**{t: partitions for t in topics.values()},
                                    plan.checkpoint_topic: partitions})
    token = new_token()
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
    return {"partitions": partitions, "records": records, "dropped": dropped}


def seed_kafka_job(path: str | os.PathLike[str], job: Job, bootstrap: str, *,
                   allow_non_restored_state: bool = False, offset: int = 0) -> dict[str, Any]:
    """Write the savepoint at ``path`` into Kafka job ``job``'s changelogs on the broker at
    ``bootstrap`` (``host:port``) as its first checkpoint; returns ``{"partitions",
    "records", "dropped"}``. See the module docstring."""
    return asyncio.run(_seed(path, job, bootstrap, allow_non_restored_state, offset))
