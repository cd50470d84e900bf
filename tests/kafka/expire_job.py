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


class LateReads(ed.KeyedProcessFunction):
    """Reads, then writes, each record's number: a record later than the TTL behind the
    watermark writes a value that is expired already and fires at the next advance."""

    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=1_000), on_expire=True)

    def on_event(self, event, ctx):
        seen = self.acc.get()
        self.acc.set(event["i"])
        yield {"kind": "read", "k": ctx.key, "i": event["i"], "seen": seen}

    def on_expire(self, state, value, ctx):
        yield {"kind": "expired", "k": ctx.key, "v": value, "at": ctx.timestamp}


def build_late(source: ed.sources.Source, sink: ed.sinks.Sink, name: str) -> ed.Job:
    job = ed.Job(name)
    (job.source(source, timestamp="ts", watermarks=ed.BoundedOutOfOrderness(100))
        .key_by("k").process(LateReads(), name="late").sink(sink))
    return job


late = build_late(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "late-in"), key="k"),
                  ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "late-out"), key="k"),
                  os.environ.get("EDDIES_JOB", "late"))
