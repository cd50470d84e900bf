"""Exactly-once Kafka sinks: transactions, fencing, and results seen once after crashes.

Transactions need a broker that implements them: noida-db (``txn_broker``). Its group
coordinator never expires a member that died without leaving (no session timeout), and a
member joining a group that is already assigned stalls the rebalance; so after a crash these
tests restart one worker under a new consumer group, which it has to itself. What carries a
job's progress across workers (markers, changelogs, the announced transactional ids) is in
topics, not in the group, so the restarted worker takes the partitions over as a survivor of
the same group would.
Tansu (``kafka_broker``) has no working transactions: the worker must refuse to start there.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eddies.runtime.kafka.topics import create_topics
from eddies.runtime.kafka.transactions import (
    ExactlyOnceOutputs,
    ProducerFencedError,
    transactions_topic,
)

from .conftest import produce, read_topic_async, wait_until

pytestmark = pytest.mark.kafka
TARGET = "tests/kafka/exactly_once_job.py:job"


def make_events(path: Path, n: int, accounts: int, seed: int, t0: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"account": f"a{rng.randrange(accounts)}", "ts": t0 + i * 10,
                                "amount": rng.randint(1, 100)}) + "\n")
    return path


def results(*paths: Path) -> Counter[tuple[str, int]]:
    """Every result the job makes once: (account, count) for count 1..events of the account."""
    per_account = Counter(json.loads(line)["account"] for p in paths
                          for line in p.read_text().splitlines())
    return Counter((a, c) for a, n in per_account.items() for c in range(1, n + 1))


async def aseen(bootstrap: str, topic: str, isolation: str = "read_committed") -> Counter[Any]:
    """How many times a consumer with ``isolation`` sees each (account, count) result."""
    return Counter((r["account"], r["count"]) for r in await read_topic_async(
        bootstrap, topic, isolation, timeout_s=120))


def seen(bootstrap: str, topic: str, isolation: str = "read_committed") -> Counter[Any]:
    return asyncio.run(aseen(bootstrap, topic, isolation))


def env(name: str) -> dict[str, str]:
    return {"EDDIES_JOB": name, "EDDIES_INPUT": f"{name}-in", "EDDIES_OUTPUT": f"{name}-out"}


def test_exactly_once_must_be_a_bool():
    import eddies as ed
    from eddies.errors import ConfigError

    assert ed.sinks.kafka("out").exactly_once is False  # at-least-once stays the default
    with pytest.raises(ConfigError, match="exactly_once must be True or False, got 'yes'"):
        ed.sinks.kafka("out", exactly_once="yes")


def test_exactly_once_is_refused_on_a_broker_without_transactions(kafka_broker, workers,
                                                                    tmp_path):
    produce(kafka_broker, make_events(tmp_path / "e.jsonl", 10, 2, seed=1), "eos-refused-in",
            "account", partitions=2)
    w = workers(TARGET, kafka_broker, "w", env("eos-refused"))
    w.proc.wait(60)
    w.stop()
    out = w.log.read_text()
    assert w.proc.returncode != 0
    assert "sink 'eos-refused-out' asks for exactly_once=True" in out
    assert "does not implement Kafka transactions" in out
    assert "assigned" not in out  # refused before joining the group


async def put(producer: Any, value: bytes, partition: int) -> None:
    """Produce one record to fence-out as the worker does (a batch per partition)."""
    batch = producer.create_batch()
    batch.append(key=None, value=value, timestamp=None)
    await (await producer.send_batch(batch, "fence-out", partition=partition))


async def _fencing(bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer

    await create_topics(bootstrap, {"fence-out": 2})
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await plain.start()
    part = ("fence-in", 0)
    try:
        def outputs(group: str) -> ExactlyOnceOutputs:
            return ExactlyOnceOutputs(bootstrap, group, {"fence-out"},
                                      transactions_topic("fence"), {}, plain, lambda: [part])

        old, new = outputs("eddies-fence"), outputs("eddies-fence")
        await old.start()
        producer = await old.producer_for("fence-out", plain)
        await put(producer, b'{"account": "x", "count": 1}', partition=0)
        await old.commit({})
        producer = await old.producer_for("fence-out", plain)  # the next checkpoint's
        await put(producer, b'{"account": "x", "count": 2}', partition=1)
        assert old.status == "open"
        assert old.txn_id is not None and old.txn_id.startswith("eddies-fence.fence-in:0.")

        await new.start()
        await new.take_over([part])  # as a worker does before restoring the partition
        assert new.fenced == [old.txn_id]
        # The open transaction is aborted, not pending: nothing of it is ever visible.
        assert await aseen(bootstrap, "fence-out") == Counter({("x", 1): 1})
        assert (await aseen(bootstrap, "fence-out", "read_uncommitted"))[("x", 2)] == 1

        producer = await old.producer_for("fence-out", plain)
        with pytest.raises(ProducerFencedError, match="another worker took this worker's"):
            await put(producer, b'{"account": "x", "count": 9}',
                                         partition=0)
            await old.commit({})

        producer = await new.producer_for("fence-out", plain)
        assert new.txn_id != old.txn_id  # a new id per assignment: fencing never hits it
        await put(producer, b'{"account": "x", "count": 2}', partition=1)
        await new.commit({})
        assert await aseen(bootstrap, "fence-out") == Counter({("x", 1): 1, ("x", 2): 1})
        await new.close()
        await old.close()
    finally:
        await plain.stop()


def test_taking_a_partition_over_fences_its_previous_owner(txn_broker):
    asyncio.run(_fencing(txn_broker))
    # aiokafka leaves the fenced producer's batch futures with their exception unretrieved;
    # their finalizers log it. Run them here: under CPython 3.11 a finalizer that runs while
    # a later test compiles code (pytest's assertion rewriting, ast.parse) makes that compile
    # fail with "AST constructor recursion depth mismatch".
    gc.collect()


def test_crash_between_deltas_and_markers_hides_that_checkpoints_outputs(txn_broker, workers,
                                                                         tmp_path):
    events = make_events(tmp_path / "e.jsonl", 30_000, 300, seed=5)
    produce(txn_broker, events, "eos-cut-in", "account", partitions=6)
    crashing = workers(TARGET, txn_broker, "crash", env("eos-cut"),
                       "--checkpoint-interval", "2000", crash_after_deltas=3)
    wait_until(lambda: crashing.proc.poll() is not None, 120, "the injected crash")
    assert crashing.proc.returncode == 17
    # The crashed worker's third checkpoint: outputs produced and acknowledged, in a
    # transaction that is still open.
    fresh = workers(TARGET, txn_broker, "fresh", env("eos-cut"), "--group", "eos-cut-after")
    expected = results(events)
    wait_until(lambda: sum(seen(txn_broker, "eos-cut-out").values()) >= expected.total(), 120,
               "every result, read_committed")
    assert fresh.stop() == 0
    committed = seen(txn_broker, "eos-cut-out")
    assert committed == expected  # each result exactly once
    everything = seen(txn_broker, "eos-cut-out", "read_uncommitted")
    assert everything.total() > committed.total(), "the aborted checkpoint's outputs exist"


def test_kill9_one_of_two_workers_and_restart_each_result_exactly_once(txn_broker, workers,
                                                                       tmp_path):
    first = make_events(tmp_path / "e1.jsonl", 200_000, 2_000, seed=2)
    second = make_events(tmp_path / "e2.jsonl", 30_000, 2_000, seed=7, t0=3_000_000)
    produce(txn_broker, first, "eos-loss-in", "account", partitions=6)
    a = workers(TARGET, txn_broker, "a", env("eos-loss"))
    b = workers(TARGET, txn_broker, "b", env("eos-loss"))
    total = results(first).total()
    wait_until(lambda: len(b.restores()) > 0 and len(a.restores()) > 0
               and sum(seen(txn_broker, "eos-loss-out").values()) >= total // 20, 120,
               "both workers to own partitions and be under way")
    # Mid-run (each worker has about 100k events to go through): b's open transaction holds
    # outputs made since its last checkpoint, which its successor makes again.
    b.kill9()
    produce(txn_broker, second, "eos-loss-in", "account")
    assert a.stop() == 0  # a final checkpoint, committed
    # b restarted, in a new group (see the module docstring) that it has to itself: it takes
    # every partition over, fencing its killed self's transaction, and resumes from the
    # committed markers.
    before = len(b.restores())
    b2 = workers(TARGET, txn_broker, "b", env("eos-loss"), "--group", "eos-loss-restarted")
    expected = results(first, second)
    wait_until(lambda: sum(seen(txn_broker, "eos-loss-out").values()) >= expected.total(), 180,
               "every result, read_committed")
    assert b2.stop() == 0
    committed = seen(txn_broker, "eos-loss-out")
    duplicates = {r: n for r, n in committed.items() if n > 1}
    assert not duplicates
    assert committed == expected
    assert {r["partition"] for r in b2.restores()[before:]} == set(range(6))
    assert "fenced transactional id" in b2.log.read_text()
