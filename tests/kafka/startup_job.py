"""A Kafka job with two keyed operators, each with a ValueState and an event-time timer per
key (test_startup_kafka.py): ``EDDIES_JOB``, ``EDDIES_INPUT`` and ``EDDIES_OUTPUT`` name it."""

from __future__ import annotations

import os

import eddies as ed


class Counted(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        if self.n.get() == 0:
            ctx.timers.register_event_time(ctx.timestamp + 10**9)  # pending at every restart
        self.n.set(self.n.get() + 1)
        yield {**event, "n": self.n.get()}

    def on_timer(self, timestamp, ctx):
        return None


class Recounted(Counted):
    n = ed.ValueState("n2", default=0)  # state names are unique in a job


name = os.environ.get("EDDIES_JOB", "startup")
job = ed.Job(name)
(job.source(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "startup-in"), key="account"),
            timestamp="ts", watermarks=ed.BoundedOutOfOrderness(1_000))
    .key_by("account").process(Counted(), name="first")
    .key_by("account").process(Recounted(), name="second")
    .sink(ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "startup-out"), key="account")))
