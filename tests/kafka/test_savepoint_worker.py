"""``eddies worker --from-savepoint``, on a real broker: workers started together seed a new
deployment once (4 partitions from a 6-partition savepoint) and continue the totals exactly;
a restart with the same command line does not seed again; a job with other state is
refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
import pytest

from eddies.runtime.kafka.changelog import decode_marker
from eddies.runtime.kafka.savepoint import create_kafka_savepoint, read_topic_records
from eddies.runtime.kafka.seed import savepoint_digest, seed_topic

from .conftest import produce, read_topic, wait_until
from .test_savepoint import events, totals

pytestmark = pytest.mark.kafka
TARGET = "examples/kafka_totals.py:job"


def write(path: Path, evs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))
    return path


def latest(bootstrap: str, topic: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for o in read_topic(bootstrap, topic):
        if o["count"] > out.get(o["account"], [0, 0])[0]:
            out[o["account"]] = [o["count"], o["sum"]]
    return out


def records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    got = asyncio.run(read_topic_records(bootstrap, topic))
    return [(k, v) for part in got.values() for k, v, _ in part]


def savepoint_of_six_partitions(bootstrap: str, workers, tmp_path: Path, job: str,
                                first: list[dict]) -> Path:
    produce(bootstrap, write(tmp_path / f"{job}.jsonl", first), f"{job}-in", "account",
            partitions=6)
    old = workers(TARGET, bootstrap, f"{job}-old",
                  {"EDDIES_JOB": job, "EDDIES_INPUT": f"{job}-in",
                   "EDDIES_OUTPUT": f"{job}-out"})
    wait_until(lambda: len(read_topic(bootstrap, f"{job}-out")) >= len(first), 120,
               "the outputs")
    assert old.stop() == 0
    create_kafka_savepoint(bootstrap, job, tmp_path / f"{job}.sp")
    return tmp_path / f"{job}.sp"


def test_workers_started_together_from_a_savepoint_seed_it_once(kafka_broker, workers,
                                                                tmp_path: Path) -> None:
    first, rest, more = events(0, 300), events(300, 500), events(500, 600)
    sp = savepoint_of_six_partitions(kafka_broker, workers, tmp_path, "wsa", first)
    produce(kafka_broker, write(tmp_path / "rest.jsonl", rest), "wsb-in", "account",
            partitions=4)
    env = {"EDDIES_JOB": "wsb", "EDDIES_INPUT": "wsb-in", "EDDIES_OUTPUT": "wsb-out"}
    flag = ("--from-savepoint", str(sp))
    pair = {name: workers(TARGET, kafka_broker, name, env, *flag) for name in ("n1", "n2")}
    wait_until(lambda: latest(kafka_broker, "wsb-out") == totals(first + rest), 180,
               "the totals over the savepoint and the new input")
    logs = [(tmp_path / f"{name}.log").read_text() for name in pair]
    assert sum("wsb: seeded from savepoint" in log for log in logs) == 1, logs
    assert sum("wsb: already started from savepoint" in log for log in logs) == 1, logs
    restores = [r for w in pair.values() for r in w.restores() if r.get("source") == "changelog"]
    assert {r["partition"] for r in restores} == {0, 1, 2, 3}

    # n1 restarts with the same command line while n2 has checkpointed past the seed.
    assert pair["n1"].stop() == 0
    again = workers(TARGET, kafka_broker, "n1", env, *flag)
    produce(kafka_broker, write(tmp_path / "more.jsonl", more), "wsb-in", "account",
            partitions=4)
    wait_until(lambda: latest(kafka_broker, "wsb-out") == totals(first + rest + more), 180,
               "the totals after the restart")
    # n2 alone can make those totals: the restarted n1 is waited for (it says it is not seeding
    # again, then it takes partitions) before it is stopped.
    started = 1 + ("wsb: already started from savepoint" in logs[0])
    wait_until(lambda: (tmp_path / "n1.log").read_text().count(
        "wsb: already started from savepoint") == started and any(
        r.get("pid") == again.proc.pid for r in again.restores()), 180,
        "the restarted worker to start and take partitions")
    for w in (again, pair["n2"]):
        assert w.stop() == 0
    assert (tmp_path / "n1.log").read_text().count(
        "wsb: already started from savepoint") == started

    seed = [(k, msgpack.unpackb(v)) for k, v in records(kafka_broker, seed_topic("wsb"))]
    done = [v for k, v in seed if k == b"done"]
    assert len(done) == 1 and done[0]["digest"] == savepoint_digest(sp)
    token = int(savepoint_digest(sp)[:16], 16)
    markers = [decode_marker(v) for _, v in records(kafka_broker, "wsb-__checkpoint__-changelog")]
    assert sorted(m.seq for m in markers if m.token == token) == [1, 1, 1, 1]


def test_a_worker_from_a_savepoint_refuses_a_job_with_other_state(kafka_broker, workers,
                                                                  tmp_path: Path) -> None:
    first = events(0, 200)
    sp = savepoint_of_six_partitions(kafka_broker, workers, tmp_path, "wra", first)
    env = {"EDDIES_JOB": "wra", "EDDIES_INPUT": "wra-in", "EDDIES_OUTPUT": "wra-out"}
    refused = workers(TARGET, kafka_broker, "again", env, "--from-savepoint", str(sp))
    assert refused.proc.wait(120) == 1
    log = (tmp_path / "again.log").read_text()
    assert ("error: job 'wra' already has checkpoints on " in log
            and "checkpoints that did not come from a savepoint, not from savepoint " in log
            and "run the workers without --from-savepoint to resume the state the job has, "
                "or give the job a new name (ed.Job('...')) to start it from the savepoint"
            in log), log
    assert records(kafka_broker, seed_topic("wra")) == []


def test_two_seeders_at_once_write_one_seed(kafka_broker, tmp_path: Path) -> None:
    """Two would-be seeders in the same instant (threads): the first claim in the seed
    topic's log wins, the other waits for its done record; one seed's deltas, not two."""
    from concurrent.futures import ThreadPoolExecutor

    from eddies.runtime.kafka.seed import seed_if_new
    from eddies.savepoint import SavepointWriter
    from examples.kafka_totals import build

    produce(kafka_broker, write(tmp_path / "in.jsonl", events(0, 10)), "wrc-in", "account",
            partitions=4)
    sp = tmp_path / "plain.sp"
    with SavepointWriter(sp, job="plain") as w:
        w.state("Totals", "totals", "value", [(f"a{i}", [i, 2 * i]) for i in range(50)])

    def seed(claimant: str) -> dict:
        return seed_if_new(sp, build("wrc-in", "wrc-out", "wrc"), kafka_broker, claimant)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(seed, ["host:/one", "host:/two"]))
    assert sorted(r["seeded"] for r in results) == [False, True]
    assert results[0]["records"] == results[1]["records"] >= 50
    stored = records(kafka_broker, "wrc-totals-changelog")
    assert len(stored) == 50 and len({k for k, _ in stored}) == 50
    seed_log = [(k, msgpack.unpackb(v)) for k, v in records(kafka_broker, seed_topic("wrc"))]
    assert [k for k, _ in seed_log].count(b"done") == 1
    assert seed(results[0]["seeded"] and "host:/one" or "host:/two")["seeded"] is False
