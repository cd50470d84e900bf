"""Fraud detection with timers and TTL, after Flink's classic walkthrough.

A card that makes a tiny payment (< 1.00) followed within one minute of event time by a large
one (> 500.00) raises an alert. The "saw a tiny payment" flag is a ValueState with a one-minute
event-time TTL, and an event-time timer clears it explicitly when the minute is over, so the
two mechanisms agree. Every payment is also kept for an hour in a ListState per card, and
alerts carry the card's recent payment count.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent
SMALL = 1.00
LARGE = 500.00
WINDOW_MS = 60_000


class FraudDetector(ed.KeyedProcessFunction):
    small_at = ed.ValueState("small_at", ttl=ed.Ttl(ms=WINDOW_MS))
    recent = ed.ListState("recent", ttl=ed.Ttl(hours=1))

    def on_event(self, event, ctx):
        amount = float(event["amount"])
        self.recent.add(amount)
        small_at = self.small_at.get()
        if small_at is not None and amount > LARGE and 0 <= ctx.timestamp - small_at <= WINDOW_MS:
            yield {"card": ctx.key, "alert": True, "small_at": small_at,
                   "large_at": ctx.timestamp, "amount": amount,
                   "recent_payments": self.recent.length()}
            self.small_at.clear()
        if amount < SMALL:
            self.small_at.set(ctx.timestamp)
            ctx.timers.register_event_time(ctx.timestamp + WINDOW_MS)

    def on_timer(self, timestamp, ctx):
        small_at = self.small_at.get()
        if small_at is not None and small_at + WINDOW_MS <= timestamp:
            self.small_at.clear()


def build(source: str | Path = HERE / "data" / "payments.jsonl",
          output: str | Path = "out/fraud_alerts.jsonl") -> ed.Job:
    job = ed.Job("fraud")
    (job.source(ed.sources.jsonl(source), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=30_000))
        .key_by("card")
        .process(FraudDetector())
        .sink(ed.sinks.jsonl(output)))
    return job


job = build()
