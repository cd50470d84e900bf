"""A savepoint of a Kafka job from its changelogs, on a real broker: it holds the committed
state per partition (key groups = partitions), and restores into the local runner (key
groups recomputed), which continues the totals exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import SavepointError
from eddies.runtime.cli import main
from eddies.runtime.kafka.savepoint import create_kafka_savepoint
from eddies.runtime.local import LocalRunner
from examples.kafka_totals import build_local

from .conftest import produce, read_topic, wait_until

pytestmark = pytest.mark.kafka
TARGET = "examples/kafka_totals.py:job"


def events(start: int, stop: int) -> list[dict]:
    return [{"account": f"a{i % 20}", "ts": i * 10, "amount": i % 7} for i in range(start, stop)]


def totals(evs: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in evs:
        acc = out.setdefault(e["account"], [0, 0])
        acc[0] += 1
        acc[1] += e["amount"]
    return out


def test_a_kafka_savepoint_restores_into_the_local_runner(kafka_broker, workers,
                                                          tmp_path: Path) -> None:
    first = events(0, 400)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in first))
    produce(kafka_broker, path, "spk-in", "account", partitions=6)
    env = {"EDDIES_JOB": "spk", "EDDIES_INPUT": "spk-in", "EDDIES_OUTPUT": "spk-out"}
    worker = workers(TARGET, kafka_broker, "w", env)
    wait_until(lambda: len(read_topic(kafka_broker, "spk-out")) >= 400, 120, "the outputs")
    assert worker.stop() == 0

    sp = create_kafka_savepoint(kafka_broker, "spk", tmp_path / "sp")
    assert sp.job == "spk" and sp.max_parallelism is None and sp.sources == {}
    saved = {e.key: e.value for e in sp.entries("totals")}
    assert saved == totals(first)
    groups = {key[:2] for key, _ in sp.raw_entries("totals")}
    assert len(groups) > 1 and all(int.from_bytes(g, "big") < 6 for g in groups)
    cli = CliRunner().invoke(main, ["savepoint", "create", "--broker",
                                    f"kafka://{kafka_broker}", "--job", "spk",
                                    str(tmp_path / "sp2")])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "sp2").read_bytes() == (tmp_path / "sp").read_bytes()

    more = events(400, 500)
    rest = tmp_path / "more.jsonl"
    rest.write_text("".join(json.dumps(e) + "\n" for e in more))
    out = ed.sinks.collect()
    result = ed.run_local(build_local(rest, out), f"rocksdb:{tmp_path / 'local'}",
                          from_savepoint=tmp_path / "sp")
    running = totals(first)
    want = []
    for e in more:
        acc = running[e["account"]]
        acc[0] += 1
        acc[1] += e["amount"]
        want.append({"account": e["account"], "count": acc[0], "sum": acc[1], "ts": e["ts"]})
    assert result.collected(out) == want


def test_a_job_without_checkpoints_on_the_broker_is_an_error(kafka_broker) -> None:
    with pytest.raises(SavepointError, match=r"job 'no-such-job' has no committed checkpoint "
                                             r".*check the job name"):
        create_kafka_savepoint(kafka_broker, "no-such-job", "/nonexistent/sp")


def test_rescale_from_6_partitions_to_4_with_two_workers(kafka_broker, workers,
                                                         tmp_path: Path) -> None:
    """The acceptance rescale: a job on 6 partitions, savepoint from its changelogs, seeded
    into a new deployment on a 4-partition topic, run by 2 workers: the final totals equal
    the reference over all the input; a second seed of the same job is refused."""
    from eddies.runtime.kafka.seed import seed_kafka_job
    from examples.kafka_totals import build

    first, rest = events(0, 300), events(300, 500)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text("".join(json.dumps(e) + "\n" for e in first))
    two.write_text("".join(json.dumps(e) + "\n" for e in rest))
    produce(kafka_broker, one, "rs6-in", "account", partitions=6)
    old = workers(TARGET, kafka_broker, "old",
                  {"EDDIES_JOB": "rs6", "EDDIES_INPUT": "rs6-in", "EDDIES_OUTPUT": "rs6-out"})
    wait_until(lambda: len(read_topic(kafka_broker, "rs6-out")) >= 300, 120, "the outputs")
    assert old.stop() == 0
    create_kafka_savepoint(kafka_broker, "rs6", tmp_path / "sp")

    produce(kafka_broker, two, "rs4-in", "account", partitions=4)
    job = build("rs4-in", "rs4-out", "rs4")
    done = seed_kafka_job(tmp_path / "sp", job, kafka_broker)
    assert done["partitions"] == 4 and done["records"] >= 20
    with pytest.raises(SavepointError, match=r"job 'rs4' already has checkpoints .*new name"):
        seed_kafka_job(tmp_path / "sp", build("rs4-in", "rs4-out", "rs4"), kafka_broker)

    env = {"EDDIES_JOB": "rs4", "EDDIES_INPUT": "rs4-in", "EDDIES_OUTPUT": "rs4-out"}
    pair = [workers(TARGET, kafka_broker, name, env) for name in ("n1", "n2")]
    final = totals(first + rest)

    def caught_up() -> bool:
        latest: dict[str, list[int]] = {}
        for out in read_topic(kafka_broker, "rs4-out"):
            if out["count"] > latest.get(out["account"], [0, 0])[0]:
                latest[out["account"]] = [out["count"], out["sum"]]
        return latest == final

    wait_until(caught_up, 180, "the totals over both inputs")
    for w in pair:
        assert w.stop() == 0
    restores = [r for w in pair for r in w.restores() if r.get("source") == "changelog"]
    assert {r["partition"] for r in restores} == {0, 1, 2, 3}


def test_a_local_savepoint_seeds_a_kafka_deployment(kafka_broker, workers,
                                                    tmp_path: Path) -> None:
    """The other way: a local run's savepoint (another max_parallelism, file positions) is
    the first checkpoint of a Kafka job on 3 partitions, whose worker continues the totals
    (TTL state included: the local run was stopped, not ended)."""
    from eddies.runtime.savepoint import create_savepoint

    first, rest = events(0, 250), events(250, 400)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text("".join(json.dumps(e) + "\n" for e in first))
    two.write_text("".join(json.dumps(e) + "\n" for e in rest))
    # Followed, then stopped: a run to the end of its file would end event time there.
    runner: LocalRunner | None = None

    def stop_when_read(stats) -> None:
        if stats.events_in >= len(first):
            runner.request_stop()

    runner = LocalRunner(build_local(one, ed.sinks.collect()), f"rocksdb:{tmp_path / 'local'}",
                         max_parallelism=64, follow=True, on_progress=stop_when_read)
    runner.run()
    create_savepoint(tmp_path / "local", tmp_path / "sp")
    produce(kafka_broker, two, "ls3-in", "account", partitions=3)
    ed.run_local(build_local(one, ed.sinks.collect()), f"rocksdb:{tmp_path / 'ended'}")
    create_savepoint(tmp_path / "ended", tmp_path / "ended.sp")
    refused = CliRunner().invoke(main, ["savepoint", "restore", str(tmp_path / "ended.sp"),
                                        "examples/kafka_totals.py:job",
                                        "--broker", f"kafka://{kafka_broker}"],
                                 env={"EDDIES_JOB": "ls3", "EDDIES_INPUT": "ls3-in",
                                      "EDDIES_OUTPUT": "ls3-out"})
    assert refused.exit_code == 1 and "operator 'Totals' ended event time" in refused.output
    cli = CliRunner().invoke(main, ["savepoint", "restore", str(tmp_path / "sp"),
                                    "examples/kafka_totals.py:job",
                                    "--broker", f"kafka://{kafka_broker}"],
                             env={"EDDIES_JOB": "ls3", "EDDIES_INPUT": "ls3-in",
                                  "EDDIES_OUTPUT": "ls3-out"})
    assert cli.exit_code == 0, cli.output
    assert "ls3: savepoint written as the first checkpoint of its 3 partitions" in cli.output
    worker = workers(TARGET, kafka_broker, "w",
                     {"EDDIES_JOB": "ls3", "EDDIES_INPUT": "ls3-in", "EDDIES_OUTPUT": "ls3-out"})
    wait_until(lambda: len(read_topic(kafka_broker, "ls3-out")) >= 150, 120, "the outputs")
    assert worker.stop() == 0
    running = totals(first)
    want = {}
    for e in rest:
        acc = running[e["account"]]
        acc[0] += 1
        acc[1] += e["amount"]
        want[(e["account"], acc[0])] = acc[1]
    got = {(o["account"], o["count"]): o["sum"] for o in read_topic(kafka_broker, "ls3-out")}
    assert got == want
