"""Jobs for the Kafka benchmark: the keyed running aggregate, for eddies and for faust."""

from __future__ import annotations

import os

import eddies as ed

TOPIC = os.environ.get("BENCH_TOPIC", "bench-in")


class RunningTotals(ed.KeyedProcessFunction):
    totals = ed.ValueState("totals")

    def on_event(self, event, ctx):
        acc = self.totals.get()
        if acc is None:
            self.totals.set([1, event["amount"]])
        else:
            acc[0] += 1
            acc[1] += event["amount"]
            self.totals.set(acc)


job = ed.Job(os.environ.get("BENCH_JOB", "bench"))
(job.source(ed.sources.kafka(TOPIC, key="key"), timestamp="ts",
            watermarks=ed.BoundedOutOfOrderness(5_000))
    .key_by("key").process(RunningTotals()).sink(ed.sinks.kafka(f"{TOPIC}-out")))


def local_rate(path: str, state_dir: str) -> float:
    """events/s of the same job under the local runner (RocksDB state), over a JSONL file of
    the same events: the keyed path without Kafka, for reference."""
    import time

    local = ed.Job("bench-local")
    (local.source(ed.sources.jsonl(path), timestamp="ts",
                  watermarks=ed.BoundedOutOfOrderness(5_000))
        .key_by("key").process(RunningTotals()).sink(ed.sinks.collect()))
    started = time.perf_counter()
    result = ed.run_local(local, state=f"rocksdb:{state_dir}")
    return result.stats.events_in / (time.perf_counter() - started)


def faust_main() -> None:
    """The same job as a faust agent over a faust Table (run as a worker process)."""
    import faust

    app = faust.App(os.environ.get("BENCH_JOB", "faust-bench"),
                    broker=f"kafka://{os.environ['BENCH_BROKER']}", store="memory://",
                    datadir=os.environ["BENCH_DATADIR"], web_enabled=False,
                    topic_replication_factor=1, topic_partitions=6,
                    broker_session_timeout=6.0, broker_request_timeout=30.0,
                    table_standby_replicas=0, consumer_auto_offset_reset="earliest")
    topic = app.topic(TOPIC, value_serializer="json")
    totals = app.Table("totals", default=lambda: [0, 0.0], partitions=6)

    @app.agent(topic)
    async def running(stream):
        async for event in stream:
            acc = totals[event["key"]]
            totals[event["key"]] = [acc[0] + 1, acc[1] + event["amount"]]

    faust.Worker(app, loglevel="WARNING", redirect_stdouts=False, quiet=True)\
        .execute_from_commandline()


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--local"]:
        print(local_rate(sys.argv[2], sys.argv[3]))
    else:
        faust_main()
