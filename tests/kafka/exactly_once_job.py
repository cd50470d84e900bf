"""Running totals per account (as ``examples/kafka_totals.py``) with an exactly-once sink.

Each output carries the account's event count, so ``(account, count)`` names one result:
a consumer that sees one twice has seen a duplicate.
"""

from __future__ import annotations

import os

import eddies as ed


class Totals(ed.KeyedProcessFunction):
    totals = ed.ValueState("totals")

    def on_event(self, event, ctx):
        acc = self.totals.get() or [0, 0]
        acc[0] += 1
        acc[1] += event["amount"]
        self.totals.set(acc)
        yield {"account": ctx.key, "count": acc[0], "sum": acc[1], "ts": ctx.timestamp}


job = ed.Job(os.environ.get("EDDIES_JOB", "eos"))
(job.source(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "eos-in"), key="account"),
            timestamp="ts", watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=10_000))
    .key_by("account")
    .process(Totals())
    .sink(ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "eos-out"), key="account",
                         exactly_once=True)))
