"""Golden bytes: the stored layouts are a contract (DESIGN.md, "State layout").

Every expected value here is written out by hand from the layout drawings in the codec
modules, not computed with the code under test. If one of these changes, stored state from an
earlier version no longer reads back: that needs a migration, not a new golden value.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import pytest
import rocksdict

import eddies as ed
from eddies.state import (
    NEVER,
    Batch,
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    TtlConfig,
    TtlStateBackend,
    ValueState,
    decode_key,
    decode_value,
    encode_key,
    encode_value,
)
from eddies.state.keys import encode_element
from eddies.testing import Harness


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- key encoding --------------------------------------------------------------------------------

KEY_GOLDEN = [
    # str: 02, UTF-8 with 00 escaped as 00 FF, 00
    ("a", "02 61 00"),
    ("", "02 00"),
    ("é", "02 c3 a9 00"),
    ("a\x00b", "02 61 00 ff 62 00"),
    # bytes: 01, data with 00 escaped, 00
    (b"", "01 00"),
    (b"\x00", "01 00 ff 00"),
    (b"a\x00\x00b", "01 61 00 ff 00 ff 62 00"),
    (b"\xff", "01 ff 00"),
    # None: 00 at the top level
    (None, "00"),
    # ints: 14 for zero, 14+n then n big-endian bytes, 14-n then one's complement for negatives
    (0, "14"),
    (1, "15 01"),
    (255, "15 ff"),
    (256, "16 01 00"),
    (7, "15 07"),
    (-1, "13 fe"),
    (-255, "13 00"),
    (-256, "12 fe ff"),
    (2**64 - 1, "1c ff ff ff ff ff ff ff ff"),
    (-(2**64 - 1), "0c 00 00 00 00 00 00 00 00"),
    # big ints: 1D <len> <bytes>; negatives 0B <len ^ FF> <one's complement>
    (2**64, "1d 09 01 00 00 00 00 00 00 00 00"),
    (-(2**64), "0b f6 fe ff ff ff ff ff ff ff ff"),
    # integral floats and bools are the int of their value
    (0.0, "14"),
    (-0.0, "14"),
    (False, "14"),
    (1.0, "15 01"),
    (True, "15 01"),
    (730.0, "16 02 da"),
    (-256.0, "12 fe ff"),
    (2.0**64, "1d 09 01 00 00 00 00 00 00 00 00"),
    (-(2.0**64), "0b f6 fe ff ff ff ff ff ff ff ff"),
    # 1e30 is the double 1000000000000000019884624838656 = 0x0c9f2c9cd04675 * 2**48
    (1e30, "1d 0d 0c 9f 2c 9c d0 46 75 00 00 00 00 00 00"),
    # infinities: below and above every int
    (float("-inf"), "0a"),
    (float("inf"), "1e"),
    # other floats: int of the floor | FE | IEEE-754 BE double of the value itself, sign bit
    # flipped (positive) or every bit flipped (negative)
    (1.5, "15 01 fe bf f8 00 00 00 00 00 00"),  # 1.5 = 3f f8 ..
    (-1.5, "13 fd fe 40 07 ff ff ff ff ff ff"),  # floor -2 = 13 fd; -1.5 = bf f8 ..
    (0.5, "14 fe bf e0 00 00 00 00 00 00"),  # floor 0 = 14
    (-0.5, "13 fe fe 40 1f ff ff ff ff ff ff"),  # floor -1 = 13 fe, then the marker
    (0.1, "14 fe bf b9 99 99 99 99 99 9a"),
    (161.7, "15 a1 fe c0 64 36 66 66 66 66 66"),  # 161.7 = 40 64 36 66 66 66 66 66
    (730.5, "16 02 da fe c0 86 d4 00 00 00 00 00"),  # 730.5 = 40 86 d4 00 ..
    (5e-324, "14 fe 80 00 00 00 00 00 00 01"),  # the smallest subnormal
    (-5e-324, "13 fe fe 7f ff ff ff ff ff ff fe"),
    # tuples: elements concatenated; nested tuples 05 .. 00 with None as 00 FF inside
    (("user", 7), "02 75 73 65 72 00 15 07"),
    ((), ""),
    (("a", None, 1.5), "02 61 00 00 15 01 fe bf f8 00 00 00 00 00 00"),
    ((("a", None), 1), "05 02 61 00 00 ff 00 15 01"),
    (((),), "05 00"),
    ((((None,),),), "05 05 00 ff 00 00"),
    ((b"\x00", ("x", True)), "01 00 ff 00 05 02 78 00 15 01 00"),
    (((0.5, None), -0.5), "05 14 fe bf e0 00 00 00 00 00 00 00 ff 00 13 fe fe 40 1f ff ff ff ff ff ff"),
]


@pytest.mark.parametrize(("key", "golden"), KEY_GOLDEN, ids=[repr(k) for k, _ in KEY_GOLDEN])
def test_key_encoding(key, golden) -> None:
    assert encode_key(key).hex(" ") == h(golden).hex(" ")


def _decoded_form(value):
    """What decoding gives back: an int for an integral number, a float otherwise."""
    if type(value) is tuple:
        return tuple(_decoded_form(v) for v in value)
    if type(value) is bool or (type(value) is float and value.is_integer()):
        return int(value)
    return value


def _types(value):
    return tuple(map(_types, value)) if type(value) is tuple else type(value)


@pytest.mark.parametrize(("key", "golden"), KEY_GOLDEN, ids=[repr(k) for k, _ in KEY_GOLDEN])
def test_key_decoding(key, golden) -> None:
    decoded = decode_key(h(golden))
    expected = _decoded_form(key if type(key) is tuple else (key,))
    assert decoded == expected
    assert _types(decoded) == _types(expected), "ints for integral numbers, floats otherwise"


def test_numbers_equal_in_python_are_one_key() -> None:
    assert encode_key(1) == encode_key(1.0) == encode_key(True) == h("15 01")
    assert encode_key(0) == encode_key(0.0) == encode_key(-0.0) == encode_key(False) == h("14")
    assert encode_key(("a", 2**64)) == encode_key(("a", 2.0**64))
    assert encode_key(((1, True),)) == encode_key(((1.0, 1),)) == h("05 15 01 15 01 00")


def test_numbers_interleave_by_value() -> None:
    scores = [730, 161.7, 730.5, -1, -0.5, float("inf"), 2**70, -(2**70), float("-inf"), True]
    by_bytes = sorted(scores, key=encode_key)
    assert by_bytes == [float("-inf"), -(2**70), -1, -0.5, True, 161.7, 730, 730.5, 2**70,
                        float("inf")]
    assert by_bytes == sorted(scores)


def test_bare_value_is_its_one_tuple() -> None:
    assert encode_key("a") == encode_key(("a",)) == h("02 61 00")
    assert encode_key(7) == encode_key((7,))


def test_string_injection_cannot_forge_a_key() -> None:
    assert encode_key(("a:b",)).hex(" ") == "02 61 3a 62 00"
    assert encode_key(("a", "b")).hex(" ") == "02 61 00 02 62 00"
    # A NUL in a string is escaped, so it cannot end the element early.
    assert encode_key(("a\x00\x02b",)).hex(" ") == "02 61 00 ff 02 62 00"


def test_key_subclasses_encode_as_their_base_value() -> None:
    import enum
    from typing import NamedTuple

    class Color(str, enum.Enum):  # noqa: UP042 - the mixin, where str(x) is 'Color.RED'
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    class Point(NamedTuple):
        x: int
        y: int

    assert encode_key(Color.RED) == encode_key("red")
    assert encode_key(Level.HIGH) == encode_key(3)
    assert encode_key(Point(1, 2)) == encode_key((1, 2))
    assert encode_key(("k", Point(1, 2))) == encode_key(("k", (1, 2)))


def test_user_key_element_layout() -> None:
    """A user key is stored as one nested element, so it is self-delimiting as a prefix."""
    assert encode_element("alice").hex(" ") == "05 02 61 6c 69 63 65 00 00"
    assert encode_element(("user", 7)).hex(" ") == "05 02 75 73 65 72 00 15 07 00"
    assert encode_element(None).hex(" ") == "05 00 ff 00"


# -- value wire format ---------------------------------------------------------------------------


def test_value_wire_format() -> None:
    assert NEVER == 2**64 - 1
    assert encode_value(5).hex(" ") == "ff ff ff ff ff ff ff ff 05"
    assert encode_value(5, NEVER) == encode_value(5)
    # 8-byte little-endian expires_at (11_000 = 0x2af8), then msgpack
    assert encode_value("hi", 11_000).hex(" ") == "f8 2a 00 00 00 00 00 00 a2 68 69"
    assert encode_value({"n": 1}, 1_000).hex(" ") == "e8 03 00 00 00 00 00 00 81 a1 6e 01"
    assert encode_value([1, None, True], 0).hex(" ") == "00 00 00 00 00 00 00 00 93 01 c0 c3"
    assert encode_value(b"\x00", 1).hex(" ") == "01 00 00 00 00 00 00 00 c4 01 00"
    assert decode_value(h("f8 2a 00 00 00 00 00 00 a2 68 69")) == ("hi", 11_000)


BIG_INT_GOLDEN = [
    # msgpack's own ints up to its range: uint 64 (cf), int 64 (d3)
    (2**64 - 1, "cf ff ff ff ff ff ff ff ff"),
    (-(2**63), "d3 80 00 00 00 00 00 00 00"),
    # beyond it, ext type 01: two's complement big-endian in the fewest bytes with the sign
    (2**64, "c7 09 01 01 00 00 00 00 00 00 00 00"),  # ext 8: c7 <len 9> <type 1>
    (-(2**63) - 1, "c7 09 01 ff 7f ff ff ff ff ff ff ff"),
    (10**29, "c7 0d 01 01 43 1e 0f ae 6d 72 17 ca a0 00 00 00"),  # 0x1431e0fae6d7217caa0000000
    (-(2**127), "d8 01 80" + " 00" * 15),  # 16 bytes: fixext 16, d8 <type 1>
    (2**127, "c7 11 01 00 80" + " 00" * 15),  # 17 bytes: the sign needs a 00 in front
]


@pytest.mark.parametrize(("value", "golden"), BIG_INT_GOLDEN, ids=[str(v) for v, _ in BIG_INT_GOLDEN])
def test_big_int_values_are_stored_exactly(value: int, golden: str) -> None:
    data = encode_value(value)
    assert data[8:].hex(" ") == h(golden).hex(" ")
    assert decode_value(data) == (value, NEVER)
    assert type(decode_value(data)[0]) is int


def test_big_ints_nested_in_values_round_trip() -> None:
    value = {"id": 10**29, "ids": [-(2**100), 2**64, 1], (2**65, "k"): None}
    assert decode_value(encode_value(value, 5)) == (value, 5)


# -- stored key layout ---------------------------------------------------------------------------

# crc32(05 02 61 6c 69 63 65 00 00) % 128 == 118 (0x76): the stable hash that places "alice".
ALICE = "00 76 05 02 61 6c 69 63 65 00 00"


def _stored(backend, cf: str) -> list[tuple[str, bytes]]:
    return [(k.hex(" "), v) for k, v in backend.iterate(cf)]


def test_stored_key_layout_per_primitive() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db)
    value = store.bind(ValueState("v"))
    items = store.bind(ListState("l"))
    table = store.bind(MapState("m"))
    store.set_key("alice", 1_000)
    value.set(1)
    items.add_all(["x", "y"])
    table.put(("phone", 2), "z")
    store.flush()
    # key group (2 B BE) | user key as a nested element | map key or list index
    assert _stored(db, "v") == [(ALICE, h("ff ff ff ff ff ff ff ff 01"))]
    assert [k for k, _ in _stored(db, "l")] == [ALICE + " 14", ALICE + " 15 01"]
    assert [k for k, _ in _stored(db, "m")] == [ALICE + " 02 70 68 6f 6e 65 00 15 02"]


def test_stored_key_with_a_pinned_key_group() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db)
    value = store.bind(ValueState("v"))
    store.key_group = 0x0102  # under Kafka: the input partition
    store.set_key(("user", 7), 1_000)
    value.set("x")
    store.flush()
    assert _stored(db, "v") == [("01 02 05 02 75 73 65 72 00 15 07 00", h("ff" * 8 + "a1 78"))]


def test_key_group_follows_max_parallelism() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db, max_parallelism=16)
    value = store.bind(ValueState("v"))
    store.set_key("alice", 1_000)
    value.set(1)
    store.flush()
    assert _stored(db, "v")[0][0] == "00 06 05 02 61 6c 69 63 65 00 00"  # 118 % 16 == 6


# -- expiry index --------------------------------------------------------------------------------


def test_expiry_index_layout() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db)
    seen = store.bind(ValueState("seen", ttl=ed.Ttl(seconds=10)))
    store.set_key("alice", 1_000)
    seen.set(True)
    store.flush()
    assert _stored(db, "seen") == [(ALICE, h("f8 2a 00 00 00 00 00 00 c3"))]
    # expires_at (8 B BE) | state name (str element) | stored key; empty value
    assert _stored(db, "__expiry__") == [
        ("00 00 00 00 00 00 2a f8 02 73 65 65 6e 00 " + ALICE, b"")
    ]


def test_processing_time_expiry_index_and_namespace() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db, operator="dedup", ttl_config=TtlConfig(clock=lambda: 500))
    seen = store.bind(ValueState("seen", ttl=ed.Ttl(ms=100, time="processing")))
    store.set_key("alice")
    seen.set(1)
    store.flush()
    assert db.column_families() == ["__expiry_proc__.dedup", "seen"]
    assert _stored(db, "__expiry_proc__.dedup") == [
        ("00 00 00 00 00 00 02 58 02 73 65 65 6e 00 " + ALICE, b"")  # 600 = 0x258
    ]


def test_ttl_backend_indexes_raw_writes() -> None:
    db = TtlStateBackend(InMemoryStateBackend(), TtlConfig())
    batch = Batch()
    batch.put("s", b"k", encode_value(1, 11_000))
    batch.put("s", b"n", encode_value(1))  # never expires: no index entry
    batch.put("__meta__", b"m", encode_value(1, 5))  # internal: never indexed
    db.write(batch)
    assert _stored(db.inner, "__expiry__") == [("00 00 00 00 00 00 2a f8 02 73 00 6b", b"")]


# -- timers --------------------------------------------------------------------------------------


class Remind(ed.KeyedProcessFunction):
    seen = ValueState("seen", ttl=ed.Ttl(seconds=10))
    plain = ValueState("plain")

    def on_event(self, event, ctx):
        self.seen.set(event)
        self.plain.set(event)
        ctx.timers.register_event_time(5_000)
        ctx.timers.register_processing_time(7)


def test_timer_key_layout() -> None:
    db = InMemoryStateBackend()
    h_ = Harness(Remind(), state=db)
    h_.event("x", key="alice", timestamp=1_000)
    h_.checkpoint()
    # key group | e/p | time + 2**63 (8 B BE) | user key element; empty value
    assert _stored(db, "__timers__") == [
        ("00 76 65 80 00 00 00 00 00 13 88 05 02 61 6c 69 63 65 00 00", b""),
        ("00 76 70 80 00 00 00 00 00 00 07 05 02 61 6c 69 63 65 00 00", b""),
    ]


def test_raw_rocksdb_bytes_carry_the_le_stamp(tmp_path: Path) -> None:
    path = tmp_path / "state"
    h_ = Harness(Remind(), state=f"rocksdb:{path}")
    h_.event({"amount": 5}, key="alice", timestamp=1_000)
    h_.close()

    cfs = rocksdict.Rdict.list_cf(str(path))
    assert {"seen", "plain", "__expiry__", "__timers__"} <= set(cfs)
    raw = rocksdict.Rdict(
        str(path),
        options=rocksdict.Options(raw_mode=True),
        column_families={n: rocksdict.Options(raw_mode=True) for n in cfs if n != "default"},
    )
    try:
        seen = list(raw.get_column_family("seen").items())
        plain = list(raw.get_column_family("plain").items())
        index = list(raw.get_column_family("__expiry__").keys())
    finally:
        raw.close()
    assert [k.hex(" ") for k, _ in seen] == [ALICE]
    value = seen[0][1]
    # written at t=1000 with a 10 s TTL: expires_at 11_000, 8 bytes little-endian, then msgpack
    assert value[:8] == h("f8 2a 00 00 00 00 00 00")
    assert struct.unpack("<Q", value[:8])[0] == 11_000
    assert msgpack.unpackb(value[8:]) == {"amount": 5}
    assert plain[0][1][:8] == h("ff" * 8), "no TTL: the never stamp"
    assert [k.hex(" ") for k in index] == ["00 00 00 00 00 00 2a f8 02 73 65 65 6e 00 " + ALICE]
