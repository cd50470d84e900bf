"""The join job the Kafka join tests run in worker subprocesses, and its local twin.

One job holds both join shapes over the same two inputs: an interval join and a left as-of
join of ``left`` and ``right`` events (``{"k", "ts", "id"}``) on ``k``. Topics and the job
name come from the environment: ``EDDIES_JOB``, ``EDDIES_LEFT``, ``EDDIES_RIGHT``,
``EDDIES_LEFT_KEY`` (the field the left topic is partitioned by; empty: none, so it is
repartitioned), ``EDDIES_OUT`` (prefix of the two output topics ``<out>-interval`` and
``<out>-asof``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import eddies as ed

BOUND = 3_000  # allowed disorder; the generated input stays within it
LOWER, UPPER = -2_000, 1_500


def pair(left: dict[str, Any], right: dict[str, Any] | None) -> dict[str, Any]:
    return {"k": left["k"], "l": left["id"], "r": None if right is None else right["id"]}


def build(job: ed.Job, left: Any, right: Any, interval_sink: Any, asof_sink: Any) -> ed.Job:
    wm = ed.BoundedOutOfOrderness(BOUND)
    lk = job.source(left, timestamp="ts", watermarks=wm, name="left").key_by("k")
    rk = job.source(right, timestamp="ts", watermarks=wm, name="right").key_by("k")
    lk.interval_join(rk, lower=LOWER, upper=UPPER, fn=pair, name="interval").sink(interval_sink)
    lk.join_asof(rk, how="left", fn=pair, name="asof").sink(asof_sink)
    return job


def build_local(left: Path, right: Path, interval_out: Any, asof_out: Any) -> ed.Job:
    return build(ed.Job("joins-local"), ed.sources.jsonl(left), ed.sources.jsonl(right),
                 interval_out, asof_out)


def build_kafka() -> ed.Job:
    env = os.environ
    out = env.get("EDDIES_OUT", "joins-out")
    return build(ed.Job(env.get("EDDIES_JOB", "joins")),
                 ed.sources.kafka(env.get("EDDIES_LEFT", "joins-left"),
                                  key=env.get("EDDIES_LEFT_KEY", "k") or None),
                 ed.sources.kafka(env.get("EDDIES_RIGHT", "joins-right"), key="k"),
                 ed.sinks.kafka(f"{out}-interval", key="k"),
                 ed.sinks.kafka(f"{out}-asof", key="k"))


job = build_kafka()
