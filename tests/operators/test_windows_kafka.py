"""Tumbling windows with allowed lateness under Kafka workers: a rebalance moves windows that
have fired (and wait for their lateness) to another worker, which restores them from the
changelog, does not fire them again, and re-fires them when late events arrive."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust")
pytest.importorskip("aiokafka")

from eddies.runtime.kafka.commands import produce_file  # noqa: E402
from eddies.runtime.kafka.tansu import tansu_broker  # noqa: E402
from eddies.state import RocksDbStateBackend  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SIZE, LATENESS, FLUSH = 2_000, 2_000_000, 5_000_000

JOB = f'''
import os
import eddies as ed

job = ed.Job("kw")
counts = (job.source(ed.sources.kafka("kw-in", key="k"), timestamp="ts",
                     watermarks=ed.BoundedOutOfOrderness(1_000))
          .key_by("k").window(ed.Tumbling({SIZE}), allowed_lateness={LATENESS})
          .aggregate(ed.Count(), name="counts"))
counts.map(lambda r: {{**r, "id": f"{{r['key']}}@{{r['start']}}"}}).sink(
    ed.sinks.kafka("kw-out", key="id"))
'''


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with tansu_broker() as bootstrap:
        yield bootstrap


async def _read(bootstrap: str, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from eddies.runtime.kafka.topics import topic_partitions

    n = await topic_partitions(bootstrap, topic)
    if not n:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=300, max_records=50_000)
            for records in got.values():
                out.extend(json.loads(r.value) for r in records)
            done = True
            for tp in tps:
                high = consumer.highwater(tp)
                if high is None or await consumer.position(tp) < high:
                    done = False
            if done:
                return out
        raise TimeoutError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    def __init__(self, target: str, bootstrap: str, state_dir: Path, log: Path) -> None:
        self.state_dir = state_dir
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eddies.runtime.cli", "worker", target, "--broker",
             f"kafka://{bootstrap}", "--state-dir", str(state_dir), "--session-timeout", "6",
             "--checkpoint-ms", "300"],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=dict(os.environ))

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


def write(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_windows_move_between_workers_fire_once_and_refire_late(broker, tmp_path):
    rng = random.Random(11)
    first = [{"k": f"u{rng.randrange(300)}", "ts": i * 20 - rng.randint(0, 800)}
             for i in range(20_000)]
    second = [{"k": f"u{rng.randrange(300)}", "ts": 400_000 + i * 20 - rng.randint(0, 800)}
              for i in range(20_000)]
    late = rng.sample(second, 600)
    for e in late:  # late, within the lateness: fired windows re-fire
        e["ts"] = rng.randrange(0, 390_000)
    flush = [{"k": f"f{i}", "ts": FLUSH} for i in range(200)]  # every partition past the rest
    (tmp_path / "kw_job.py").write_text(JOB)
    target = f"{tmp_path / 'kw_job.py'}:job"
    asyncio.run(produce_file(broker, write(tmp_path / "1.jsonl", first), "kw-in", "k", 6))

    def outputs() -> list[Any]:
        return asyncio.run(_read(broker, "kw-out"))

    early = {(e["k"], e["ts"] - e["ts"] % SIZE) for e in first if e["ts"] < 350_000}
    workers = [Worker(target, broker, tmp_path / "a", tmp_path / "a.log")]
    try:
        wait_until(lambda: early <= {(r["key"], r["start"]) for r in outputs()}, 120,
                   "worker a to fire the early windows")
        workers.append(Worker(target, broker, tmp_path / "b", tmp_path / "b.log"))
        b = workers[1]
        wait_until(lambda: any(r["source"] == "changelog" for r in b.restores()), 120,
                   "worker b to take partitions from the changelog")
        asyncio.run(produce_file(broker, write(tmp_path / "2.jsonl", second + flush), "kw-in",
                                 "k", 6))
        expected = Counter((e["k"], e["ts"] - e["ts"] % SIZE) for e in first + second)

        def final() -> dict[tuple[str, int], int]:
            last = {}
            for r in outputs():
                last[(r["key"], r["start"])] = r["value"]
            return last

        wait_until(lambda: final() == expected, 180, "every window's last result to be its count")
        records = outputs()
        refired = Counter((r["key"], r["start"]) for r in records)
        assert any(n > 1 for n in refired.values()), "late events re-fired some windows"
        # Windows moved after firing do not fire again: a result repeats only where a late
        # event brought a key new to a window (its result at once, and when the watermark
        # moves on, as the key's own timer would have).
        seen = Counter((r["key"], r["start"], r["value"]) for r in records)
        repeated = {(k, start) for (k, start, _), n in seen.items() if n > 1}
        assert repeated <= {(e["k"], e["ts"] - e["ts"] % SIZE) for e in late}
        assert all(w.stop() == 0 for w in workers)
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
    # Past the lateness, windows and their marks are deleted: worker b (which owned only
    # what it took over) keeps just the flush windows, which have not fired.
    with RocksDbStateBackend(workers[1].state_dir / "state", read_only=True) as db:
        stored = list(db.iterate("counts.windows"))
        assert 0 < len(stored) <= len(flush)
        assert list(db.iterate("__timers__.counts")) == []
