"""A damaged savepoint is never read as if it were intact: every chunk, the header and the
footer carry a CRC32, so any flipped bit or cut is a SavepointError that says where, and a
restore that meets one leaves the new dir empty. A file of another format version says so
before anything else is checked; a savepoint written to a missing directory is one error
line."""

from __future__ import annotations

import zlib
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import SavepointError
from eddies.runtime.cli import main
from eddies.runtime.savepoint import MAGIC, SavepointWriter, read_savepoint
from eddies.state.rocksdb import RocksDbStateBackend


class Balances(ed.KeyedProcessFunction):
    balance = ed.ValueState("balance", default=0)

    def on_event(self, event, ctx):
        yield {"k": ctx.key, "b": self.balance.get()}


def _bank(path: Path, users: int = 50) -> bytes:
    with SavepointWriter(path, job="bank") as w:
        w.state("Balances", "balance", "value", [(f"user{i}", 1000 + i) for i in range(users)])
        w.state("Balances", "limits", "map", [(f"user{i}", "day", i) for i in range(3)])
    return path.read_bytes()


def _restore(sp: Path, state: str = "memory") -> list[dict]:
    job = ed.Job("bank")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable([{"k": "user7"}])).key_by("k")
     .process(Balances(), name="Balances").sink(out))
    return ed.run_local(job, state, from_savepoint=sp,
                        allow_non_restored_state=True).collected(out)


def _read_everything(path: Path) -> None:
    sp = read_savepoint(path)
    for info in sp.states:
        list(sp.entries(info))
    for op in sp.operators:
        list(sp.raw_timers(op.name))


def test_a_flipped_bit_in_a_value_is_refused_and_nothing_is_restored(tmp_path):
    good = _bank(tmp_path / "sp")
    offset = read_savepoint(tmp_path / "sp").state("balance").offset
    at = good.index(b"\xcd\x03\xef", offset)  # the msgpack int 1007, user7's balance
    bad = bytearray(good)
    bad[at + 2] ^= 0x01
    (tmp_path / "bad").write_bytes(bytes(bad))
    state = f"rocksdb:{tmp_path / 'st'}"
    with pytest.raises(SavepointError, match=(
            rf"is damaged at byte {offset} \(state 'balance' of operator 'Balances': its "
            r"checksum does not match\): take the savepoint again")):
        _restore(tmp_path / "bad", state)
    with RocksDbStateBackend(tmp_path / "st", read_only=True) as db:
        assert all(db.is_empty(cf) for cf in db.column_families() if cf != "default")
    assert _restore(tmp_path / "sp", state) == [{"k": "user7", "b": 1007}]


def test_a_damaged_chunk_frame_says_where(tmp_path):
    good = _bank(tmp_path / "sp")
    offset = read_savepoint(tmp_path / "sp").state("balance").offset
    bad = bytearray(good)
    bad[offset] = 0xC1  # the chunk's length: far past the end of its section
    (tmp_path / "bad").write_bytes(bytes(bad))
    with pytest.raises(SavepointError, match=rf"damaged at byte {offset} .*its length "
                                             r"\d+ runs past its section"):
        _restore(tmp_path / "bad")
    # a chunk whose bytes were rewritten consistently (CRC included) but hold another
    # number of items than an entry takes: damaged, not a zip() error
    end = offset + 8 + int.from_bytes(good[offset:offset + 4], "big")
    items = msgpack.unpackb(good[offset + 8:end])
    last = items.pop()  # 99 items, the bytes of the last one added to the first key
    items[0] += b"x" * len(msgpack.packb(last))
    chunk = msgpack.packb(items)
    assert len(chunk) == end - offset - 8
    frame = len(chunk).to_bytes(4, "big") + zlib.crc32(chunk).to_bytes(4, "big") + chunk
    (tmp_path / "odd").write_bytes(good[:offset] + frame + good[end:])
    odd = read_savepoint(tmp_path / "odd")
    for read in (lambda: list(odd.raw_entries("balance")), odd.verify):
        with pytest.raises(SavepointError, match=rf"damaged at byte {offset} \(state "
                                                 r"'balance' .*not a list of entries"):
            read()


def test_every_flipped_bit_and_every_cut_is_a_savepoint_error(tmp_path):
    good = _bank(tmp_path / "sp", users=3)
    for at in range(len(good)):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[at] ^= bit
            (tmp_path / "bad").write_bytes(bytes(bad))
            with pytest.raises(SavepointError):
                _read_everything(tmp_path / "bad")
            with pytest.raises(SavepointError):
                read_savepoint(tmp_path / "bad").verify()
    for size in range(len(good)):
        (tmp_path / "cut").write_bytes(good[:size])
        with pytest.raises(SavepointError):
            _read_everything(tmp_path / "cut")


def test_another_format_version_is_named_before_the_end_marker_is_checked(tmp_path):
    # a later version, laid out otherwise after its header (here: no end marker at all)
    header = msgpack.packb({"format": 3, "key_layout": 2, "job": "bank"})
    (tmp_path / "v3").write_bytes(MAGIC + header + b"\x00" * 40)
    with pytest.raises(SavepointError, match=r"format version 3, which this eddies does not "
                                             r"read \(it reads version 2\)"):
        read_savepoint(tmp_path / "v3")


def test_a_format_1_savepoint_is_refused(tmp_path):
    """Format 1 had no checksums: it is refused by its version, never read unchecked."""
    # a format-1 file: magic, header, one chunk, footer, its offset, magic
    header = msgpack.packb({"format": 1, "key_layout": 2, "job": "g", "max_parallelism": 4,
                            "identity": {"version": 1, "job": "g", "operators": [],
                                         "sources": []},
                            "watermarks": {}, "sources": {}, "meta": None})
    footer = msgpack.packb({"sections": [], "entries": 0})
    at = len(MAGIC) + len(header)
    (tmp_path / "v1").write_bytes(MAGIC + header + footer + at.to_bytes(8, "big") + MAGIC)
    with pytest.raises(SavepointError, match=r"format version 1, which this eddies does not "
                                             r"read \(it reads version 2\): restore it with the "
                                             r"eddies version that wrote it"):
        read_savepoint(tmp_path / "v1")


def test_create_into_a_missing_directory_is_one_error_line(tmp_path):
    job = ed.Job("bank")
    (job.source(ed.sources.iterable([{"k": "a"}])).key_by("k")
     .process(Balances(), name="Balances").sink(ed.sinks.collect()))
    ed.run_local(job, f"rocksdb:{tmp_path / 'st'}")
    made = CliRunner().invoke(main, ["savepoint", "create", str(tmp_path / "st"),
                                     str(tmp_path / "missing" / "sp")])
    assert made.exit_code == 1
    assert made.output.startswith("error: cannot write savepoint ")
    assert "directory" in made.output and "does not exist; create it first" in made.output
    assert len(made.output.splitlines()) == 1 and isinstance(made.exception, SystemExit)
    assert not (tmp_path / "missing").exists()
