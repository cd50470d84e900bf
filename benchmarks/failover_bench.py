"""``python -m benchmarks.failover_bench``: failover time of two Kafka workers, with and
without a standby replica.

Each round starts a local Tansu broker, produces one event per key (1M keys by default, 6
partitions), and runs two ``eddies worker`` processes of the counting job below (RocksDB
state, changelog, checkpoints) until every event is processed; with ``--standbys 1`` the
first worker keeps the second one's partitions warm. Then the second worker is killed with
SIGKILL, and one probe event per lost partition is produced at once, on a key whose state it
held. The failover time is from the kill to the first probe processed on the survivor (the
job stamps the wall clock into its output), split into:

- **detection**: from the kill until the survivor begins restoring the lost partitions
  (``restores.jsonl``: ``at``): the broker waits for the session timeout before it drops the
  dead member, then the group rebalances (Tansu holds a join for about half the session
  timeout);
- **restore**: from there until the last lost partition is restored (``at`` + ``seconds``),
  from the standby copy (the tail only) or from the whole changelog;
- **first event**: the rest, until the first probe is processed.

Rounds alternate without and with the standby; min and median of each over ``--rounds``.
Every probe's count is checked against the events produced (the state was restored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import eddies as ed

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6


class Count(ed.KeyedProcessFunction):
    """Events per key; a probe event emits its key's count and the wall clock."""

    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        n = self.n.get() + 1
        self.n.set(n)
        if event.get("probe"):
            yield {"k": ctx.key, "n": n, "probe": event["probe"], "at": time.time(),
                   "pid": os.getpid()}


job = ed.Job(os.environ.get("FAILOVER_JOB", "failover"))
(job.source(ed.sources.kafka(os.environ.get("FAILOVER_IN", "failover-in"), key="k"),
            timestamp="ts", watermarks=ed.BoundedOutOfOrderness(0))
    .key_by("k")
    .process(Count())
    .sink(ed.sinks.kafka(os.environ.get("FAILOVER_OUT", "failover-out"), key="k")))


def partition_of(key: str) -> int:
    """The partition ``eddies produce`` (Kafka's default partitioner) puts ``key`` in."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(PARTITIONS))
    return DefaultPartitioner()(key.encode(), parts, parts)


def probe_keys(keys: int) -> dict[int, str]:
    """One existing key per partition."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < PARTITIONS:
        out.setdefault(partition_of(f"k{i}"), f"k{i}")
        i += 1
    return out


def write_events(path: Path, keys: int) -> None:
    with open(path, "w") as f:
        for i in range(keys):
            f.write(f'{{"k":"k{i}","ts":{i}}}\n')


async def produce_probes(bootstrap: str, topic: str, keys: dict[int, str], probe: int,
                         ts: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for p, key in keys.items():
            value = json.dumps({"k": key, "ts": ts, "probe": probe}).encode()
            await producer.send_and_wait(topic, value, key=key.encode(), partition=p)
    finally:
        await producer.stop()


async def read_probes(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        while True:
            got = await consumer.getmany(timeout_ms=200)
            for records in got.values():
                out.extend(json.loads(r.value) for r in records)
            done = True
            for tp in tps:
                end = consumer.highwater(tp)
                if end is None or await consumer.position(tp) < end:
                    done = False
            if done:
                return out
    finally:
        await consumer.stop()


class Worker:
    def __init__(self, bootstrap: str, state_dir: Path, env: dict[str, str],
                 standbys: int, session_timeout: float) -> None:
        self.state_dir = state_dir
        self.log = open(state_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eddies.runtime.cli", "worker", "benchmarks.failover_bench:job",
             "--broker", f"kafka://{bootstrap}", "--state-dir", str(state_dir),
             "--session-timeout", str(session_timeout), "--standbys", str(standbys),
             "--progress-every", "0"],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def restores(self) -> list[dict[str, Any]]:
        path = self.state_dir / "restores.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def takeovers(self) -> list[dict[str, Any]]:
        return [r for r in self.restores() if "source" in r]

    def warm(self) -> set[int]:
        return {r["partition"] for r in self.restores() if r.get("standby") == "caught_up"}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def one_round(keys: int, events: Path, standbys: int, session_timeout: float,
              work: Path) -> dict[str, float]:
    from eddies.runtime.kafka.commands import produce_file
    from eddies.runtime.kafka.tansu import tansu_broker

    probes = probe_keys(keys)
    env = {"FAILOVER_JOB": "failover", "FAILOVER_IN": "failover-in",
           "FAILOVER_OUT": "failover-out"}
    with tansu_broker() as bootstrap:
        asyncio.run(produce_file(bootstrap, events, "failover-in", "k", PARTITIONS))
        a = Worker(bootstrap, work / "a", env, standbys, session_timeout)
        b = None
        try:
            wait_until(lambda: len(a.takeovers()) == PARTITIONS, 120, "worker a to join")
            b = Worker(bootstrap, work / "b", env, standbys, session_timeout)
            wait_until(lambda: len(b.takeovers()) == PARTITIONS // 2, 120, "worker b to join")
            lost = {r["partition"] for r in b.takeovers()}
            asyncio.run(produce_probes(bootstrap, "failover-in", probes, 1, keys))
            wait_until(lambda: len(asyncio.run(read_probes(bootstrap, "failover-out")))
                       >= PARTITIONS, 900, "every event processed")
            if standbys:
                wait_until(lambda: lost <= a.warm(), 600, "the standby copies to catch up")
            time.sleep(3)  # steady state: the last checkpoints written and tailed
            before = len(a.takeovers())
            b.proc.send_signal(signal.SIGKILL)
            killed = time.time()
            b.proc.wait(10)
            asyncio.run(produce_probes(bootstrap, "failover-in",
                                       {p: probes[p] for p in sorted(lost)}, 2, keys + 1))
            found: list[dict[str, Any]] = []

            def taken_over() -> bool:
                found[:] = [r for r in asyncio.run(read_probes(bootstrap, "failover-out"))
                            if r["probe"] == 2]
                return len(found) == len(lost)

            wait_until(taken_over, 900, "the survivor to process the lost partitions' probes")
            for r in found:
                if r["n"] != 3:  # the key's event, probe 1 and probe 2
                    raise RuntimeError(f"probe of {r['k']} counted {r['n']}, expected 3: the "
                                       "restored state is wrong")
            restores = [r for r in a.takeovers()[before:] if r["partition"] in lost]
            sources = {r["source"] for r in restores}
            first = min(r["at"] for r in found) - killed
            began = min(r["at"] for r in restores) - killed
            # Restores read their markers together, so each one's seconds overlap the others'.
            restore = max(r["at"] + r["seconds"] for r in restores) - killed - began
            return {"failover": first, "detection": began, "restore": restore,
                    "first_event": first - began - restore,
                    "replayed": sum(r["records"] for r in restores),
                    "source": ",".join(sorted(sources))}  # type: ignore[dict-item]
        finally:
            a.stop()
            if b is not None:
                b.stop(signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--session-timeout", type=float, default=6.0)
    args = ap.parse_args(argv)
    results: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        events = Path(tmp) / "events.jsonl"
        write_events(events, args.keys)
        for i in range(args.rounds):
            for standbys in (0, 1):
                work = Path(tmp) / f"r{i}-s{standbys}"
                work.mkdir()
                r = one_round(args.keys, events, standbys, args.session_timeout, work)
                results[standbys].append(r)
                print(f"round {i + 1} standbys={standbys}: failover {r['failover']:.2f}s "
                      f"(detection {r['detection']:.2f}s, restore {r['restore']:.2f}s from "
                      f"{r['source']}, {r['replayed']:,} records, first event "
                      f"{r['first_event']:.2f}s)", flush=True)
    print(f"\n{args.keys:,} keys, {PARTITIONS} partitions, session timeout "
          f"{args.session_timeout:g}s, min / median of {args.rounds}:")
    for standbys, rows in results.items():
        line = ", ".join(
            f"{name} {min(r[name] for r in rows):.2f}/"
            f"{statistics.median(r[name] for r in rows):.2f}s"
            for name in ("failover", "detection", "restore", "first_event"))
        print(f"  {'with' if standbys else 'without'} a standby: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
