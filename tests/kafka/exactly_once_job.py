"""The running totals of ``examples/kafka_totals.py`` with an exactly-once sink.

Each output carries the account's event count, so ``(account, count)`` names one result:
a consumer that sees one twice has seen a duplicate.
"""

from __future__ import annotations

import os

import eddies as ed
from examples.kafka_totals import Totals

job = ed.Job(os.environ.get("EDDIES_JOB", "eos"))
(job.source(ed.sources.kafka(os.environ.get("EDDIES_INPUT", "eos-in"), key="account"),
            timestamp="ts", watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=10_000))
    .key_by("account")
    .process(Totals())
    .sink(ed.sinks.kafka(os.environ.get("EDDIES_OUTPUT", "eos-out"), key="account",
                         exactly_once=True)))
