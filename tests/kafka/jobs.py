"""Jobs the Kafka tests run in worker subprocesses."""

from __future__ import annotations

import os

import eddies as ed


class Limits(ed.KeyedBroadcastProcessFunction):
    rules = ed.BroadcastState("rules")
    pending = ed.ListState("pending")

    def on_broadcast(self, rule, ctx):
        self.rules.put(rule["category"], rule["limit"])

    def on_event(self, event, ctx):
        # Judge once the watermark of both inputs passed the event: all earlier rules are in.
        self.pending.add(event)
        ctx.timers.register_event_time(ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        keep = []
        for event in self.pending.get():
            if event["ts"] > timestamp:
                keep.append(event)
                continue
            limit = self.rules.get(event["category"])
            yield {"event": f'{event["account"]}:{event["ts"]}', "category": event["category"],
                   "limit": limit, "over": limit is not None and event["amount"] > limit,
                   "worker": os.getpid()}
        self.pending.update(keep)


limits = ed.Job("bc")
_rules = limits.source(ed.sources.kafka("bc-rules"), timestamp="ts",
                       watermarks=ed.BoundedOutOfOrderness(0, idle_timeout=1_000))
# The rules topic goes quiet after its few records: idleness takes it out of the watermark, so
# event time follows the payments (which must not go idle first, or nothing would advance).
(limits.source(ed.sources.kafka("bc-events", key="account"), timestamp="ts",
               watermarks=ed.BoundedOutOfOrderness(0))
    .key_by("account")
    .connect(_rules.broadcast())
    .process(Limits())
    .sink(ed.sinks.kafka("bc-out", key="event")))
