"""Real Kafka-protocol brokers on 127.0.0.1 for the session, and worker helpers.

``kafka_broker`` is Tansu (every Kafka test); ``txn_broker`` is noida-db, for the tests that
need broker transactions, which Tansu does not implement (exactly-once sinks).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust")
pytest.importorskip("aiokafka")

from eddies.runtime.kafka.commands import produce_file  # noqa: E402
from eddies.runtime.kafka.tansu import broker_process, free_port, tansu_broker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[str]:
    with tansu_broker() as bootstrap:
        yield bootstrap


@contextlib.contextmanager
def noida_broker(ready_timeout: float = 15.0) -> Iterator[str]:
    """noida-db's Kafka service alone on a free 127.0.0.1 port, its data in a temporary dir."""
    noida = pytest.importorskip("noida_db", reason="the transactions broker: pip install noida-db")
    binary = importlib.resources.files(noida).joinpath("noida-db")
    os.chmod(str(binary), 0o755)  # wheels may drop the exec bit
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="noida-") as data, broker_process(
        "noida-db",
        [str(binary), "start", "--only", "kafka", "--kafka-port", str(port),
         "--host", "127.0.0.1", "--data-dir", str(Path(data) / "db")],
        port, log_dir=data, ready_timeout=ready_timeout,
    ) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def txn_broker() -> Iterator[str]:
    """A broker whose transactions work (read_committed hides aborted and open ones)."""
    with noida_broker() as bootstrap:
        yield bootstrap


def produce(bootstrap: str, path: Path, topic: str, key: str | None, partitions: int = 6) -> int:
    return asyncio.run(produce_file(bootstrap, path, topic, key, partitions))


async def read_topic_async(bootstrap: str, topic: str, isolation: str = "read_uncommitted",
                           timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` a consumer with ``isolation`` sees now, decoded from JSON: to
    the high watermark, or the last stable offset under read_committed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from eddies.runtime.kafka.topics import topic_partitions
    from eddies.runtime.kafka.transactions import end_offset

    n = await topic_partitions(bootstrap, topic)
    if not n:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level=isolation, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=300, max_records=50_000)
            for records in got.values():
                out.extend(json.loads(r.value) for r in records)
            done = True
            for tp in tps:
                end = end_offset(consumer, tp, isolation == "read_committed")
                if end is None or await consumer.position(tp) < end:
                    done = False
            if done:
                return out
        raise TimeoutError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    return asyncio.run(read_topic_async(bootstrap, topic))


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    """`eddies worker` in a subprocess."""

    def __init__(self, target: str, bootstrap: str, state_dir: Path, env: dict[str, str],
                 log: Path, *extra: str, crash_after_deltas: int | None = None) -> None:
        self.log = log
        # crash_after_deltas=N: the worker exits with code 17 once checkpoint N's deltas are
        # acknowledged, before its markers (crash_worker.py).
        cli = (["-m", "eddies.runtime.cli"] if crash_after_deltas is None
               else [str(ROOT / "tests" / "kafka" / "crash_worker.py"), str(crash_after_deltas)])
        cmd = [sys.executable, *cli, "worker", target,
               "--broker", f"kafka://{bootstrap}", "--state-dir", str(state_dir),
               "--session-timeout", "6", "--checkpoint-ms", "300", *extra]
        self.state_dir = state_dir
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT,
                                     env={**os.environ, **env})

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def restores(self) -> list[dict[str, Any]]:
        path = self.state_dir / "restores.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(target: str, bootstrap: str, name: str, env: dict[str, str] | None = None,
              *extra: str, crash_after_deltas: int | None = None) -> Worker:
        w = Worker(target, bootstrap, tmp_path / name, env or {}, tmp_path / f"{name}.log",
                   *extra, crash_after_deltas=crash_after_deltas)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
