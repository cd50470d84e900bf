"""Range queries over stored state (``eddies.runtime.inspection``), against models.

Without ``key`` the range options select user keys in tuple order: the model compares
encoded keys. With ``key`` they select map keys, and the model is ``MapState.entries`` itself.
Every listing is read through pages and cursors, so paging is checked everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eddies.errors import BackendError, ConfigError, KeyEncodingError, StateError
from eddies.runtime.inspection import (
    MAX_LIMIT,
    UNSET,
    Entry,
    get_entry,
    list_states,
    parse_key_text,
    query_state,
    state_counts,
    to_json_entry,
)
from eddies.state import (
    Batch,
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    RocksDbStateBackend,
    StateBackend,
    ValueState,
)
from eddies.state.keys import as_tuple, encode_element, encode_key

ELEMENTS = st.one_of(st.sampled_from(["a", "ab", "b", "", "a:b"]), st.integers(-2, 300),
                     st.none(), st.booleans())
KEYS = st.lists(ELEMENTS, min_size=1, max_size=3).map(tuple)
BOUNDS = st.one_of(KEYS, st.none())  # a bare None is the key (None,), not "no bound"


def page_all(backend: StateBackend, state: str, limit: int, **query: Any) -> list[Entry]:
    """Every entry of a query, read page by page; checks page sizes on the way."""
    out: list[Entry] = []
    cursor = None
    while True:
        page = query_state(backend, state, limit=limit, cursor=cursor, **query)
        assert len(page.entries) <= limit
        out.extend(page.entries)
        if page.cursor is None:
            return out
        assert len(page.entries) == limit  # a cursor only after a full page
        cursor = page.cursor


def fill(store: KeyedStateStore, data: dict[tuple[Any, ...], dict[Any, Any]]) -> Any:
    m = store.bind(MapState("m"))
    for key, entries in data.items():
        store.set_key(key)
        for mk, v in entries.items():
            m.put(mk, v)
    store.flush()
    return m


def user_key_model(data: dict[tuple[Any, ...], dict[Any, Any]], prefix: Any, start: Any,
                   start_after: Any, end: Any, reverse: bool) -> list[tuple[Any, Any]]:
    """(user key, map key) pairs a key-less query should list, from tuple comparisons."""
    rows = []
    for key, entries in data.items():
        ek = encode_element(key)
        if start is not UNSET and ek < encode_element(as_tuple(start)):
            continue
        if start_after is not UNSET and ek <= encode_element(as_tuple(start_after)):
            continue
        if end is not UNSET and ek >= encode_element(as_tuple(end)):
            continue
        if prefix is not UNSET:
            p = as_tuple(prefix)
            if len(key) < len(p) or encode_element(key[: len(p)]) != encode_element(p):
                continue
        for mk in entries:
            rows.append((ek + encode_key(mk), key, as_tuple(mk)))
    rows.sort(reverse=reverse)
    return [(k, mk) for _, k, mk in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.dictionaries(KEYS, st.dictionaries(KEYS, st.integers(0, 9), min_size=1, max_size=4),
                         min_size=1, max_size=12),
    bounds=st.fixed_dictionaries({}, optional={"prefix": BOUNDS, "start": BOUNDS,
                                               "start_after": BOUNDS, "end": BOUNDS}),
    reverse=st.booleans(),
    limit=st.integers(1, 5),
)
def test_keyless_ranges_match_tuple_order(data: Any, bounds: dict[str, Any], reverse: bool,
                                          limit: int) -> None:
    if "start" in bounds and "start_after" in bounds:
        del bounds["start_after"]
    store = KeyedStateStore(InMemoryStateBackend(), max_parallelism=4)  # several key groups
    fill(store, data)
    got = page_all(store.backend.inner, "m", limit, reverse=reverse, **bounds)
    expected = user_key_model(data, bounds.get("prefix", UNSET), bounds.get("start", UNSET),
                              bounds.get("start_after", UNSET), bounds.get("end", UNSET),
                              reverse)
    assert [(e.key, e.map_key) for e in got] == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.dictionaries(KEYS, st.integers(0, 9), min_size=1, max_size=15),
    bounds=st.fixed_dictionaries({}, optional={"prefix": BOUNDS, "start": BOUNDS,
                                               "start_after": BOUNDS, "end": BOUNDS}),
    reverse=st.booleans(),
    limit=st.integers(1, 4),
)
def test_keyed_ranges_match_mapstate_entries(entries: Any, bounds: dict[str, Any],
                                             reverse: bool, limit: int) -> None:
    if "start" in bounds and "start_after" in bounds:
        del bounds["start_after"]
    store = KeyedStateStore(InMemoryStateBackend(), max_parallelism=4)
    data = {("user", 1): entries, ("user", 1, 0): {"other": 1}, ("user",): {"x": 2}}
    m = fill(store, data)
    store.set_key(("user", 1))
    # MapState.entries reads None as "no bound": give it the tuple None means here.
    as_map_bounds = {k: as_tuple(v) for k, v in bounds.items()}
    expected = [(as_tuple(k), v) for k, v in m.entries(reverse=reverse, **as_map_bounds)]
    got = page_all(store.backend.inner, "m", limit, key=("user", 1), reverse=reverse, **bounds)
    assert [(e.map_key, e.value) for e in got] == expected
    assert all(e.key == ("user", 1) for e in got)


@pytest.fixture
def backend() -> StateBackend:
    store = KeyedStateStore(InMemoryStateBackend())
    m = store.bind(MapState("m"))
    v = store.bind(ValueState("v"))
    lst = store.bind(ListState("l"))
    for i in range(10):
        store.set_key(("user", i))
        m.put(("d", i), {"i": i})
        v.set(i * 10)
        lst.add_all(["a", "b"])
    store.set_key("alice")
    m.put("x", b"\x00raw")
    store.flush()
    return store.backend.inner


def test_value_list_and_map_shapes(backend: StateBackend) -> None:
    (value,) = query_state(backend, "v", key=("user", 3)).entries
    assert (value.key, value.map_key, value.value, value.expires_at) == (("user", 3), None, 30,
                                                                         None)
    items = query_state(backend, "l", key=("user", 3)).entries
    assert [(e.map_key, e.value) for e in items] == [((0,), "a"), ((1,), "b")]
    assert to_json_entry(query_state(backend, "m", key="alice").entries[0]) == {
        "key": ["alice"], "map_key": ["x"], "value": {"$bytes": "007261770a"[:8]},
        "expires_at": None}


def test_no_empty_last_page(backend: StateBackend) -> None:
    page = query_state(backend, "v", limit=10)
    assert len(page.entries) == 10 and page.cursor is None
    page = query_state(backend, "v", limit=5)
    assert page.cursor is not None
    rest = query_state(backend, "v", limit=5, cursor=page.cursor)
    assert len(rest.entries) == 5 and rest.cursor is None


def test_cursor_belongs_to_its_query(backend: StateBackend) -> None:
    page = query_state(backend, "m", limit=2)
    with pytest.raises(ConfigError, match="another query"):
        query_state(backend, "m", limit=2, cursor=page.cursor, reverse=True)
    with pytest.raises(ConfigError, match="another query"):
        query_state(backend, "m", limit=2, cursor=page.cursor, prefix="user")
    with pytest.raises(ConfigError, match="another query"):
        query_state(backend, "v", limit=2, cursor=page.cursor)
    with pytest.raises(ConfigError, match="malformed cursor"):
        query_state(backend, "m", cursor="!!not base64!!")
    with pytest.raises(ConfigError):
        query_state(backend, "m", cursor="")
    # The same query spelled another way: a bare key is its 1-tuple.
    page = query_state(backend, "l", key=("user", 1), limit=1)
    nxt = query_state(backend, "l", key=("user", 1), limit=5, cursor=page.cursor)
    assert [e.value for e in nxt.entries] == ["b"]
    first = query_state(backend, "l", key=("user", 2), limit=1)
    assert [e.value for e in query_state(backend, "l", key=("user", 2), cursor=first.cursor)
            .entries] == ["b"]
    first = query_state(backend, "m", start="alice", limit=1)  # "alice" is ("alice",)
    assert query_state(backend, "m", start=("alice",), cursor=first.cursor).entries


def test_bad_queries(backend: StateBackend) -> None:
    with pytest.raises(StateError, match="no state named 'nope'; states here: l, m, v"):
        query_state(backend, "nope")
    with pytest.raises(StateError, match="no state named '__meta__'"):
        query_state(backend, "__meta__")  # internal column families are not user states
    for limit in (0, -1, MAX_LIMIT + 1, "5"):
        with pytest.raises(ConfigError, match="limit"):
            query_state(backend, "m", limit=limit)  # type: ignore[arg-type]
    with pytest.raises(KeyEncodingError):
        query_state(backend, "m", key={"a": 1})
    with pytest.raises(KeyEncodingError):
        query_state(backend, "m", start=float("nan"))
    with pytest.raises(ConfigError, match="not both"):
        query_state(backend, "m", start="a", start_after="b")
    with pytest.raises(ConfigError, match="not both"):
        query_state(backend, "m", key="alice", start="a", start_after="b")


def test_list_and_count_states(backend: StateBackend) -> None:
    b = Batch()
    b.put("__meta__", b"x", b"y")
    backend.write(b)
    assert list_states(backend) == ["l", "m", "v"]
    assert state_counts(backend) == {"l": 20, "m": 11, "v": 10}


def test_get_entry(backend: StateBackend) -> None:
    assert get_entry(backend, "v", ("user", 4)).value == 40  # type: ignore[union-attr]
    assert get_entry(backend, "v", ("user", 99)) is None
    assert get_entry(backend, "m", ("user", 4), ("d", 4)).value == {"i": 4}  # type: ignore[union-attr]
    assert get_entry(backend, "m", ("user", 4), ("d", 5)) is None  # start= alone would find more
    assert get_entry(backend, "m", ("user", 4)) is None  # map entries need a map key
    assert get_entry(backend, "l", ("user", 4), 1).value == "b"  # type: ignore[union-attr]


def test_none_is_the_key_none_not_no_filter() -> None:
    store = KeyedStateStore(InMemoryStateBackend(), max_parallelism=4)
    m = store.bind(MapState("m"))
    v = store.bind(ValueState("v"))
    for key in ("a", None, ("b", None)):
        store.set_key(key)
        v.set(repr(key))
        m.put(None, "none")
        m.put("x", "x")
    store.flush()
    db = store.backend.inner
    assert [(e.key, e.value) for e in query_state(db, "v", key=None).entries] == [
        ((None,), "None")]
    assert get_entry(db, "v", None).value == "None"
    assert get_entry(db, "m", "a", None).value == "none"  # the map key (None,)
    assert get_entry(db, "m", "a", "x").value == "x"
    assert [e.map_key for e in query_state(db, "m", key="a", start=None, end="x").entries] == [
        (None,)]
    assert [e.key for e in query_state(db, "v", prefix=None).entries] == [(None,)]
    assert len(query_state(db, "v").entries) == 3  # UNSET: no filter
    assert [e.key for e in query_state(db, "v", start_after=None).entries] == [
        ("a",), ("b", None)]
    assert get_entry(db, "v", "missing") is None


def test_parse_key_text() -> None:
    assert parse_key_text('["user", 7]') == ("user", 7)
    assert parse_key_text("alice") == "alice"
    assert parse_key_text("7") == 7
    assert parse_key_text('"7"') == "7"
    assert parse_key_text("[[1, 2], [3]]") == ((1, 2), (3,))
    assert parse_key_text("user:7") == "user:7"
    assert parse_key_text("") == ""
    assert parse_key_text("true") is True


def test_rocksdb_read_only(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not a RocksDB state dir"):
        RocksDbStateBackend(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()  # a read-only open creates nothing
    with RocksDbStateBackend(tmp_path / "db") as db:
        store = KeyedStateStore(db)
        m = store.bind(MapState("m"))
        store.set_key(("user", 1))
        m.put(("d", 1), "x")
        store.flush()
        with RocksDbStateBackend(tmp_path / "db", read_only=True) as view:  # while db holds it
            assert [e.value for e in query_state(view, "m").entries] == ["x"]
            b = Batch()
            b.put("m", b"k", b"v")
            with pytest.raises(BackendError, match="read-only"):
                view.write(b)
        b = Batch()
        b.put("m", b"\x00\x01later", b"v")
        db.write(b)
        with RocksDbStateBackend(tmp_path / "db", read_only=True) as view:
            assert view.count("m") == 2  # a new view sees the later write


def test_floats_json_has_no_number_for_are_tagged() -> None:
    """``state ls --json`` and ``/state`` print JSON: NaN and infinities as tagged values."""
    import json

    from eddies.runtime.inspection import to_jsonable

    text = json.dumps(to_jsonable({"v": [float("nan"), float("inf"), -float("inf"), 0.5],
                                   float("nan"): 1}), allow_nan=False)
    assert json.loads(text) == {"v": [{"$float": "nan"}, {"$float": "inf"},
                                      {"$float": "-inf"}, 0.5], '{"$float": "nan"}': 1}
