"""A keyed running count for the backpressure and read_committed tests: one output per input
event (``EDDIES_ISOLATION``: the source's isolation level).

Each output carries the account's count and the event's ``seq``, so each account's outputs
in topic order must be exactly its events in input order: a lost, repeated or reordered
record shows.
"""

from __future__ import annotations

import os

import eddies as ed

NOTE = "x" * 100
"""Makes outputs about twice the size of inputs, so held outputs show in the worker's RSS."""


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        n = self.n.get() + 1
        self.n.set(n)
        yield {"account": ctx.key, "n": n, "seq": event["seq"], "note": NOTE}


job = ed.Job(os.environ.get("EDDIES_JOB", "bp"))
(job.source(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "bp-in"), key="account",
                             isolation_level=os.environ.get("EDDIES_ISOLATION",
                                                            "read_uncommitted")))
    .key_by("account")
    .process(Count())
    .sink(ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "bp-out"), key="account")))
