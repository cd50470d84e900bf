"""``eddies worker`` and ``eddies produce``: the Kafka side of the command line.

Importing this module imports neither faust nor aiokafka; the commands do, when they run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import orjson

from eddies.errors import EddiesError
from eddies.runtime.options import inspector_options

__all__ = ["produce", "produce_file", "worker"]


@click.command()
@click.argument("target")
@click.option("--broker", required=True, help="kafka://HOST:PORT")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False),
              help="Local RocksDB state and worker files; one per worker.")
@click.option("--group", default=None, help="Consumer group (default eddies-<job>).")
@click.option("--checkpoint-interval", default=20_000, show_default=True, type=int,
              help="Events between checkpoints.")
@click.option("--checkpoint-ms", default=1_000, show_default=True, type=int,
              help="Longest time between checkpoints while events flow.")
@click.option("--session-timeout", default=10.0, show_default=True, type=float,
              help="Consumer group session timeout in seconds (how fast a dead worker is "
                   "noticed).")
@inspector_options
@click.option("--log-level", default="INFO", show_default=True)
def worker(target: str, broker: str, state_dir: str, group: str | None,
           checkpoint_interval: int, checkpoint_ms: int, session_timeout: float,
           metrics_port: int | None, bind: str, token: str | None, log_level: str) -> None:
    """Run TARGET (file.py:job or module:job) as a Kafka worker; start more to scale out."""
    from eddies.runtime.loader import load_job

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from eddies.runtime.kafka.worker import KafkaWorker
    except ImportError as exc:
        click.echo(f"error: the Kafka worker needs the kafka extra: pip install 'eddies[kafka]' "
                   f"({exc})", err=True)
        sys.exit(1)
    try:
        job = load_job(target)
        KafkaWorker(job, broker, state_dir, group=group, checkpoint_interval=checkpoint_interval,
                    checkpoint_ms=checkpoint_ms, session_timeout=session_timeout,
                    metrics_port=metrics_port, bind=bind, token=token).run()
    except EddiesError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


async def produce_file(bootstrap: str, path: Path, topic: str, key: str | None,
                       partitions: int) -> int:
    """Produce a JSONL file's records to ``topic`` (created with ``partitions`` if missing),
    keyed by field ``key`` with Kafka's default partitioner; returns the count."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from eddies.runtime.kafka.topics import create_topics, topic_partitions

    if await topic_partitions(bootstrap, topic) is None:
        await create_topics(bootstrap, {topic: partitions})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=1 << 20)
    await producer.start()
    count = 0
    try:
        parts = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        pending: dict[int, list[tuple[bytes | None, bytes]]] = {}
        rr = 0
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                k = None
                if key is not None:
                    k = str(orjson.loads(line)[key]).encode()
                    p = partitioner(k, parts, parts)
                else:
                    p = parts[rr % len(parts)]
                    rr += 1
                pending.setdefault(p, []).append((k, line.rstrip(b"\r\n")))
                count += 1
        futures = []
        for p, items in pending.items():
            batch = producer.create_batch()
            for k, v in items:
                if batch.append(key=k, value=v, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=k, value=v, timestamp=None)
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--broker", required=True, help="kafka://HOST:PORT")
@click.option("--topic", required=True)
@click.option("--key", default=None, help="Field whose value is the record key.")
@click.option("--partitions", default=6, show_default=True, type=int,
              help="Partitions if the topic has to be created.")
def produce(file: str, broker: str, topic: str, key: str | None, partitions: int) -> None:
    """Produce the JSON lines of FILE to a topic (a helper for demos and tests)."""
    n = asyncio.run(produce_file(broker.removeprefix("kafka://"), Path(file), topic, key,
                                 partitions))
    click.echo(f"produced {n:,} records to {topic}", err=True)
