"""BroadcastState under Kafka: every worker reads the rules topic whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.kafka


def test_broadcast_rules_reach_both_workers(kafka_broker, workers, tmp_path: Path):
    rules = tmp_path / "rules.jsonl"
    rules.write_text("".join(json.dumps({"category": c, "limit": lim, "ts": 0}) + "\n"
                             for c, lim in [("food", 50), ("tech", 80)]))
    events = tmp_path / "events.jsonl"
    lines = [json.dumps({"account": f"a{i % 60}", "category": ["food", "tech"][i % 2],
                         "amount": i % 100, "ts": 1_000 + i}) for i in range(6_000)]
    # One late-in-time tick per account moves every partition's watermark past the events
    # (a watermark trails the highest timestamp, so the newest event would otherwise wait).
    lines += [json.dumps({"account": f"a{i}", "category": "food", "amount": 0,
                          "ts": 10_000_000}) for i in range(60)]
    head = tmp_path / "head.jsonl"
    head.write_text("\n".join(lines[:60]) + "\n")
    events.write_text("\n".join(lines[60:]) + "\n")
    produce(kafka_broker, rules, "bc-rules", None, partitions=1)
    produce(kafka_broker, head, "bc-events", "account", partitions=6)
    target = "tests/kafka/jobs.py:limits"
    a = workers(target, kafka_broker, "a")
    b = workers(target, kafka_broker, "b")
    # The rest once both own partitions: one worker alone could judge it all before the
    # other joined.
    wait_until(lambda: a.restores() and b.restores(), 120, "both workers to take partitions")
    produce(kafka_broker, events, "bc-events", "account")

    def judged() -> list[dict]:
        return [r for r in read_topic(kafka_broker, "bc-out")
                if not r["event"].endswith(":10000000")]

    wait_until(lambda: len({r["event"] for r in judged()}) == 6_000, 120, "every event judged")
    out = judged()
    assert a.stop() == 0 and b.stop() == 0
    pids = {r["worker"] for r in out}
    assert len(pids) == 2, "both workers produced results"
    for pid in pids:
        mine = [r for r in out if r["worker"] == pid]
        assert all(r["limit"] == {"food": 50, "tech": 80}[r["category"]] for r in mine)
        assert any(r["over"] for r in mine) and not all(r["over"] for r in mine)
