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
    # floats: 21, IEEE-754 BE with the sign bit flipped (positive) or every bit (negative)
    (1.5, "21 bf f8 00 00 00 00 00 00"),
    (-1.5, "21 40 07 ff ff ff ff ff ff"),
    (0.0, "21 80 00 00 00 00 00 00 00"),
    (-0.0, "21 80 00 00 00 00 00 00 00"),
    (float("inf"), "21 ff f0 00 00 00 00 00 00"),
    (float("-inf"), "21 00 0f ff ff ff ff ff ff"),
    # bools
    (False, "26"),
    (True, "27"),
    # tuples: elements concatenated; nested tuples 05 .. 00 with None as 00 FF inside
    (("user", 7), "02 75 73 65 72 00 15 07"),
    ((), ""),
    (("a", None, 1.5), "02 61 00 00 21 bf f8 00 00 00 00 00 00"),
    ((("a", None), 1), "05 02 61 00 00 ff 00 15 01"),
    (((),), "05 00"),
    ((((None,),),), "05 05 00 ff 00 00"),
    ((b"\x00", ("x", True)), "01 00 ff 00 05 02 78 00 27 00"),
]


@pytest.mark.parametrize(("key", "golden"), KEY_GOLDEN, ids=[repr(k) for k, _ in KEY_GOLDEN])
def test_key_encoding(key, golden) -> None:
    assert encode_key(key).hex(" ") == h(golden).hex(" ")


@pytest.mark.parametrize(("key", "golden"), KEY_GOLDEN, ids=[repr(k) for k, _ in KEY_GOLDEN])
def test_key_decoding(key, golden) -> None:
    decoded = decode_key(h(golden))
    assert decoded == (key if type(key) is tuple else (key,))


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
