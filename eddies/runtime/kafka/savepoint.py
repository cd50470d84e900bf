"""A savepoint of a Kafka job from its changelogs: ``eddies savepoint create --broker
kafka://HOST:PORT --job NAME OUT``.

It reads the job's checkpoint topic (``<job>-__checkpoint__-changelog``) to its end, takes
the job's identity from the last marker, and replays every state's changelog
(``<job>-<state>-changelog``, the operators' timer topics too) up to the committed
checkpoints, exactly as a worker restoring a partition does (``changelog.py``): deltas of a
checkpoint without a marker are left out. The result is an ordinary savepoint file
(``eddies.runtime.savepoint``) whose key groups are the Kafka partitions
(``max_parallelism`` None), so restoring it recomputes them for the target, the local runner
for instance. The job's workers may be running: the savepoint holds the checkpoints
committed when each topic was read.

Input positions are Kafka offsets, which mean nothing to another reader, so the savepoint
has none (``sources`` empty): a job restored from it reads its sources from where its own
positions say, or from the start. Each operator's watermark is the lowest of the
partitions' last markers (every partition had reached it). The expiry index is not read: a
restore writes it again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eddies.errors import SavepointError
from eddies.runtime.identity import state_versions
from eddies.runtime.kafka.changelog import MarkerLog, apply_deltas
from eddies.runtime.kafka.topics import changelog_topic, checkpoint_topic, topic_partitions
from eddies.runtime.savepoint import (
    FORMAT_VERSION,
    Savepoint,
    write_savepoint_file,
)
from eddies.runtime.timers import timers_cf
from eddies.state.backend import Batch
from eddies.state.keys import KEY_LAYOUT_VERSION
from eddies.state.memory import InMemoryStateBackend

__all__ = ["create_kafka_savepoint", "read_topic_records"]

_READ_TIMEOUT_S = 60
"""How long reading one topic to its end may take."""


async def read_topic_records(bootstrap: str, topic: str) -> dict[int, list[tuple[Any, Any, Any]]]:
    """Every record of ``topic`` as (key, value, headers), per partition; {} if no topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    n = await topic_partitions(bootstrap, topic)
    if not n:
        return {}
    # read_committed: markers written in an exactly-once sink's transaction count only
    # once it commits (an aborted one's checkpoint never happened).
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[Any, Any, Any]]] = {p: [] for p in range(n)}
        deadline = time.monotonic() + _READ_TIMEOUT_S
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return out
            if time.monotonic() > deadline:
                raise SavepointError(
                    f"could not read topic {topic!r} to its end within {_READ_TIMEOUT_S} s "
                    "(a transaction left open by a stopped exactly-once worker holds it "
                    "back): start the job's workers so they settle it, or stop them with "
                    "SIGTERM, then take the savepoint again")
            got = await consumer.getmany(timeout_ms=300, max_records=50_000)
            for tp, records in got.items():
                out[tp.partition].extend((r.key, r.value, r.headers) for r in records)
    finally:
        await consumer.stop()


async def _collect(bootstrap: str, job: str) -> tuple[dict[str, Any], dict[str, int],
                                                       InMemoryStateBackend]:
    topic = checkpoint_topic(job)
    logs: dict[int, MarkerLog] = {}
    for p, records in (await read_topic_records(bootstrap, topic)).items():
        log = logs[p] = MarkerLog(f"topic {topic!r} partition {p}")
        for _, value, _ in records:
            if value is not None:
                log.add(value)
    lasts = [log.last for log in logs.values() if log.last is not None]
    identity = next((m.identity for m in reversed(lasts) if m.identity is not None), None)
    if identity is None:
        raise SavepointError(
            f"job {job!r} has no committed checkpoint with a job identity on this broker "
            f"(topic {topic!r} is missing, empty, or written before identities): run its "
            "workers until they checkpoint, and check the job name (ed.Job('...'))")
    backend = InMemoryStateBackend()
    for op in identity["operators"]:
        for cf in [name for name, _ in op["states"]] + [timers_cf(op["name"])]:
            for p, records in (await read_topic_records(bootstrap, changelog_topic(job, cf))).items():
                markers = logs.get(p)
                if markers is None or markers.last is None:
                    continue
                batch = Batch()
                apply_deltas(records, cf, markers.committed, batch)
                backend.write(batch)
    floor = min((m.watermark for m in lasts), default=None)
    watermarks = {} if floor is None else {op["name"]: floor for op in identity["operators"]}
    return identity, watermarks, backend


def create_kafka_savepoint(bootstrap: str, job: str, out: str | os.PathLike[str]) -> Savepoint:
    """Write a savepoint of Kafka job ``job``'s committed checkpoints (read from the broker
    at ``bootstrap``, ``host:port``) to ``out``; returns it opened."""
    identity, watermarks, backend = asyncio.run(_collect(bootstrap, job))
    header = {"format": FORMAT_VERSION, "key_layout": KEY_LAYOUT_VERSION, "job": job,
              "max_parallelism": None, "identity": identity, "watermarks": watermarks,
              "sources": {}, "meta": None}
    sections: list[tuple[str, str, str | None, str | None, int, Iterable[Any]]] = []
    for op in identity["operators"]:
        versions = state_versions(op)
        for name, kind in op["states"]:
            sections.append(("state", op["name"], name, kind, versions[name],
                             list(backend.iterate(name))))
        sections.append(("timers", op["name"], None, None, 0,
                         [k for k, _ in backend.iterate(timers_cf(op["name"]))]))
    return write_savepoint_file(Path(out), header, sections)
