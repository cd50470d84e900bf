"""Per-user event counting over a JSONL file: the quickstart job.

Run it with ``eddies run examples/user_counts.py:job``; results land in
``out/user_counts.jsonl``, one running count per event, and malformed lines in the input go to
dead letters instead of stopping the job.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class CountPerUser(ed.KeyedProcessFunction):
    """Counts events per user and emits the running count and total amount."""

    count = ed.ValueState("count", default=0)
    total = ed.ReducingState("total", lambda a, b: round(a + b, 2))

    def on_event(self, event, ctx):
        n = self.count.get() + 1
        self.count.set(n)
        self.total.add(event.get("amount", 0))
        yield {"user": ctx.key, "count": n, "total": self.total.get(), "ts": ctx.timestamp}


def build(source: str | Path = HERE / "data" / "clicks.jsonl",
          output: str | Path = "out/user_counts.jsonl") -> ed.Job:
    job = ed.Job("user-counts")
    (job.source(ed.sources.jsonl(source), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(5_000))
        .key_by("user")
        .process(CountPerUser())
        .sink(ed.sinks.jsonl(output)))
    return job


job = build()
