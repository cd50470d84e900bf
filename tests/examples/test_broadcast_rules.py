"""The broadcast-rules example: the same breaches whether rules arrive before or after payments.

The documented semantics: a payment is judged by the rule version in force at its event time,
once the watermark of both inputs has passed that time. So a rules stream that is read late
(after every payment, or trickling in between them) holds the payments back instead of letting
them be judged against rules that have not arrived yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
import examples.broadcast_rules as example
from eddies.errors import ReadOnlyStateError
from eddies.operators.sources import DeadLetter, Source, SourceReader

DATA = Path(example.__file__).parent / "data"


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def reference(payments: list[dict[str, Any]], rules: list[dict[str, Any]]) -> list[dict]:
    out = []
    for p in payments:
        versions = sorted((r["ts"], r["limit"]) for r in rules if r["category"] == p["category"])
        in_force = [limit for valid_from, limit in versions if valid_from <= p["ts"]]
        if in_force and p["amount"] > in_force[-1]:
            out.append({"card": p["card"], "payment": p["id"], "ts": p["ts"],
                        "category": p["category"], "amount": p["amount"],
                        "limit": in_force[-1]})
    return sorted(out, key=lambda o: o["payment"])


class LateRules(Source):
    """Rules that show up late: each step is a list of rules, or a number of reads that
    return nothing (the source is alive, just slow)."""

    def __init__(self, steps: list[Any]) -> None:
        self.name = "rules"
        self.steps = steps

    def partitions(self) -> list[SourceReader]:
        return [_LateRulesReader(self.steps)]


class _LateRulesReader(SourceReader):
    def __init__(self, steps: list[Any]) -> None:
        self.steps = list(steps)
        self.i = 0
        self.waited = 0
        self.done = False

    @property
    def position(self) -> Any:
        return [self.i, self.waited]

    def seek(self, position: Any) -> None:  # pragma: no cover - never resumed here
        self.i, self.waited = position

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        while self.i < len(self.steps):
            step = self.steps[self.i]
            if isinstance(step, int) and self.waited < step:
                self.waited += 1
                return [], []
            self.i += 1
            self.waited = 0
            if isinstance(step, list):
                return step, []
        self.done = True
        return [], []


def run_with(rules_source: Source, tmp_path: Path, batch_size: int) -> list[dict]:
    job = ed.Job("limits")
    rule_stream = job.source(rules_source, timestamp="ts", name="rules")
    out = tmp_path / f"breaches-{batch_size}.jsonl"
    (job.source(ed.sources.jsonl(DATA / "rule_payments.jsonl"), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(2_000), name="payments")
        .key_by("card").connect(rule_stream.broadcast())
        .process(example.LimitChecker()).sink(ed.sinks.jsonl(out)))
    ed.run_local(job, batch_size=batch_size)
    return sorted((json.loads(line) for line in out.read_text().splitlines()),
                  key=lambda o: o["payment"])


def test_rules_first_as_in_the_example(tmp_path: Path) -> None:
    out = tmp_path / "breaches.jsonl"
    ed.run_local(example.build(DATA / "rule_payments.jsonl", DATA / "rules.jsonl", out))
    got = sorted((json.loads(line) for line in out.read_text().splitlines()),
                 key=lambda o: o["payment"])
    expected = reference(load("rule_payments.jsonl"), load("rules.jsonl"))
    assert got == expected
    # The data makes the rule versions matter: breaches under both food limits, and tech
    # payments before the tech rule are not judged.
    assert {b["limit"] for b in got if b["category"] == "food"} == {100, 60}
    assert min(b["ts"] for b in got if b["category"] == "tech") >= 1_700_000_050_000


@pytest.mark.parametrize("arrival", ["after-all-payments", "trickling", "one-by-one-late"])
def test_rules_arriving_late_give_the_same_breaches(tmp_path: Path, arrival: str) -> None:
    rules = load("rules.jsonl")
    payments = load("rule_payments.jsonl")
    if arrival == "after-all-payments":
        # Nothing from the rules source until every payment has been read.
        steps, batch_size = [len(payments) + 10, rules], 100
    elif arrival == "trickling":
        # One rule at a time, with payments read in between.
        steps, batch_size = [], 50
        for rule in rules:
            steps += [7, [rule]]
    else:
        steps, batch_size = [40, rules[:2], 10, rules[2:3], 5, rules[3:]], 10
    got = run_with(LateRules(steps), tmp_path, batch_size)
    assert got == reference(payments, rules)


def test_rules_arriving_late_and_early_agree_with_each_other(tmp_path: Path) -> None:
    rules = load("rules.jsonl")
    early = run_with(LateRules([rules]), tmp_path / "a", 100)
    late = run_with(LateRules([5_000, rules]), tmp_path / "b", 100)
    assert early == late and len(early) > 100


def test_on_event_cannot_write_the_rules(tmp_path: Path) -> None:
    class Sneaky(example.LimitChecker):
        def on_event(self, payment, ctx):
            self.rules.put(payment["category"], [[0, 1]])

    job = ed.Job("limits")
    rule_stream = job.source(ed.sources.jsonl(DATA / "rules.jsonl"), timestamp="ts")
    (job.source(ed.sources.jsonl(DATA / "rule_payments.jsonl"), timestamp="ts")
        .key_by("card").connect(rule_stream.broadcast()).process(Sneaky())
        .sink(ed.sinks.jsonl(tmp_path / "x.jsonl")))
    with pytest.raises(ReadOnlyStateError, match="BroadcastState 'rules' is read-only in "
                       "on_event; write it from on_broadcast"):
        ed.run_local(job)
