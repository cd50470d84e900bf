"""Ad clicks attributed to the impressions that led to them (an interval join).

A click in ``data/ad_clicks.jsonl`` is attributed to every impression of the same ad shown
to the same user (``data/impressions.jsonl``) from 10 minutes before the click up to 1 s
after it (clocks of the ad server and the click tracker disagree by up to a second). Both
bounds are inclusive and each pair goes out once, at the later of its two timestamps,
however the two files interleave. An impression or a click at or below the join's watermark
when it arrives (the lower of the two inputs' watermarks, each 10 s behind the highest
timestamp of its file) is late and goes to ``out/late_ad_events.jsonl``.
"""

from __future__ import annotations

from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent
LATE = ed.OutputTag("late-ad-events")
BEFORE = 600_000  # an impression up to 10 minutes before the click
SKEW = 1_000  # or up to 1 s after it


def attribute(impression, click):
    return {"user": click["user"], "ad": click["ad"], "impression": impression["id"],
            "click": click["id"], "delay_ms": click["ts"] - impression["ts"],
            "cost": impression["cost"]}


def build(impressions: str | Path = HERE / "data" / "impressions.jsonl",
          clicks: str | Path = HERE / "data" / "ad_clicks.jsonl",
          output: str | Path = "out/attributed_clicks.jsonl",
          late_out: str | Path = "out/late_ad_events.jsonl") -> ed.Job:
    job = ed.Job("ad-attribution")
    wm = ed.BoundedOutOfOrderness(10_000)
    shown = job.source(ed.sources.jsonl(impressions), timestamp="ts", watermarks=wm,
                       name="impressions")
    clicked = job.source(ed.sources.jsonl(clicks), timestamp="ts", watermarks=wm,
                         name="ad_clicks")
    attributed = (shown.key_by(lambda e: (e["user"], e["ad"]))
                  .interval_join(clicked.key_by(lambda e: (e["user"], e["ad"])),
                                 lower=-SKEW, upper=BEFORE, fn=attribute, late=LATE,
                                 name="attribution"))
    attributed.sink(ed.sinks.jsonl(output))
    attributed.side_output(LATE).sink(ed.sinks.jsonl(late_out))
    return job


job = build()
