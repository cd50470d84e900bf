"""Conformance suite: every method of every state primitive, on every backend.

Runs over memory and RocksDB, each bare and behind ``TtlStateBackend`` (see conftest), and,
through ``settle``, once reading from the write-back cache and once from the backend's bytes
after a flush and a cache reset.
"""

from __future__ import annotations

import operator

import pytest

import eddies as ed
from eddies.errors import ConfigError, ReadOnlyStateError, StateTooLargeError
from eddies.state import (
    BroadcastState,
    KeyedStateStore,
    ListState,
    MapState,
    ReducingState,
    ValueState,
)
from eddies.testing import Harness

T0 = 1_000


# -- ValueState ----------------------------------------------------------------------------------


def test_value_get_set_clear(store: KeyedStateStore, settle) -> None:
    count = store.bind(ValueState("count", default=0))
    store.set_key("alice", T0)
    assert count.get() == 0, "absent: the declared default"
    assert count.get("other") == "other", "absent: the default passed to get()"
    count.set(41)
    count.set(count.get() + 1)
    settle(store)
    store.set_key("alice", T0)
    assert count.get() == 42
    assert count.get("other") == 42
    assert count.value() == 42
    count.clear()
    settle(store)
    store.set_key("alice", T0)
    assert count.get() == 0
    assert count.get(None) is None


def test_value_none_is_a_value(store: KeyedStateStore, settle) -> None:
    seen = store.bind(ValueState("seen", default="unset"))
    store.set_key("k", T0)
    seen.set(None)
    settle(store)
    store.set_key("k", T0)
    assert seen.get() is None
    assert seen.get("fallback") is None


def test_value_structured_values_round_trip(store: KeyedStateStore, settle) -> None:
    doc = store.bind(ValueState("doc"))
    value = {
        "n": -(2**63),
        "big": 2**64 - 1,
        "f": 1.5,
        "s": "é\x00",
        "b": b"\x00\xff",
        "l": [1, [2, None], {"x": True}],
        7: "int keys",
    }
    store.set_key("k", T0)
    doc.set(value)
    settle(store)
    store.set_key("k", T0)
    assert doc.get() == value


def test_value_dict_with_tuple_keys_reads_back(store: KeyedStateStore, settle) -> None:
    """msgpack packs such a dict, so set() accepts it: the stored bytes must read back too."""
    doc = store.bind(ValueState("doc"))
    store.set_key("k", T0)
    doc.set({(1, "a"): 1, (2, (3, 4)): [5]})
    settle(store)
    store.set_key("k", T0)
    assert doc.get() == {(1, "a"): 1, (2, (3, 4)): [5]}


def test_value_mutable_default_is_not_shared(store: KeyedStateStore) -> None:
    items = store.bind(ValueState("items", default=[]))
    store.set_key("a", T0)
    mine = items.get()
    mine.append(1)
    items.set(mine)
    store.set_key("b", T0)
    assert items.get() == [], "key b must not see what key a appended to its default"
    assert items.descriptor.default == []


def test_value_failed_set_keeps_the_old_value(store: KeyedStateStore, settle) -> None:
    v = store.bind(ValueState("v"))
    store.set_key("k", T0)
    v.set([1, 2])
    with pytest.raises(ed.errors.StateSerializationError):
        v.set([1, object()])
    settle(store)
    store.set_key("k", T0)
    assert v.get() == [1, 2]


# -- ListState -----------------------------------------------------------------------------------


def test_list_every_method(store: KeyedStateStore, settle) -> None:
    recent = store.bind(ListState("recent"))
    store.set_key("k", T0)
    assert recent.get() == []
    assert recent.length() == 0
    assert recent.is_empty()
    recent.add("a")
    recent.add_all(["b", "c"])
    recent.add_all([])
    settle(store)
    store.set_key("k", T0)
    assert recent.get() == ["a", "b", "c"]
    assert recent.length() == 3
    assert len(recent) == 3
    assert list(recent) == ["a", "b", "c"]
    assert not recent.is_empty()
    recent.update(["x", "y"])
    settle(store)
    store.set_key("k", T0)
    assert recent.get() == ["x", "y"], "update replaces, even entries already stored"
    recent.clear()
    settle(store)
    store.set_key("k", T0)
    assert recent.get() == []
    assert recent.is_empty()
    recent.update([])
    assert recent.get() == []


def test_list_appends_after_reload_do_not_overwrite(store: KeyedStateStore, settle) -> None:
    log = store.bind(ListState("log"))
    for i in range(5):
        store.set_key("k", T0)
        log.add(i)
        settle(store)
    store.set_key("k", T0)
    log.add_all([5, 6])
    settle(store)
    store.set_key("k", T0)
    assert log.get() == [0, 1, 2, 3, 4, 5, 6]


def test_list_clear_then_add_in_one_checkpoint(store: KeyedStateStore, settle) -> None:
    log = store.bind(ListState("log"))
    store.set_key("k", T0)
    log.add_all([1, 2, 3])
    settle(store)
    store.set_key("k", T0)
    log.clear()
    log.add(9)
    settle(store)
    store.set_key("k", T0)
    assert log.get() == [9]
    log.update([7, 8])
    log.add(9)
    settle(store)
    store.set_key("k", T0)
    assert log.get() == [7, 8, 9]


def test_list_holds_duplicates_and_structures(store: KeyedStateStore, settle) -> None:
    log = store.bind(ListState("log"))
    store.set_key("k", T0)
    log.add_all([{"a": 1}, {"a": 1}, None, [1, 2]])
    settle(store)
    store.set_key("k", T0)
    assert log.get() == [{"a": 1}, {"a": 1}, None, [1, 2]]


def test_list_more_than_256_elements_keep_their_order(store: KeyedStateStore, settle) -> None:
    """Indexes past one byte (and past two) must still sort in insertion order."""
    log = store.bind(ListState("log"))
    store.set_key("k", T0)
    log.add_all(range(300))
    settle(store)
    store.set_key("k", T0)
    log.add(300)
    settle(store)
    store.set_key("k", T0)
    assert log.get() == list(range(301))


# -- MapState ------------------------------------------------------------------------------------


def test_map_point_operations(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("devices"))
    store.set_key("card", T0)
    assert m.get("phone") is None
    assert m.get("phone", "none") == "none"
    assert not m.contains("phone")
    assert m.is_empty()
    m.put("phone", 1)
    m.put(("tv", 2), {"room": "den"})
    m.put("phone", 2)  # overwrite
    settle(store)
    store.set_key("card", T0)
    assert m.get("phone") == 2
    assert m.get(("phone",)) == 2, "a bare key is its 1-tuple"
    assert m.get(("tv", 2)) == {"room": "den"}
    assert m.contains(("tv", 2))
    assert not m.contains(("tv", 3))
    assert not m.is_empty()
    m.remove("phone")
    m.remove("never-there")
    settle(store)
    store.set_key("card", T0)
    assert not m.contains("phone")
    assert list(m.keys()) == [("tv", 2)]
    assert list(m.values()) == [{"room": "den"}]
    assert list(m.entries()) == [(("tv", 2), {"room": "den"})]
    assert list(m.items()) == [(("tv", 2), {"room": "den"})]
    m.clear()
    settle(store)
    store.set_key("card", T0)
    assert list(m.entries()) == []
    assert m.is_empty()


def test_map_none_value_is_present(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put("x", None)
    settle(store)
    store.set_key("k", T0)
    assert m.contains("x")
    assert m.get("x", "default") is None
    assert m["x"] is None


def test_map_batch_operations(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put_all({"a": 1, "b": 2})
    m.put_all([(("c", 1), 3), (("c", 2), 4)])
    m.put_all(iter([("d", 5)]))
    settle(store)
    store.set_key("k", T0)
    assert m.get_many(["a", ("c", 2), "zz", "d"]) == [1, 4, None, 5]
    assert m.get_many(["zz"], default=0) == [0]
    assert m.get_many([]) == []
    m.remove_all(["a", ("c", 1), "missing"])
    settle(store)
    store.set_key("k", T0)
    assert dict(m.entries()) == {"b": 2, ("c", 2): 4, "d": 5}


def test_map_dunders(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m["a"] = 1
    m[("b", 1)] = 2
    settle(store)
    store.set_key("k", T0)
    assert "a" in m
    assert ("b", 1) in m
    assert "z" not in m
    assert m["a"] == 1
    assert len(m) == 2
    assert list(m) == ["a", ("b", 1)]
    with pytest.raises(KeyError):
        m["z"]
    del m["a"]
    with pytest.raises(KeyError):
        del m["a"]
    settle(store)
    store.set_key("k", T0)
    assert dict(m.entries()) == {("b", 1): 2}


# Map keys of mixed types in their codec order: None < bytes < str < nested tuple < number
# (ints and floats by value), shorter tuples before their extensions. Written out by hand, not
# computed.
MIXED_KEYS_IN_ORDER = [
    None,
    (None, 1),
    b"\x00",
    b"\x00\x00",
    b"a",
    "a",
    ("a", None),
    ("a", b"z"),
    ("a", ""),
    ("a", "x"),
    ("a", "x", 1),
    ("a", (1, 2)),
    ("a", float("-inf")),
    ("a", -(2**70)),
    ("a", -1.5),
    ("a", -1),
    ("a", 0),
    ("a", 0.5),
    ("a", 1),
    ("a", 2),
    ("a", 256),
    ("a", 2**70),
    ("a", float("inf")),
    "a\x00",
    "ab",
    "b",
    ((1,), 2),
    ((1, 2),),
    -5,
    2.5,
    3,
    float("inf"),
]


@pytest.fixture
def mixed(store: KeyedStateStore, settle) -> MapState:
    m = store.bind(MapState("mixed"))
    store.set_key("k", T0)
    for i, key in reversed(list(enumerate(MIXED_KEYS_IN_ORDER))):
        m.put(key, i)
    settle(store)
    store.set_key("k", T0)
    return m


def _keys(pairs) -> list:
    return [k for k, _ in pairs]


def test_map_entries_are_in_key_order(mixed) -> None:
    assert _keys(mixed.entries()) == MIXED_KEYS_IN_ORDER
    assert [v for _, v in mixed.entries()] == list(range(len(MIXED_KEYS_IN_ORDER)))
    assert list(mixed.keys()) == MIXED_KEYS_IN_ORDER
    assert list(mixed.values()) == list(range(len(MIXED_KEYS_IN_ORDER)))


def test_map_prefix(mixed) -> None:
    a = ["a", ("a", None), ("a", b"z"), ("a", ""), ("a", "x"), ("a", "x", 1), ("a", (1, 2))]
    a += [("a", float("-inf")), ("a", -(2**70)), ("a", -1.5), ("a", -1), ("a", 0), ("a", 0.5)]
    a += [("a", 1), ("a", 2), ("a", 256), ("a", 2**70), ("a", float("inf"))]
    assert _keys(mixed.entries(prefix="a")) == a
    assert _keys(mixed.entries(prefix=("a",))) == a
    assert _keys(mixed.entries(prefix=("a", "x"))) == [("a", "x"), ("a", "x", 1)]
    assert _keys(mixed.entries(prefix=None)) == MIXED_KEYS_IN_ORDER, "None means no prefix"
    assert _keys(mixed.entries(prefix=(None,))) == [None, (None, 1)]
    assert _keys(mixed.entries(prefix=b"\x00")) == [b"\x00"], "b'\\x00\\x00' is another key"
    assert _keys(mixed.entries(prefix=((1,),))) == [((1,), 2)]
    assert _keys(mixed.entries(prefix="zzz")) == []
    assert list(mixed.keys(prefix=("a", "x"))) == [("a", "x"), ("a", "x", 1)]
    assert list(mixed.values(prefix=("a", "x"))) == [9, 10]


def test_map_start_end_start_after(mixed) -> None:
    assert _keys(mixed.entries(start=("a", 0), end=("a", 256))) == [
        ("a", 0), ("a", 0.5), ("a", 1), ("a", 2)]
    assert _keys(mixed.entries(start_after=("a", 0), end=("a", 256))) == [
        ("a", 0.5), ("a", 1), ("a", 2)]
    assert _keys(mixed.entries(start_after=("a", 0.5), end=("a", 2.5))) == [("a", 1), ("a", 2)]
    # start_after excludes the key itself but not its extensions, which sort after it.
    assert _keys(mixed.entries(start_after=("a", "x"), end=("a", (1, 2)))) == [("a", "x", 1)]
    assert _keys(mixed.entries(start="ab")) == [
        "ab",
        "b",
        ((1,), 2),
        ((1, 2),),
        -5,
        2.5,
        3,
        float("inf"),
    ]
    assert _keys(mixed.entries(end=b"a")) == [None, (None, 1), b"\x00", b"\x00\x00"]
    assert _keys(mixed.entries(start=-5, end=float("inf"))) == [-5, 2.5, 3]
    assert _keys(mixed.entries(start=2.5, end=3.5)) == [2.5, 3]
    # Bounds need not be stored keys.
    assert _keys(mixed.entries(start=("a", 0.25), end=("a", 1.0))) == [("a", 0.5)]
    assert _keys(mixed.entries(start=("a", 0.0), end=("a", True))) == [("a", 0), ("a", 0.5)]
    assert _keys(mixed.entries(start=("a", 3), end=("a", 300))) == [("a", 256)]
    assert _keys(mixed.entries(start=("a", 2), end=("a", 2))) == []
    with pytest.raises(ConfigError, match="not both"):
        list(mixed.entries(start="a", start_after="a"))


def test_map_prefix_with_bounds(mixed) -> None:
    assert _keys(mixed.entries(prefix="a", start=("a", 256))) == [
        ("a", 256),
        ("a", 2**70),
        ("a", float("inf")),
    ]
    assert _keys(mixed.entries(prefix="a", end=("a", ""))) == ["a", ("a", None), ("a", b"z")]
    assert _keys(mixed.entries(prefix="a", start_after="a", limit=2)) == [("a", None), ("a", b"z")]
    # A start below the prefix and an end above it are clipped to the prefix.
    assert _keys(mixed.entries(prefix=("a", "x"), start=None, end="b")) == [
        ("a", "x"),
        ("a", "x", 1),
    ]
    assert _keys(mixed.entries(prefix=("a", "x"), start=b"", end=True)) == [
        ("a", "x"),
        ("a", "x", 1),
    ]


def test_map_reverse_and_limit(mixed) -> None:
    assert _keys(mixed.entries(reverse=True)) == MIXED_KEYS_IN_ORDER[::-1]
    assert _keys(mixed.entries(limit=3)) == MIXED_KEYS_IN_ORDER[:3]
    assert _keys(mixed.entries(reverse=True, limit=2)) == [float("inf"), 3]
    assert _keys(mixed.entries(limit=0)) == []
    assert _keys(mixed.entries(prefix=("a", "x"), reverse=True)) == [("a", "x", 1), ("a", "x")]
    assert _keys(mixed.entries(start=("a", 0), end=("a", 256), reverse=True, limit=2)) == [
        ("a", 2),
        ("a", 1),
    ]
    assert _keys(mixed.entries(start_after=("a", 0), end=("a", 256), reverse=True)) == [
        ("a", 2),
        ("a", 1),
        ("a", 0.5),
    ]


def test_map_ranges_see_unflushed_writes_and_removes(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put_all({("t", i): i for i in range(5)})
    settle(store)
    store.set_key("k", T0)
    m.remove(("t", 1))
    m.put(("t", 10), 10)
    m.put(("t", 3), 33)
    assert list(m.entries(prefix="t")) == [
        (("t", 0), 0),
        (("t", 2), 2),
        (("t", 3), 33),
        (("t", 4), 4),
        (("t", 10), 10),
    ]
    settle(store)
    store.set_key("k", T0)
    assert list(m.entries(prefix="t", start=("t", 2), limit=2)) == [(("t", 2), 2), (("t", 3), 33)]


def test_map_clear_then_put_in_one_checkpoint(store: KeyedStateStore, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put_all({"a": 1, "b": 2})
    settle(store)
    store.set_key("k", T0)
    m.clear()
    m.put("c", 3)
    settle(store)
    store.set_key("k", T0)
    assert dict(m.entries()) == {"c": 3}


# -- ReducingState ------------------------------------------------------------------------------


def test_reducing_add_get_clear(store: KeyedStateStore, settle) -> None:
    biggest = store.bind(ReducingState("biggest", max))
    # Concatenation is associative but not commutative: it shows fn(acc, value) order.
    joined = store.bind(ReducingState("joined", operator.add))
    store.set_key("k", T0)
    assert biggest.get() is None
    assert biggest.get(0) == 0
    for v in [3, 9, 4]:
        biggest.add(v)
        joined.add(str(v))
        settle(store)
        store.set_key("k", T0)
    assert biggest.get() == 9
    assert joined.get() == "394"
    biggest.clear()
    settle(store)
    store.set_key("k", T0)
    assert biggest.get() is None
    biggest.add(-1)
    assert biggest.get() == -1


def test_reducing_needs_a_callable() -> None:
    with pytest.raises(ConfigError, match="callable"):
        ReducingState("r", 5)  # type: ignore[arg-type]


# -- per-key isolation ---------------------------------------------------------------------------

# Keys that a naive string or concatenating encoding would confuse.
ISOLATION_KEYS = [
    "a",
    ("a", "b"),
    ("a:b",),
    "a:b",  # same key as ("a:b",)
    ("a", "b", "c"),
    ("ab",),
    "",
    None,
    1,
    False,
    2.5,
    b"a",
    ("a", ("b",)),
    (("a", "b"),),
    ("a", None),
]


def test_per_key_isolation(store: KeyedStateStore, settle) -> None:
    value = store.bind(ValueState("value"))
    items = store.bind(ListState("items"))
    table = store.bind(MapState("table"))
    total = store.bind(ReducingState("total", operator.add))
    for i, key in enumerate(ISOLATION_KEYS):
        store.set_key(key, T0)
        value.set(i)
        items.add(i)
        table.put(("n", i), i)
        table.put(i, "bare")
        total.add(i)
    settle(store)
    # "a:b" and ("a:b",) are one key; every other entry is its own key.
    distinct = {("a:b",): [2, 3]}
    for i, key in enumerate(ISOLATION_KEYS):
        store.set_key(key, T0)
        mine = distinct.get(key if type(key) is tuple else (key,), [i])
        assert value.get() == mine[-1], key
        assert items.get() == mine, key
        expected = {("n", j): j for j in mine}
        expected.update({j: "bare" for j in mine})
        assert dict(table.entries()) == expected, key
        assert list(table.entries(prefix="n")) == [(("n", j), j) for j in mine], key
        assert total.get() == sum(mine), key
    store.set_key("never-written", T0)
    assert value.get() is None
    assert items.get() == []
    assert dict(table.entries()) == {}
    assert total.get() is None


def test_isolation_between_states_with_one_key(store: KeyedStateStore, settle) -> None:
    a = store.bind(ValueState("a"))
    b = store.bind(ValueState("b"))
    store.set_key("k", T0)
    a.set(1)
    settle(store)
    store.set_key("k", T0)
    assert b.get() is None
    assert a.get() == 1


def test_many_keys_and_pinned_key_group(store: KeyedStateStore, settle) -> None:
    """All keys in one key group (as under Kafka) still keep to their own entries."""
    store.key_group = 7
    m = store.bind(MapState("m"))
    for i in range(50):
        store.set_key(("user", i), T0)
        m.put("x", i)
        m.put(("y", i), i)
    settle(store)
    for i in range(50):
        store.set_key(("user", i), T0)
        assert dict(m.entries()) == {"x": i, ("y", i): i}


def test_binding_the_same_name_twice(store: KeyedStateStore) -> None:
    first = store.bind(ValueState("v"))
    assert store.bind(ValueState("v")) is first
    with pytest.raises(ConfigError, match="declared twice"):
        store.bind(ListState("v"))


# -- the same through the Harness ----------------------------------------------------------------


class AllPrimitives(ed.KeyedProcessFunction):
    last = ValueState("last")
    history = ListState("history")
    by_kind = MapState("by_kind")
    total = ReducingState("total", operator.add)

    def on_event(self, event, ctx):
        self.last.set(event["v"])
        self.history.add(event["v"])
        self.by_kind.put((event["kind"], event["v"]), ctx.timestamp)
        self.total.add(event["v"])
        yield (ctx.key, self.total.get(), self.history.length())


def test_harness_drives_every_primitive(backend) -> None:
    h = Harness(AllPrimitives(), state=backend)
    assert h.event({"v": 1, "kind": "a"}, key="x", timestamp=10) == [("x", 1, 1)]
    assert h.event({"v": 2, "kind": "b"}, key="y", timestamp=20) == [("y", 2, 1)]
    assert h.event({"v": 3, "kind": "a"}, key="x", timestamp=30) == [("x", 4, 2)]
    h.checkpoint()
    h.operator.store.clear_cache()
    assert h.state("last", "x") == 3
    assert h.state("history", "x") == [1, 3]
    assert h.state("by_kind", "x") == {("a", 1): 10, ("a", 3): 30}
    assert h.state("total", "x") == 4
    assert h.state("history", "y") == [2]
    assert h.state("last", "nobody") is None
    assert h.state("history", "nobody") is None
    assert h.state("by_kind", "nobody") is None
    with pytest.raises(ed.errors.StateError, match="declared: by_kind, history, last, total"):
        h.state("nope", "x")


# -- BroadcastState ------------------------------------------------------------------------------


class Rules(ed.KeyedBroadcastProcessFunction):
    rules = BroadcastState("rules", max_bytes=2_000)

    def on_broadcast(self, event, ctx):
        op, *args = event
        getattr(self.rules, op)(*args)

    def on_event(self, event, ctx):
        if event == "read":
            yield (
                self.rules.get("limit"),
                self.rules.contains("limit"),
                list(self.rules.entries()),
                "limit" in self.rules,
                len(self.rules),
            )
        else:
            op, *args = event
            getattr(self.rules, op)(*args)


def test_broadcast_written_in_on_broadcast_read_everywhere(backend, settle) -> None:
    h = Harness(Rules(), state=backend)
    h.broadcast(("put", "limit", 100), timestamp=T0)
    h.broadcast(("put_all", {"a": 1, "b": 2}), timestamp=T0)
    h.broadcast(("remove", "a"), timestamp=T0)
    h.checkpoint()
    settle(h.operator.store)
    expected = (100, True, [("b", 2), ("limit", 100)], True, 2)
    assert h.event("read", key="k1", timestamp=T0) == [expected]
    assert h.event("read", key=("other", 2), timestamp=T0) == [expected], "one shared table"
    assert h.state("rules", "ignored") == {"b": 2, "limit": 100}
    h.broadcast(("clear",), timestamp=T0)
    settle(h.operator.store)
    assert h.event("read", key="k1", timestamp=T0) == [(None, False, [], False, 0)]


@pytest.mark.parametrize(
    "write",
    [
        ("put", "x", 1),
        ("remove", "x"),
        ("clear",),
        ("put_all", {"x": 1}),
        ("remove_all", ["x"]),
        ("__setitem__", "x", 1),
    ],
)
def test_broadcast_is_read_only_in_on_event(backend, write) -> None:
    h = Harness(Rules(), state=backend)
    h.broadcast(("put", "x", 0), timestamp=T0)
    with pytest.raises(ReadOnlyStateError, match="'rules' is read-only in on_event"):
        h.event(write, key="k", timestamp=T0)
    assert h.state("rules", None) == {"x": 0}


def test_broadcast_size_limit(backend, settle) -> None:
    h = Harness(Rules(), state=backend)
    h.broadcast(("put", "a", "x" * 900), timestamp=T0)
    h.broadcast(("put", "a", "y" * 900), timestamp=T0)  # a replacement is not growth
    h.broadcast(("put", "b", "x" * 900), timestamp=T0)
    h.checkpoint()
    settle(h.operator.store)  # the size is known after a reload too
    with pytest.raises(StateTooLargeError) as err:
        h.broadcast(("put", "c", "x" * 900), timestamp=T0)
    message = str(err.value)
    assert "'rules'" in message and "2,000" in message and "max_bytes" in message
    with pytest.raises(StateTooLargeError):
        h.broadcast(("put", "a", "z" * 1_500), timestamp=T0)
    # The failed puts changed nothing, and room freed by a remove can be used again.
    assert h.state("rules", None) == {"a": "y" * 900, "b": "x" * 900}
    h.broadcast(("remove", "b"), timestamp=T0)
    h.broadcast(("put", "c", "x" * 900), timestamp=T0)
    assert sorted(h.state("rules", None)) == ["a", "c"]


def test_broadcast_default_limit_is_10_mb() -> None:
    assert BroadcastState("r").max_bytes == 10 * 1024 * 1024


def test_broadcast_needs_a_broadcast_function(backend) -> None:
    h = Harness(AllPrimitives(), state=backend)
    with pytest.raises(ConfigError, match="not a KeyedBroadcastProcessFunction"):
        h.broadcast("x")


# -- declarations --------------------------------------------------------------------------------


def test_unbound_declaration_says_how_to_use_it() -> None:
    with pytest.raises(ed.errors.StateNotBoundError, match="only inside on_event"):
        ValueState("v").get()


@pytest.mark.parametrize("name", ["", "__expiry__", 5])
def test_bad_state_names(name) -> None:
    with pytest.raises(ConfigError):
        ValueState(name)


def test_state_names_must_be_unique_in_a_function() -> None:
    class Clash(ed.KeyedProcessFunction):
        a = ValueState("same")
        b = ListState("same")

    with pytest.raises(ConfigError, match="unique"):
        Harness(Clash())


def test_equal_keys_of_different_types_agree_with_and_without_cache(store, backend_spec) -> None:
    v = store.bind(ValueState("v"))
    store.set_key(1, T0)
    v.set("written as int 1")
    store.flush()
    store.set_key(1.0, T0)
    cached = v.get()
    store.clear_cache()
    store.set_key(1.0, T0)
    assert v.get() == cached == "written as int 1"
    store.set_key(True, T0)
    assert v.get() == "written as int 1", "True is the key 1, as in a dict"
