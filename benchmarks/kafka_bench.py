"""``python -m benchmarks.kafka_bench``: one eddies worker vs a bare consume loop and a faust
Table agent, on the same pre-produced topic of a local Tansu broker, in one run.

- **eddies worker**: ``eddies worker`` with the keyed running aggregate of
  ``benchmarks/kafka_jobs.py`` (RocksDB state, changelog, checkpoints, default options).
  Throughput comes from the group's committed offsets, polled every 50 ms: from the first
  commit to the last one made while events flowed (startup and the first rebalance left
  out). Also printed: to the commit that covers the end of the topic, which comes when the
  checkpoint timer (``--checkpoint-ms``, 1 s) fires after the input ran dry, so that figure
  counts up to a second of idling.
- **bare loop**: what the client library delivers: an aiokafka consumer assigned every
  partition, ``getmany`` and ``orjson.loads`` per value, nothing else; from its first batch to
  the last record.
- **local runner**: the same job under ``run_local`` (RocksDB) over the same events from a
  JSONL file: the keyed path without Kafka, for reference.
- **faust**: the same aggregate as a faust agent over a faust Table, on fewer events (it runs
  at a few thousand events/s).

Every measurement runs in a process of its own; each round runs them in turn, so they see the
same machine load. The ratio is eddies' median over the bare loop's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eddies.runtime.kafka.commands import produce_file
from eddies.runtime.kafka.tansu import tansu_broker
from eddies.runtime.kafka.topics import topic_partitions

ROOT = Path(__file__).resolve().parents[1]


def make_events(path: Path, n: int, keys: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"key": f"user{rng.randrange(keys)}", "ts": i * 4,
                                "amount": rng.randint(1, 10_000) / 100}) + "\n")


async def watch_commits(bootstrap: str, group: str, topic: str, n: int, timeout: float,
                        every: float = 0.05) -> list[tuple[float, int]]:
    """(time, records committed) each time the group's committed offsets on ``topic`` move,
    polled every ``every`` seconds through one admin client (one request a poll), until they
    reach ``n``."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    # Partitions named: Tansu drops the connection when asked for every partition of a group.
    tps = [TopicPartition(topic, p) for p in range(await topic_partitions(bootstrap, topic) or 0)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        seen: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            now = time.monotonic()
            done = sum(max(0, o.offset) for o in offsets.values())
            if done and (not seen or done != seen[-1][1]):
                seen.append((now, done))
                if done >= n:
                    return seen
            await asyncio.sleep(every)
        raise TimeoutError(f"group {group} did not commit {n} records of {topic} in {timeout}s")
    finally:
        await admin.close()


def rates(commits: list[tuple[float, int]]) -> tuple[float, float]:
    """(steady, to the end) events/s from the commits a run made, first seen at the times
    given. Steady: from the first commit to the last one before the end of the topic, both
    made by checkpoints while events flowed. To the end: from the first commit to the one
    that covers the end, which waits for the checkpoint timer (--checkpoint-ms) once the
    input runs dry. With fewer than three commits both are the latter.

    >>> rates([(10.0, 5), (11.0, 105), (12.0, 205), (13.5, 250)])
    (100.0, 70.0)
    """
    (t0, first), (end, last) = commits[0], commits[-1]
    if end == t0:
        raise RuntimeError("finished before a rate could be measured")
    to_end = (last - first) / (end - t0)
    if len(commits) < 3:
        return to_end, to_end
    t1, before = commits[-2]
    return (before - first) / (t1 - t0), to_end


async def _bare_loop(bootstrap: str, topic: str, n: int) -> float:
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(topic, p) for p in range(await topic_partitions(bootstrap, topic) or 0)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = orjson.loads
        seen = 0
        start = None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000)
            if start is None and batch:
                start = time.perf_counter()
            for records in batch.values():
                for record in records:
                    loads(record.value)
                seen += len(records)
        assert start is not None
        return seen / (time.perf_counter() - start)
    finally:
        await consumer.stop()


def bare_loop(bootstrap: str, topic: str, n: int, timeout: float) -> float:
    """events/s of the bare consume loop, in a process of its own."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.kafka_bench", "--bare-loop",
                          bootstrap, topic, str(n)], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(proc_args: list[str], env: dict[str, str], bootstrap: str, group: str, topic: str,
            n: int, timeout: float) -> tuple[float, float]:
    """:func:`rates` of a worker process, from its group's commits."""
    proc = subprocess.Popen(proc_args, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return rates(asyncio.run(watch_commits(bootstrap, group, topic, n, timeout)))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kafka_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--faust-n", type=int, default=20_000, help="events for faust (0: skip)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--bare-loop", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "N"),
                    help=argparse.SUPPRESS)  # one bare-loop measurement (in its own process)
    args = ap.parse_args(argv)
    if args.bare_loop:
        bootstrap, topic, n = args.bare_loop
        print(asyncio.run(_bare_loop(bootstrap, topic, int(n))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="eddies-kbench-"))
    events = work / "events.jsonl"
    make_events(events, args.n, args.keys)
    faust_events = work / "faust.jsonl"
    make_events(faust_events, args.faust_n, max(1, min(args.keys, args.faust_n)), seed=2)
    eddies: list[tuple[float, float]] = []  # (steady, to the end), see rates()
    bare: list[float] = []
    local: list[float] = []
    faust: list[tuple[float, float]] = []
    with tansu_broker() as bootstrap:
        asyncio.run(produce_file(bootstrap, events, "bench-in", "key", 6))
        if args.faust_n:
            asyncio.run(produce_file(bootstrap, faust_events, "faust-in", "key", 6))
        for run in range(args.runs):
            out = subprocess.run([sys.executable, "benchmarks/kafka_jobs.py", "--local",
                                  str(events), str(work / f"local{run}")], cwd=ROOT,
                                 capture_output=True, text=True, timeout=900, check=True)
            local.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1}: local runner {local[-1]:,.0f} events/s", flush=True)
            bare.append(bare_loop(bootstrap, "bench-in", args.n, 900))
            print(f"run {run + 1}: bare loop {bare[-1]:,.0f} events/s", flush=True)
            job = f"bench{run}"
            eddies.append(measure(
                [sys.executable, "-m", "eddies.runtime.cli", "worker",
                 "benchmarks/kafka_jobs.py:job", "--broker", f"kafka://{bootstrap}",
                 "--state-dir", str(work / job), "--session-timeout", "6",
                 "--log-level", "WARNING"],
                {"BENCH_JOB": job, "BENCH_TOPIC": "bench-in"}, bootstrap, f"eddies-{job}",
                "bench-in", args.n, 900))
            steady, to_end = eddies[-1]
            print(f"run {run + 1}: eddies worker {steady:,.0f} events/s "
                  f"({steady / bare[-1]:.2f} of the bare loop); to the end-of-topic commit "
                  f"{to_end:,.0f} ({to_end / bare[-1]:.2f})", flush=True)
            if args.faust_n:
                fjob = f"faust{run}"
                faust.append(measure(
                    [sys.executable, "benchmarks/kafka_jobs.py"],
                    {"BENCH_JOB": fjob, "BENCH_TOPIC": "faust-in", "BENCH_BROKER": bootstrap,
                     "BENCH_DATADIR": str(work / fjob)}, bootstrap, fjob, "faust-in",
                    args.faust_n, 900))
                print(f"run {run + 1}: faust Table agent {faust[-1][0]:,.0f} events/s; to the "
                      f"end-of-topic commit {faust[-1][1]:,.0f}", flush=True)
    median = statistics.median
    steady_eps, end_eps = [s for s, _ in eddies], [e for _, e in eddies]
    result: dict[str, float | int] = {
        "events": args.n, "keys": args.keys, "runs": args.runs,
        "bare_eps_min": min(bare), "bare_eps_median": median(bare),
        "eddies_eps_min": min(steady_eps), "eddies_eps_median": median(steady_eps),
        "eddies_over_bare": median(steady_eps) / median(bare),
        "eddies_to_end_eps_min": min(end_eps), "eddies_to_end_eps_median": median(end_eps),
        "eddies_to_end_over_bare": median(end_eps) / median(bare),
        "local_eps_min": min(local), "local_eps_median": median(local),
        "eddies_over_local": median(steady_eps) / median(local),
    }
    if faust:
        faust_eps = [s for s, _ in faust]
        result.update({
            "faust_events": args.faust_n, "faust_eps_min": min(faust_eps),
            "faust_eps_median": median(faust_eps),
            "faust_to_end_eps_median": median([e for _, e in faust]),
            "eddies_over_faust": median(steady_eps) / median(faust_eps),
        })
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
