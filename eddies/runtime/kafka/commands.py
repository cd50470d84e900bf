"""``eddies worker`` and ``eddies produce``: the Kafka side of the command line.

Importing this module imports neither faust nor aiokafka; the commands do, when they run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from eddies.runtime.options import inspector_options

__all__ = ["produce", "produce_file", "worker"]


@click.command()
@click.argument("target")
@click.option("--broker", required=True, help="kafka://HOST:PORT")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False),
              help="Local RocksDB state and worker files; one per worker.")
@click.option("--group", default=None, help="Consumer group (default eddies-<job>).")
@click.option("--checkpoint-interval", default=100_000, show_default=True, type=int,
              help="Events between checkpoints.")
@click.option("--from-savepoint", "from_savepoint", type=click.Path(dir_okay=False),
              default=None, help="Seed a new deployment from this savepoint (once, whichever "
                                 "worker comes first); then run as usual.")
@click.option("--allow-non-restored-state", is_flag=True,
              help="With --from-savepoint: drop saved states the job no longer has.")
@click.option("--checkpoint-ms", default=1_000, show_default=True, type=int,
              help="Longest time between checkpoints while events flow.")
@click.option("--session-timeout", default=10.0, show_default=True, type=float,
              help="Consumer group session timeout in seconds (how fast a dead worker is "
                   "noticed).")
@click.option("--max-in-flight-records", default=100_000, show_default=True, type=int,
              help="Produced records awaiting acks before the worker pauses fetching "
                   "(backpressure); it resumes when acks bring them to half.")
@click.option("--max-in-flight-bytes", default=32 << 20, show_default=True, type=int,
              help="The same bound in bytes of produced record batches.")
@click.option("--max-fetch-bytes", default=64 << 20, show_default=True, type=int,
              help="Largest fetch response (at most 4 MiB per partition): bounds records "
                   "fetched ahead of processing.")
@click.option("--standbys", default=0, show_default=True, type=int,
              help="Other workers that keep each partition's state warm by tailing its "
                   "changelog, so the one taking it over replays only the tail.")
@inspector_options
@click.option("--progress-every", default=5.0, show_default=True, type=float,
              help="Seconds between progress lines on stderr (0: none).")
@click.option("--log-level", default="INFO", show_default=True,
              help="Level of eddies' own log lines; faust and aiokafka log warnings only, "
                   "except at DEBUG (which also prints an error's whole traceback).")
def worker(target: str, broker: str, state_dir: str, group: str | None,
           checkpoint_interval: int, from_savepoint: str | None,
           allow_non_restored_state: bool, checkpoint_ms: int, session_timeout: float,
           standbys: int,
           max_in_flight_records: int, max_in_flight_bytes: int, max_fetch_bytes: int,
           metrics_port: int | None, bind: str, token: str | None, progress_every: float,
           log_level: str) -> None:
    """Run TARGET (file.py:job or module:job) as a Kafka worker; start more to scale out.

    SIGTERM or Ctrl-C (SIGINT) stops the worker after its current round: a final checkpoint,
    its offsets committed (when it holds restored partitions; the line says which), then it
    leaves the group so the others take its partitions at once; it exits 0 with one line. A second signal exits at once (130 or 143), from the last
    checkpoint. An error exits 1 with one error: line.
    """
    from eddies.runtime.cli import load_target, report_error

    level = log_level.upper()
    logging.basicConfig(level="DEBUG" if level == "DEBUG" else "WARNING",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("eddies").setLevel(level)
    if level != "DEBUG":  # faust's services log under the module that subclasses them
        logging.getLogger("eddies.runtime.kafka.faust_io").setLevel("WARNING")
    try:
        from eddies.runtime.kafka.flow import FlowLimits
        from eddies.runtime.kafka.worker import KafkaWorker
    except ImportError as exc:
        click.echo(f"error: the Kafka worker needs the kafka extra: pip install 'eddies[kafka]' "
                   f"({exc})", err=True)
        sys.exit(1)
    try:
        job = load_target(target)
        if from_savepoint is not None:
            from eddies.runtime.kafka.seed import seed_if_new

            seeded = seed_if_new(from_savepoint, job, broker.removeprefix("kafka://"),
                                 f"{socket.gethostname()}:{Path(state_dir).resolve()}",
                                 allow_non_restored_state=allow_non_restored_state)
            click.echo(f"{job.name}: {'seeded' if seeded['seeded'] else 'already started'} "
                       f"from savepoint {from_savepoint} ({seeded['partitions']} partitions)",
                       err=True)
        progress = _ProgressLines(progress_every)
        kw = KafkaWorker(job, broker, state_dir, group=group,
                         checkpoint_interval=checkpoint_interval, checkpoint_ms=checkpoint_ms,
                         session_timeout=session_timeout, standbys=standbys,
                         metrics_port=metrics_port, bind=bind,
                         flow=FlowLimits(max_in_flight_records, max_in_flight_bytes,
                                         max_fetch_bytes),
                         token=token, on_progress=progress)
        progress.line = kw.progress_line
        kw.run()
    except Exception as exc:
        report_error(exc, debug=level == "DEBUG")
        return
    if kw.stopped_by is not None:
        left = ("left the group" if kw.left_group
                else f"did not leave the group within {kw.stop_timeout:g}s, so its partitions "
                     "move after the session timeout")
        how = (f"at a final checkpoint (offsets committed, {left})" if kw.final_checkpoint
               else "holding no restored partition, so with no final checkpoint (nothing to "
                    f"checkpoint; its partitions resume from their last checkpoint; {left})")
        click.echo(f"{job.name}: stopped by {signal.Signals(kw.stopped_by).name} {how}: "
                   f"{kw.executor.stats.summary()}", err=True)
    if not kw.left_group:
        # faust's consumer thread is still running and would keep the process alive.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class _ProgressLines:
    """A ``progress:`` line on stderr every ``every`` seconds (plain text, never escapes):
    ``line()`` (the worker's, with events/s and consumer lag), else the stats' summary."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.line: Any = None
        self._last = time.monotonic()

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        if self.every > 0 and now - self._last >= self.every:
            self._last = now
            text = self.line() if self.line is not None else stats.summary()
            click.echo(f"progress: {text}", err=True)


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
