"""``StateBackend.keys``: the first ``limit`` live keys of a range, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from eddies.state import Batch, InMemoryStateBackend, RocksDbStateBackend


@pytest.fixture(params=["memory", "rocksdb"])
def backend(request, tmp_path: Path):
    db = InMemoryStateBackend() if request.param == "memory" else RocksDbStateBackend(tmp_path)
    yield db
    db.close()


def test_keys_skips_deleted_and_stops_at_limit_and_bounds(backend) -> None:
    batch = Batch()
    for i in range(100):
        batch.put("t", b"k%03d" % i, b"v")
    backend.write(batch)
    assert backend.keys("t", None, None, 3) == [b"k000", b"k001", b"k002"]  # orders the table
    batch = Batch()
    for i in range(0, 100, 2):  # every other key gone, after the order was built
        batch.delete("t", b"k%03d" % i)
    backend.write(batch)
    assert backend.keys("t", b"k010", b"k020", 100) == [b"k%03d" % i for i in range(11, 20, 2)]
    assert backend.keys("t", None, None, 4) == [b"k001", b"k003", b"k005", b"k007"]
    assert backend.keys("t", b"k098", None, 10) == [b"k099"]
    assert backend.keys("t", b"k1", None, 10) == []
    assert backend.keys("missing", None, None, 10) == []
    # what iterate gives, cut at the limit
    assert backend.keys("t", b"k050", b"k090", 7) == [k for k, _ in backend.iterate(
        "t", b"k050", b"k090")][:7]
