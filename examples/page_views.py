"""Page views per minute (tumbling windows) and user sessions (session windows).

Both read ``data/clicks.jsonl``. Views per page per minute allow 10 s of lateness: a click up
to 10 s behind the watermark updates its minute's count (a re-emitted result with the same
key/start/end); later clicks go to the ``late`` side output. Sessions close after 30 s without
a click and report the pages visited and the amount spent.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent
LATE = ed.OutputTag("late-clicks")


def session_summary(user, window, clicks):
    # A click without a page still counts for its user's session (the views side sends it to
    # dead letters, as it has no key there).
    return {"clicks": len(clicks),
            "pages": sorted({str(c["page"]) for c in clicks if c.get("page") is not None}),
            "spent": round(sum(c.get("amount", 0) for c in clicks), 2)}


def build(source: str | Path = HERE / "data" / "clicks.jsonl",
          views_out: str | Path = "out/page_views.jsonl",
          sessions_out: str | Path = "out/sessions.jsonl",
          late_out: str | Path = "out/late_clicks.jsonl") -> ed.Job:
    job = ed.Job("page-views")
    clicks = job.source(ed.sources.jsonl(source), timestamp="ts",
                        watermarks=ed.BoundedOutOfOrderness(2_000))
    views = (clicks.key_by("page")
             .window(ed.Tumbling(60_000), allowed_lateness=10_000, late=LATE)
             .aggregate(ed.Count(), name="views-per-minute"))
    views.sink(ed.sinks.jsonl(views_out))
    views.side_output(LATE).sink(ed.sinks.jsonl(late_out))
    (clicks.key_by("user")
        .window(ed.Session(30_000))
        .process(session_summary, name="sessions")
        .sink(ed.sinks.jsonl(sessions_out)))
    return job


job = build()
