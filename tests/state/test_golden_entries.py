"""Golden bytes of MapState entries with metadata (layout drawn in ``eddies/state/entries.py``).

Expected bytes are written out by hand from the drawing. Entries without metadata keep the
plain value layout byte for byte, so state written before metadata existed reads unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.runtime.cli import main
from eddies.runtime.inspection import query_state, to_json_entry
from eddies.state import Batch, InMemoryStateBackend, KeyedStateStore, MapState, RocksDbStateBackend
from eddies.state.entries import decode_entry, encode_entry


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# key group of "alice" | ("alice",) as a nested element (see test_golden.py)
ALICE = h("00 76 05 02 61 6c 69 63 65 00 00")
MAP_KEY_A = h("02 61 00")  # map key "a"
NEVER = "ff ff ff ff ff ff ff ff"

ENTRY_GOLDEN = [
    # plain: stamp | msgpack(value): no byte more than any state value
    (5, None, 2**64 - 1, f"{NEVER} 05"),
    ("hi", None, 11_000, "f8 2a 00 00 00 00 00 00 a2 68 69"),
    # metadata: stamp | c1 | fixarray(2) [metadata, value]
    (5, {"v": 1}, 1_000, "e8 03 00 00 00 00 00 00 c1 92 81 a1 76 01 05"),
    (None, 0, 2**64 - 1, f"{NEVER} c1 92 00 c0"),
    ([1, 2], "m", 60_000, "60 ea 00 00 00 00 00 00 c1 92 a1 6d 92 01 02"),
]


@pytest.mark.parametrize(("value", "metadata", "expires_at", "golden"), ENTRY_GOLDEN)
def test_entry_codec(value, metadata, expires_at, golden) -> None:
    assert encode_entry(value, metadata, expires_at).hex(" ") == golden
    assert decode_entry(h(golden)) == (value, metadata, expires_at)


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_stored_bytes_of_map_entries(kind: str, tmp_path: Path) -> None:
    db = InMemoryStateBackend() if kind == "memory" else RocksDbStateBackend(tmp_path / "s")
    try:
        store = KeyedStateStore(db)
        files = store.bind(MapState("files"))
        store.set_key("alice", 1_000)
        files.put("a", 5, expire_at=1_000, metadata={"v": 1})
        files.put("b", "hi", expire_at=11_000)
        files.put("c", 5)
        store.flush()
        assert [(k.hex(" "), v.hex(" ")) for k, v in db.iterate("files")] == [
            ((ALICE + MAP_KEY_A).hex(" "), "e8 03 00 00 00 00 00 00 c1 92 81 a1 76 01 05"),
            ((ALICE + h("02 62 00")).hex(" "), "f8 2a 00 00 00 00 00 00 a2 68 69"),
            ((ALICE + h("02 63 00")).hex(" "), f"{NEVER} 05"),
        ]
    finally:
        db.close()


def test_old_state_bytes_read_as_entries_without_metadata(tmp_path: Path) -> None:
    # Bytes as eddies wrote MapState entries before metadata existed, written raw.
    path = tmp_path / "s"
    with RocksDbStateBackend(path) as db:
        batch = Batch()
        batch.put("files", ALICE + MAP_KEY_A, h(f"{NEVER} 81 a1 6e 01"))  # {"n": 1}
        batch.put("files", ALICE + h("02 62 00"), h("f8 2a 00 00 00 00 00 00 a2 68 69"))
        db.write(batch)
    with RocksDbStateBackend(path) as db:
        store = KeyedStateStore(db)
        files = store.bind(MapState("files"))
        store.set_key("alice", 0)
        assert files.get_with_metadata("a") == ed.Entry({"n": 1}, None, None)
        assert list(files.entries(with_metadata=True)) == [
            ("a", ed.Entry({"n": 1}, None, None)), ("b", ed.Entry("hi", None, 11_000))]
        files.put("c", 1, metadata="m")  # a new entry with metadata beside the old ones
        store.flush()
        stored = dict(db.iterate("files"))
        assert stored[ALICE + MAP_KEY_A] == h(f"{NEVER} 81 a1 6e 01"), "untouched"
        assert stored[ALICE + h("02 63 00")] == h(f"{NEVER} c1 92 a1 6d 01")


def test_a_reader_without_metadata_support_fails_loudly() -> None:
    # c1 is never a msgpack type byte: a plain decode refuses it, never misreads the array.
    with pytest.raises(msgpack.FormatError):
        msgpack.unpackb(h("c1 92 81 a1 76 01 05"))


def test_state_ls_json_shows_expiry_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with RocksDbStateBackend(path) as db:
        store = KeyedStateStore(db)
        files = store.bind(MapState("files"))
        store.set_key("alice", 1_000)
        files.put("a", 5, expire_at=90_000, metadata={"etag": [1, "x"]})
        files.put("b", 6)
        store.flush()
        page = query_state(db, "files", key="alice")
        assert [to_json_entry(e) for e in page.entries] == [
            {"key": ["alice"], "map_key": ["a"], "value": 5, "expires_at": 90_000,
             "metadata": {"etag": [1, "x"]}},
            {"key": ["alice"], "map_key": ["b"], "value": 6, "expires_at": None},
        ]
    result = CliRunner().invoke(main, ["state", "ls", str(path), "--state", "files", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)["entries"]
    assert entries[0]["expires_at"] == 90_000 and entries[0]["metadata"] == {"etag": [1, "x"]}
    assert "metadata" not in entries[1]
