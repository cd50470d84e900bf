"""Broadcast rules: per-category spending limits, applied to every card's payments.

Rules arrive on their own stream and are broadcast to every parallel instance. Semantics (the
same whether a rule arrives before or after the payments it governs): a payment is judged
by the rule version in force at the payment's event time, and only once the watermark of
both inputs has passed that time, so every rule with an earlier timestamp has arrived. Each
payment waits in keyed state until then (an event-time timer at its timestamp). A payment with
no rule in force for its category at its time is not judged.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class LimitChecker(ed.KeyedBroadcastProcessFunction):
    # category -> [[valid_from_ms, limit], ...] sorted by valid_from
    rules = ed.BroadcastState("rules")
    pending = ed.MapState("pending")  # (ts, seq) -> payment

    def on_broadcast(self, rule, ctx):
        versions = list(self.rules.get(rule["category"], []))
        versions.append([rule["ts"], rule["limit"]])
        versions.sort()
        self.rules.put(rule["category"], versions)

    def on_event(self, payment, ctx):
        self.pending.put((ctx.timestamp, payment["id"]), payment)
        ctx.timers.register_event_time(ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        for key, payment in list(self.pending.entries(prefix=timestamp)):
            self.pending.remove(key)
            limit = None
            for valid_from, value in self.rules.get(payment["category"], []):
                if valid_from <= timestamp:
                    limit = value
            if limit is not None and payment["amount"] > limit:
                yield {"card": ctx.key, "payment": payment["id"], "ts": timestamp,
                       "category": payment["category"], "amount": payment["amount"],
                       "limit": limit}


def build(payments: str | Path = HERE / "data" / "rule_payments.jsonl",
          rules: str | Path = HERE / "data" / "rules.jsonl",
          output: str | Path = "out/limit_breaches.jsonl") -> ed.Job:
    job = ed.Job("limits")
    rule_stream = job.source(ed.sources.jsonl(rules), timestamp="ts", name="rules")
    (job.source(ed.sources.jsonl(payments), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(2_000), name="payments")
        .key_by("card")
        .connect(rule_stream.broadcast())
        .process(LimitChecker())
        .sink(ed.sinks.jsonl(output)))
    return job


job = build()
