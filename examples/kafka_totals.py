"""Running totals per account, deployed on Kafka with `eddies worker`.

The same function runs locally over a JSONL file (``build_local``) and as Kafka workers
(``job``): every event updates the account's count and sum, kept in a ValueState with a
one-day event-time TTL, and the new totals are written to the ``totals`` topic keyed by
account, so the last record per key is the account's current total. See the README section
"Kafka deployment" for the commands.
"""

from __future__ import annotations

import os
from pathlib import Path

import eddies as ed


class Totals(ed.KeyedProcessFunction):
    totals = ed.ValueState("totals", ttl=ed.Ttl(hours=24))

    def on_event(self, event, ctx):
        acc = self.totals.get() or [0, 0]
        acc[0] += 1
        acc[1] += event["amount"]
        self.totals.set(acc)
        yield {"account": ctx.key, "count": acc[0], "sum": acc[1], "ts": ctx.timestamp}


def build(input_topic: str = "payments", output_topic: str = "totals",
          name: str = "kafka-totals", key_field: str = "account") -> ed.Job:
    job = ed.Job(name)
    (job.source(ed.sources.kafka(input_topic, key=key_field), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=10_000))
        .key_by("account")
        .process(Totals())
        .sink(ed.sinks.kafka(output_topic, key="account")))
    return job


def build_local(path: str | Path, sink: ed.sinks.Sink) -> ed.Job:
    job = ed.Job("kafka-totals")
    (job.source(ed.sources.jsonl(path), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=10_000))
        .key_by("account")
        .process(Totals())
        .sink(sink))
    return job


job = build(os.environ.get("EDDIES_INPUT", "payments"), os.environ.get("EDDIES_OUTPUT", "totals"),
            os.environ.get("EDDIES_JOB", "kafka-totals"),
            os.environ.get("EDDIES_INPUT_KEY", "account") or None)
