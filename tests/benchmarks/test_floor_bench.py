"""``benchmarks.floor``: every loop of the floor, the RocksDB one included, gives the lean
loop's results (the benchmark compares them by digest and exits 1 when they differ)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import floor
from benchmarks.data import generate
from benchmarks.jobs import plain_running, plain_ttl
from benchmarks.one import digest
from eddies.state import InMemoryStateBackend, KeyedStateStore
from eddies.state.values import NEVER_STAMP, unpack


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("floor") / "events.csv", 5_000, 400)


@pytest.mark.parametrize("level", floor.LEVELS)
def test_each_level_gives_the_lean_results(level: str, events: Path, tmp_path: Path) -> None:
    lean = plain_running(events, 500)
    results = floor.contracts(events, level, interval=700, workdir=tmp_path)
    assert digest("running", results) == digest("running", lean)
    assert not (tmp_path / "floor-rocksdb").exists()  # the RocksDB loop removes its table


def test_the_rocksdb_table_ends_with_every_key_s_last_value(
        events: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[bytes, bytes] = {}
    update = floor._RocksTable.update

    def spy(self: floor._RocksTable, pairs: object) -> None:
        pairs = list(pairs)  # type: ignore[call-overload]
        written.update(pairs)
        update(self, pairs)

    monkeypatch.setattr(floor._RocksTable, "update", spy)
    # Batches of about 2,000 lines: a checkpoint at 4,000 events, the rest at the end
    floor.contracts(events, "rocksdb", interval=2_500, workdir=tmp_path)
    prefix = KeyedStateStore(InMemoryStateBackend()).prefix
    expected = {prefix(key): [count, total] for key, count, total in
                plain_running(events, 500)}
    assert len(expected) == 400
    assert {k: [unpack(v[8:])[0], round(unpack(v[8:])[1], 2)] for k, v in written.items()} \
        == expected
    assert {v[:8] for v in written.values()} == {NEVER_STAMP}


@pytest.mark.parametrize("level", floor.TTL_LEVELS)
def test_each_level_of_job_3_gives_the_lean_results(level: str, events: Path,
                                                    tmp_path: Path) -> None:
    lean = plain_ttl(events, 500)
    results = floor.contracts_ttl(events, level, interval=700, workdir=tmp_path)
    assert digest("ttl", results) == digest("ttl", lean)
    assert len(results) > 400  # keys idle for the TTL started over: runs, not keys
    assert not (tmp_path / "floor-rocksdb").exists()


def test_job_3_s_table_holds_the_live_values_and_ends_empty(
        events: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables: list[dict[bytes, bytes]] = []
    apply = floor._MemoryTable.apply

    def spy(self: floor._MemoryTable, dirty: dict[bytes, object]) -> None:
        apply(self, dirty)
        tables.append(dict(self))

    monkeypatch.setattr(floor._MemoryTable, "apply", spy)
    results = floor.contracts_ttl(events, "contracts", interval=2_500)
    assert len(tables) == 2  # a checkpoint (batches of about 2,000 lines), then the end
    live = tables[0]
    assert 0 < len(live) <= 400
    assert all(len(unpack(v[8:])) == 2 for v in live.values())  # [count, sum] each
    assert tables[-1] == {}  # every run expired at the end of input, and was deleted
    assert len(results) == len(plain_ttl(events, 500))


def test_an_unknown_level_of_job_3_is_refused(events: Path) -> None:
    with pytest.raises(ValueError, match="unknown level 'timers' of job 3"):
        floor.contracts_ttl(events, "timers")
