"""A Kafka worker that restores from damaged local RocksDB state stops with the named error.

A worker runs the first half and stops cleanly (its state is in local table files, and its
token matches the changelog's last marker, so the next start restores from local RocksDB);
bytes are flipped in its biggest table file; the next two starts each read the damage, stop
with one ``error:`` line naming the state dir and the state, exit 1, and leave every table
file as it was.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import produce, wait_until
from .test_worker import TARGET, env, last_per_key, make_events, reference

pytestmark = pytest.mark.kafka


def table_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.glob("*.sst")}


_WRITTEN = re.compile(r"\[(?P<cf>[^\]]+)\] \[JOB \d+\] (Level-0 flush table|Generated table) "
                      r"#(?P<number>\d+)")


def tables_of(state: Path, cf: str) -> list[Path]:
    """The table files RocksDB's LOG says it wrote for column family ``cf``, still there."""
    numbers = set()
    for log in state.glob("LOG*"):
        for m in _WRITTEN.finditer(log.read_text(errors="replace")):
            if m["cf"] == cf:
                numbers.add(int(m["number"]))
    return [p for n in sorted(numbers) if (p := state / f"{n:06d}.sst").exists()]


def test_a_worker_restoring_damaged_local_state_stops_with_the_named_error(
    kafka_broker, workers, tmp_path
):
    first = make_events(tmp_path / "e1.jsonl", 20_000, 300, seed=11)
    second = make_events(tmp_path / "e2.jsonl", 5_000, 300, seed=12, t0=200_000)
    produce(kafka_broker, first, "damaged-in", "account", partitions=6)
    expected_first = reference(first)
    w = workers(TARGET, kafka_broker, "w", env("damaged"))
    wait_until(lambda: last_per_key(kafka_broker, "damaged-out") == expected_first, 120,
               "the first half")
    assert w.stop() == 0  # a final checkpoint, then close: the state is in table files
    state = w.state_dir / "state"
    table = max(tables_of(state, "totals"), key=lambda p: p.stat().st_size)
    with open(table, "r+b") as f:
        f.seek(table.stat().st_size // 3)
        f.write(b"\xff" * 16)
    tables = table_files(state)
    produce(kafka_broker, second, "damaged-in", "account")
    for attempt in range(2):
        again = workers(TARGET, kafka_broker, "w", env("damaged"))
        again.proc.wait(90)
        again.stop()
        log = again.log.read_text()
        assert again.proc.returncode == 1, log
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 + attempt, log  # the log file collects both runs
        assert re.search(r"state 'totals': (point|multi-key|range) read failed: the stored "
                         r"state is damaged", errors[-1]), errors[-1]
        assert str(state) in errors[-1]
        assert f"  for this worker: delete {state} and start it again" in log
        after = table_files(state)
        assert {n: after.get(n) for n in tables} == tables
    assert last_per_key(kafka_broker, "damaged-out") != reference(first, second)
