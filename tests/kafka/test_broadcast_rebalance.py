"""BroadcastState a worker reads while it holds no partition survives the rebalance that
gives it one: the caches a rebalance clears are checkpointed first."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from .conftest import produce, read_topic, wait_until
from .test_worker_stop import last_assigned, log_lines

pytestmark = pytest.mark.kafka

JOB = '''
import eddies as ed
from tests.kafka.jobs import Limits

job = ed.Job("bcr")
rules = job.source(ed.sources.kafka("bcr-rules"), timestamp="ts",
                   watermarks=ed.BoundedOutOfOrderness(0, idle_timeout=1_000))
(job.source(ed.sources.kafka("bcr-events", key="account"), timestamp="ts",
            watermarks=ed.BoundedOutOfOrderness(0))
    .key_by("account").connect(rules.broadcast()).process(Limits())
    .sink(ed.sinks.kafka("bcr-out", key="event")))
'''
HELD = "[('bcr-events', 0)]"


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def payments(t0: int) -> list[dict]:
    """300 payments from ``t0`` on, then a tick far ahead that moves the watermark past them."""
    return [{"account": f"a{i % 20}", "category": ["food", "tech"][i % 2], "amount": i % 100,
             "ts": t0 + i} for i in range(300)] + [
        {"account": "a0", "category": "food", "amount": 0, "ts": t0 + 10_000_000}]


def rules(food: int, tech: int) -> list[dict]:
    return [{"category": "food", "limit": food, "ts": 0},
            {"category": "tech", "limit": tech, "ts": 0}]


def judged(bootstrap: str, t0: int) -> list[dict]:
    return [r for r in read_topic(bootstrap, "bcr-out")
            if t0 <= int(r["event"].split(":")[1]) < t0 + 300]


def events_in(w) -> int:
    counts = [int(m[1].replace(",", "")) for line in log_lines(w.log)
              if (m := re.match(r"progress: ([\d,]+) events in", line))]
    return counts[-1] if counts else 0


def test_rules_read_without_a_partition_are_kept_when_one_is_assigned(
    kafka_broker, workers, tmp_path
) -> None:
    job = tmp_path / "bcrjob.py"
    job.write_text(JOB)
    target = f"{job}:job"
    produce(kafka_broker, write(tmp_path / "r1.jsonl", rules(50, 80)), "bcr-rules", None,
            partitions=1)
    produce(kafka_broker, write(tmp_path / "p1.jsonl", payments(1_000)), "bcr-events",
            "account", partitions=1)
    a = workers(target, kafka_broker, "a", {}, "--progress-every", "0.2")
    wait_until(lambda: len(judged(kafka_broker, 1_000)) == 300, 120, "the first payments")
    assert all(r["limit"] == {"food": 50, "tech": 80}[r["category"]]
               for r in judged(kafka_broker, 1_000))
    b = workers(target, kafka_broker, "b", {}, "--progress-every", "0.2")
    # One partition, two workers: after the rebalance one of them holds nothing.
    wait_until(lambda: last_assigned(b) is not None
               and {last_assigned(a), last_assigned(b)} == {HELD, "[]"}, 120,
               "the rebalance to leave one worker without a partition")
    idle, busy = (a, b) if last_assigned(a) == "[]" else (b, a)

    def settled() -> bool:  # the busy worker restored the partition of each assignment
        held = [line for line in log_lines(busy.log) if line.endswith(f"assigned {HELD}")]
        return len(busy.restores()) == len(held)

    wait_until(settled, 120, "the busy worker to restore its partition")
    # The idle worker has read both rules (and, if it is the first worker, the payments).
    seen = 2 + (301 if idle is a else 0)
    wait_until(lambda: events_in(idle) == seen, 120, "the idle worker to read the rules")

    # New limits, read by the idle worker alone into its BroadcastState (and by the busy one).
    produce(kafka_broker, write(tmp_path / "r2.jsonl", rules(5, 8)), "bcr-rules", None)
    wait_until(lambda: events_in(idle) == seen + 2, 120, "the idle worker to read new rules")

    # The busy worker leaves: the idle one takes the partition, restoring it.
    restores = len(idle.restores())
    busy.proc.send_signal(signal.SIGTERM)
    assert busy.proc.wait(30) == 0
    busy.stop()
    wait_until(lambda: len(idle.restores()) > restores, 120, "the idle worker to restore")

    produce(kafka_broker, write(tmp_path / "p2.jsonl", payments(20_000_000)), "bcr-events",
            "account")
    wait_until(lambda: len(judged(kafka_broker, 20_000_000)) == 300, 120,
               "the second payments")
    out = judged(kafka_broker, 20_000_000)
    assert {r["worker"] for r in out} == {idle.proc.pid}
    # Judged with the rules it read while it held no partition, not with none or older ones.
    assert [r["limit"] for r in out] == [{"food": 5, "tech": 8}[r["category"]] for r in out]
    assert idle.stop() == 0
