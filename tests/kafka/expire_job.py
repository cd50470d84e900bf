"""A Kafka job whose state reports each run of activity through ``on_expire``."""

from __future__ import annotations

import os

import eddies as ed

TTL_MS = 5_000
BOUND = 1_000


class Quiet(ed.KeyedProcessFunction):
    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=TTL_MS), on_expire=True)

    def on_event(self, event, ctx):
        acc = self.acc.get() or [0, 0]
        self.acc.set([acc[0] + 1, acc[1] + event["amount"]])

    def on_expire(self, state, acc, ctx):
        yield {"account": ctx.key, "count": acc[0], "sum": acc[1], "at": ctx.timestamp}


def build(source: ed.sources.Source, sink: ed.sinks.Sink, name: str) -> ed.Job:
    job = ed.Job(name)
    (job.source(source, timestamp="ts", watermarks=ed.BoundedOutOfOrderness(BOUND))
        .key_by("account").process(Quiet(), name="quiet").sink(sink))
    return job


job = build(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "quiet-in"), key="account"),
            ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "quiet-out"), key="account"),
            os.environ.get("EDDIES_JOB", "quiet"))
