"""Errors: bad values fail at write time with the state and key named; bad keys are refused."""

from __future__ import annotations

import datetime
import operator
from pathlib import Path

import pytest

import eddies as ed
from eddies.errors import (
    BackendError,
    ConfigError,
    EddiesError,
    KeyEncodingError,
    StateError,
    StateSerializationError,
)
from eddies.state import (
    KeyedStateStore,
    ListState,
    MapState,
    ReducingState,
    RocksDbStateBackend,
    ValueState,
    decode_key,
    encode_key,
    open_backend,
)
from eddies.testing import Harness

T0 = 1_000
BAD_VALUES = [
    pytest.param(datetime.datetime(2024, 1, 1), "datetime", id="datetime"),
    pytest.param(object(), "object", id="object"),
    pytest.param({1, 2}, "set", id="set"),
    pytest.param([1, {"when": datetime.date(2024, 1, 1)}], "list", id="nested-date"),
    pytest.param("\ud800", "str", id="lone-surrogate"),
]


@pytest.fixture
def handles(store: KeyedStateStore) -> dict:
    return {
        "value": store.bind(ValueState("seen")),
        "list": store.bind(ListState("recent")),
        "map": store.bind(MapState("devices")),
        "reducing": store.bind(ReducingState("total", operator.add)),
    }


WRITES = {
    "value-set": ("ValueState 'seen'", lambda h, v: h["value"].set(v)),
    "list-add": ("ListState 'recent'", lambda h, v: h["list"].add(v)),
    "list-add_all": ("ListState 'recent'", lambda h, v: h["list"].add_all(["ok", v])),
    "list-update": ("ListState 'recent'", lambda h, v: h["list"].update([v])),
    "map-put": ("MapState 'devices'", lambda h, v: h["map"].put("phone", v)),
    "map-put_all": ("MapState 'devices'", lambda h, v: h["map"].put_all({"phone": v})),
    "map-setitem": ("MapState 'devices'", lambda h, v: h["map"].__setitem__("phone", v)),
    "reducing-add": ("ReducingState 'total'", lambda h, v: h["reducing"].add(v)),
}


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize(("value", "type_name"), BAD_VALUES)
def test_unserializable_value_fails_at_write_time(store, handles, write, value, type_name) -> None:
    state, do = WRITES[write]
    store.set_key(("user", 7), T0)
    with pytest.raises(StateSerializationError) as err:
        do(handles, value)
    message = str(err.value)
    assert message.startswith(state), "names the state"
    assert "('user', 7)" in message, "names the key"
    assert type_name in message, "names what could not be stored"
    assert "store" in message, "says what to store instead"
    if "devices" in message:
        assert "'phone'" in message, "names the map key"
    assert isinstance(err.value, StateError) and isinstance(err.value, EddiesError)
    assert isinstance(err.value, TypeError)
    # Nothing half-written: the flush is clean and stores nothing for the key.
    store.flush()
    store.clear_cache()
    store.set_key(("user", 7), T0)
    assert handles["value"].get() is None
    assert handles["list"].get() == []
    assert dict(handles["map"].entries()) == {}
    assert handles["reducing"].get() is None


def test_datetime_message_reads_well(store: KeyedStateStore) -> None:
    seen = store.bind(ValueState("seen"))
    store.set_key(("user", 7), T0)
    with pytest.raises(StateSerializationError) as err:
        seen.set(datetime.datetime(2024, 1, 1))
    message = str(err.value)
    assert message.startswith("ValueState 'seen' for key ('user', 7): cannot serialize datetime")
    assert "an int of epoch ms instead of a datetime" in message


def test_error_in_a_harness_names_the_operator() -> None:
    class Bad(ed.KeyedProcessFunction):
        seen = ValueState("seen")

        def on_event(self, event, ctx):
            self.seen.set({1, 2})

    h = Harness(Bad(), operator="dedup")
    with pytest.raises(StateSerializationError, match="'seen' in operator 'dedup' for key 'k'"):
        h.event("x", key="k", timestamp=T0)


def test_broadcast_error_names_the_map_key_not_a_keyed_key() -> None:
    class Rules(ed.KeyedBroadcastProcessFunction):
        rules = ed.BroadcastState("rules")

        def on_broadcast(self, event, ctx):
            self.rules.put("r1", event)

        def on_event(self, event, ctx):
            pass

    h = Harness(Rules())
    h.event("x", key="some-user", timestamp=T0)
    with pytest.raises(StateSerializationError) as err:
        h.broadcast(object())
    assert "BroadcastState 'rules', map key 'r1'" in str(err.value)
    assert "some-user" not in str(err.value)


def test_serializable_after_a_failure(store: KeyedStateStore) -> None:
    """A failed encode leaves the shared msgpack packer clean for the next value."""
    seen = store.bind(ValueState("seen"))
    store.set_key("k", T0)
    with pytest.raises(StateSerializationError):
        seen.set([1, 2, object()])
    seen.set([3, 4])
    store.flush()
    store.clear_cache()
    assert seen.get() == [3, 4]


# -- keys ----------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(object(), id="object"),
    pytest.param([1, 2], id="list"),
    pytest.param({"a": 1}, id="dict"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(("a", float("nan")), id="nan-inside"),
    pytest.param(("a", [1]), id="list-inside"),
    pytest.param(2 ** (8 * 256), id="int-over-255-bytes"),
    pytest.param(-(2 ** (8 * 256)), id="negative-int-over-255-bytes"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param(datetime.date(2024, 1, 1), id="date"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_key_for_the_codec(key) -> None:
    with pytest.raises(KeyEncodingError) as err:
        encode_key(key)
    assert isinstance(err.value, StateError) and isinstance(err.value, TypeError)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_user_key(store: KeyedStateStore, key) -> None:
    store.bind(ValueState("v"))
    with pytest.raises(KeyEncodingError):
        store.set_key(key, T0)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_map_key(store: KeyedStateStore, key) -> None:
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    with pytest.raises(KeyEncodingError):
        m.put(key, 1)
    with pytest.raises(KeyEncodingError):
        m.get(key)
    with pytest.raises(KeyEncodingError):
        list(m.entries(prefix=key))
    assert dict(m.entries()) == {}


@pytest.mark.parametrize("key", [object(), [1, 2], ("a", {"b": 1})], ids=["object", "list", "dict"])
def test_bad_key_in_a_harness_event(key) -> None:
    class Count(ed.KeyedProcessFunction):
        n = ValueState("n", default=0)

        def on_event(self, event, ctx):
            self.n.set(self.n.get() + 1)

    h = Harness(Count())
    with pytest.raises(KeyEncodingError, match="convert it"):
        h.event("x", key=key, timestamp=T0)
    assert h.event("x", key="fine", timestamp=T0) == []
    assert h.state("n", "fine") == 1


def test_key_error_message_names_the_fix() -> None:
    with pytest.raises(KeyEncodingError) as err:
        encode_key(("user", datetime.date(2024, 1, 1)))
    message = str(err.value)
    assert "date" in message
    assert "None, bool, int, float, str, bytes and nested tuples" in message


@pytest.mark.parametrize("data", ["99", "02 61", "15", "05 02 61 00", "1d 09 01"])
def test_malformed_key_bytes(data: str) -> None:
    with pytest.raises(KeyEncodingError, match="key"):
        decode_key(bytes.fromhex(data))


# -- configuration and backends ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["redis:x", "rocksdb:", "", "memory:"])
def test_bad_backend_spec(spec: str) -> None:
    with pytest.raises(ConfigError, match="rocksdb:"):
        open_backend(spec)


def test_backend_spec_passes_through(tmp_path: Path) -> None:
    db = open_backend(f"rocksdb:{tmp_path}")
    try:
        assert isinstance(db, RocksDbStateBackend)
        assert open_backend(db) is db
    finally:
        db.close()


def test_rocksdb_on_a_file_is_a_backend_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a dir")
    with pytest.raises(BackendError):
        RocksDbStateBackend(target)


@pytest.mark.parametrize("n", [0, 32769, -1])
def test_max_parallelism_range(n: int) -> None:
    with pytest.raises(ConfigError, match="max_parallelism"):
        KeyedStateStore(open_backend("memory"), max_parallelism=n)


def test_descriptor_attributes_behave() -> None:
    v = ValueState("v", default=3)
    assert getattr(v, "nope", "fallback") == "fallback"
    assert not hasattr(v, "nope")
    assert getattr(ReducingState("r", max), "default", None) is None
    with pytest.raises(ed.errors.StateNotBoundError, match="'v' is not bound"):
        v.set(1)
