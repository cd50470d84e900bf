"""``python -m benchmarks.kafka_bench``: one eddies worker vs a faust Table agent on Tansu.

Both consume pre-produced ``key,ts,amount`` JSON events from a 6-partition topic on a local
Tansu broker with the keyed running aggregate. Throughput is measured from the group's
committed offsets: from the first commit to the commit that reaches the end of the topic.
faust is measured on fewer events (it runs at a few thousand events/s), in the same run.
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

ROOT = Path(__file__).resolve().parents[1]


def make_events(path: Path, n: int, keys: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"key": f"user{rng.randrange(keys)}", "ts": i * 4,
                                "amount": rng.randint(1, 10_000) / 100}) + "\n")


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        total = 0
        for p in range(partitions):
            total += (await consumer.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await consumer.stop()


def measure(proc_args: list[str], env: dict[str, str], bootstrap: str, group: str, topic: str,
            n: int, timeout: float) -> float:
    proc = subprocess.Popen(proc_args, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        start = first = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = asyncio.run(committed(bootstrap, group, topic, 6))
            now = time.monotonic()
            if done and start is None:
                start, first = now, done
            if done >= n:
                if start is None or now == start:
                    raise RuntimeError("finished before a rate could be measured")
                return (done - first) / (now - start)
            time.sleep(0.25)
        raise TimeoutError(f"{proc_args[2:4]} did not finish {n} events in {timeout}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kafka_bench", description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--faust-n", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="eddies-kbench-"))
    events = work / "events.jsonl"
    make_events(events, args.n, args.keys)
    faust_events = work / "faust.jsonl"
    make_events(faust_events, args.faust_n, min(args.keys, args.faust_n), seed=2)
    rates: list[float] = []
    faust_rates: list[float] = []
    with tansu_broker() as bootstrap:
        asyncio.run(produce_file(bootstrap, events, "bench-in", "key", 6))
        asyncio.run(produce_file(bootstrap, faust_events, "faust-in", "key", 6))
        for run in range(args.runs):
            job = f"bench{run}"
            rates.append(measure(
                [sys.executable, "-m", "eddies.runtime.cli", "worker",
                 "benchmarks/kafka_jobs.py:job", "--broker", f"kafka://{bootstrap}",
                 "--state-dir", str(work / job), "--session-timeout", "6",
                 "--log-level", "WARNING"],
                {"BENCH_JOB": job, "BENCH_TOPIC": "bench-in"}, bootstrap, f"eddies-{job}",
                "bench-in", args.n, 900))
            print(f"eddies worker run {run + 1}: {rates[-1]:,.0f} events/s", flush=True)
            fjob = f"faust{run}"
            faust_rates.append(measure(
                [sys.executable, "benchmarks/kafka_jobs.py"],
                {"BENCH_JOB": fjob, "BENCH_TOPIC": "faust-in", "BENCH_BROKER": bootstrap,
                 "BENCH_DATADIR": str(work / fjob)}, bootstrap, fjob, "faust-in",
                args.faust_n, 900))
            print(f"faust Table agent run {run + 1}: {faust_rates[-1]:,.0f} events/s",
                  flush=True)
    result = {
        "events": args.n, "keys": args.keys, "runs": args.runs,
        "eddies_eps_min": min(rates), "eddies_eps_median": statistics.median(rates),
        "faust_events": args.faust_n, "faust_eps_min": min(faust_rates),
        "faust_eps_median": statistics.median(faust_rates),
        "ratio_median": statistics.median(rates) / statistics.median(faust_rates),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
