"""MapState entries with metadata and an absolute expiry (``put(..., expire_at=, metadata=)``).

Conformance over memory and RocksDB, bare and behind ``TtlStateBackend`` (see conftest), read
from the cache and from stored bytes (``settle``), and after a restart; errors; and a
hypothesis state machine against a plain-dict model of ``(value, metadata, expires_at)``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import eddies as ed
from eddies.errors import ConfigError, StateSerializationError
from eddies.state import (
    BroadcastState,
    InMemoryStateBackend,
    KeyedStateStore,
    MapState,
    RocksDbStateBackend,
    Ttl,
    TtlConfig,
)
from eddies.state.ttl import EXPIRY_CF

T0 = 1_000


def test_entry_is_exported() -> None:
    assert ed.Entry is ed.state.Entry
    entry = ed.Entry("v", {"etag": 1}, None)
    assert (entry.value, entry.metadata, entry.expires_at) == ("v", {"etag": 1}, None)
    with pytest.raises(AttributeError):
        entry.value = "w"  # type: ignore[misc]


# -- conformance ---------------------------------------------------------------------------------


def test_metadata_round_trips(store: KeyedStateStore, settle) -> None:
    files = store.bind(MapState("files"))
    store.set_key("alice", T0)
    files.put("a", {"size": 3}, metadata={"etag": "x1", "tags": [1, 2]})
    files.put("b", 2)
    files.put(("c", 1), None, metadata=0)
    settle(store)
    store.set_key("alice", T0)
    a = files.get_with_metadata("a")
    assert a is not None and a.value == {"size": 3}
    assert a.metadata == {"etag": "x1", "tags": [1, 2]}
    assert files.get_with_metadata("b").metadata is None
    assert files.get_with_metadata(("c", 1)) == ed.Entry(None, 0, files.get_with_metadata(
        ("c", 1)).expires_at), "a None value with metadata 0 is an entry, not absent"
    assert files.get_with_metadata("zzz") is None
    assert files.get("a") == {"size": 3}, "plain reads see the value only"


def test_put_replaces_metadata_and_remove_drops_it(store: KeyedStateStore, settle) -> None:
    files = store.bind(MapState("files"))
    store.set_key("alice", T0)
    files.put("a", 1, metadata="m1")
    files.put("b", 1, metadata="m2")
    settle(store)
    store.set_key("alice", T0)
    files.put("a", 2)  # no metadata: the old one goes with the old value
    files.remove("b")
    settle(store)
    store.set_key("alice", T0)
    assert files.get_with_metadata("a").metadata is None
    assert files.get_with_metadata("b") is None
    files.put("b", 3)
    settle(store)
    store.set_key("alice", T0)
    assert files.get_with_metadata("b").metadata is None, "a re-put does not revive metadata"
    files.put("c", 1, metadata="m3")
    files.clear()
    files.put("c", 2)
    settle(store)
    store.set_key("alice", T0)
    assert files.get_with_metadata("c") == (2, None, files.get_with_metadata("c").expires_at)


def test_expire_at_visible_until_the_clock_reaches_it(store: KeyedStateStore, settle) -> None:
    sessions = store.bind(MapState("sessions"))
    store.set_key("alice", T0)
    sessions.put("s1", "open", expire_at=50_000, metadata={"ip": "10.0.0.1"})
    sessions.put("s2", "open", expire_at=60_000)
    settle(store)
    store.backend.set_watermark(49_999)
    store.set_key("alice", T0)
    assert sessions.get_with_metadata("s1") == ed.Entry("open", {"ip": "10.0.0.1"}, 50_000)
    assert sessions.get_with_metadata("s2") == ed.Entry("open", None, 60_000)
    assert [k for k, _ in sessions.entries(with_metadata=True)] == ["s1", "s2"]
    store.backend.set_watermark(50_000)  # the clock reaches expire_at: absent from here on
    settle(store)
    store.set_key("alice", T0)
    assert sessions.get("s1") is None and "s1" not in sessions
    assert sessions.get_with_metadata("s1") is None
    assert list(sessions.entries(with_metadata=True)) == [
        ("s2", ed.Entry("open", None, 60_000))]
    assert list(sessions.keys()) == ["s2"]
    store.backend.set_watermark(60_000)
    store.set_key("alice", T0)
    assert sessions.is_empty()


def test_expire_at_overrides_the_state_ttl(store: KeyedStateStore, settle) -> None:
    tokens = store.bind(MapState("tokens", ttl=Ttl(ms=1_000)))
    store.set_key("bob", T0)
    tokens.put("short", 1)  # T0 + 1000
    tokens.put("long", 2, expire_at=T0 + 5_000)
    settle(store)
    store.backend.set_watermark(T0 + 1_000)
    store.set_key("bob", T0 + 1_000)
    assert dict(tokens.entries()) == {"long": 2}
    assert tokens.get_with_metadata("long").expires_at == T0 + 5_000


def test_with_metadata_ranges_match_plain_ranges(store: KeyedStateStore, settle) -> None:
    table = store.bind(MapState("table"))
    store.set_key("k", T0)
    for i in range(12):
        table.put(("row", i), i * 10, metadata=None if i % 3 else {"i": i},
                  expire_at=None if i % 4 else 100_000 + i)
    table.put(("other", 1), "x", metadata="o")
    table.remove(("row", 5))
    settle(store)
    store.backend.set_watermark(100_004)  # rows 0 and 4 expired
    store.set_key("k", T0)
    ranges: list[dict[str, Any]] = [
        {}, {"prefix": "row"}, {"start": ("row", 3)}, {"start_after": ("row", 3)},
        {"end": ("row", 8)}, {"prefix": "row", "reverse": True, "limit": 4},
        {"start": ("row", 2), "end": ("row", 10), "limit": 3}, {"reverse": True},
    ]
    for bounds in ranges:
        plain = list(table.entries(**bounds))
        full = list(table.entries(**bounds, with_metadata=True))
        assert [(k, e.value) for k, e in full] == plain, bounds
    rows = dict(table.entries(with_metadata=True))
    assert ("row", 0) not in rows and ("row", 4) not in rows and ("row", 5) not in rows
    assert rows[("row", 3)].metadata == {"i": 3}
    assert rows[("row", 8)] == ed.Entry(80, None, 100_008)
    assert rows[("other", 1)].metadata == "o"


def test_entries_survive_a_restart(backend_spec, tmp_path: Path) -> None:
    if not backend_spec.persistent:
        pytest.skip("in-memory state ends with its backend")
    db = backend_spec.open()
    store = KeyedStateStore(db)
    files = store.bind(MapState("files"))
    store.set_key("alice", T0)
    files.put("a", b"data", metadata={"etag": 7}, expire_at=90_000)
    files.put("b", [1, 2])
    store.flush()
    db.close()
    db = backend_spec.open()
    try:
        store = KeyedStateStore(db)
        files = store.bind(MapState("files"))
        store.set_key("alice", T0)
        assert files.get_with_metadata("a") == ed.Entry(b"data", {"etag": 7}, 90_000)
        assert files.get_with_metadata("b").metadata is None
        store.backend.set_watermark(90_000)
        assert dict(files.entries()) == {"b": [1, 2]}
    finally:
        db.close()


def test_processing_time_clock(backend_spec) -> None:
    db = backend_spec.open_inner()
    try:
        store = KeyedStateStore(db, ttl_config=TtlConfig(time="processing"))
        store.backend.set_processing_time(10)
        plain = store.bind(MapState("plain"))  # no Ttl: the backend's default clock
        timed = store.bind(MapState("timed", ttl=Ttl(hours=1, time="processing")))
        store.set_key("k")
        plain.put("a", 1, expire_at=500)
        timed.put("a", 1, expire_at=700, metadata="m")
        store.backend.set_watermark(10**9)  # event time does not expire these
        assert plain.get("a") == 1 and timed.get("a") == 1
        store.backend.set_processing_time(500)
        assert plain.get("a") is None and timed.get_with_metadata("a") == (1, "m", 700)
        store.backend.set_processing_time(700)
        assert timed.get("a") is None
    finally:
        db.close()


def test_expire_at_entries_without_a_ttl_are_swept(backend_spec) -> None:
    db = backend_spec.open_inner()
    try:
        store = KeyedStateStore(db)
        cache = store.bind(MapState("cache"))
        store.set_key("k", T0)
        cache.put("gone", 1, expire_at=2_000, metadata="m")
        cache.put("kept", 2)
        store.flush()
        assert db.count("cache") == 2
        store.backend.set_watermark(2_000)
        store.backend.sweep_all()
        assert db.count("cache") == 1, "the expired entry is deleted, the other kept"
        assert store.backend.inner.count(EXPIRY_CF) == 0
    finally:
        db.close()


def test_entries_without_metadata_keep_reading_when_others_gain_some(store, settle) -> None:
    m = store.bind(MapState("m"))
    store.set_key("u", T0)
    m.put("old", 1)
    settle(store)
    store.set_key("u", T0)
    m.put("new", 2, metadata={"v": 2})
    settle(store)
    store.set_key("u", T0)
    assert [(k, e.value, e.metadata) for k, e in m.entries(with_metadata=True)] == [
        ("new", 2, {"v": 2}), ("old", 1, None)]


# -- errors --------------------------------------------------------------------------------------


def test_unserializable_metadata_names_the_state_and_key() -> None:
    store = KeyedStateStore(InMemoryStateBackend(), operator="files-op")
    files = store.bind(MapState("files"))
    store.set_key("alice", T0)
    with pytest.raises(StateSerializationError) as err:
        files.put("a", 1, metadata=object())
    text = str(err.value)
    assert "'files'" in text and "'a'" in text and "metadata" in text and "object" in text
    assert files.get("a") is None, "a failed put leaves the map unchanged"


def test_expire_at_errors() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    m = store.bind(MapState("m", ttl=Ttl(minutes=1)))
    touched = store.bind(MapState("touched", ttl=Ttl(minutes=1, update="on_read_and_write")))
    store.set_key("k", T0)
    with pytest.raises(ConfigError, match="not both"):
        m.put("a", 1, ttl=Ttl(seconds=1), expire_at=5_000)
    for bad in (-1, 1.5, "5000", True, 2**64 - 1):
        with pytest.raises(ConfigError, match="expire_at must be an int"):
            m.put("a", 1, expire_at=bad)
    with pytest.raises(ConfigError, match="on_read_and_write"):
        touched.put("a", 1, expire_at=5_000)
    assert m.get("a") is None and touched.get("a") is None


def test_expire_at_uses_the_clock_of_entry_ttls() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    m = store.bind(MapState("m"))
    store.set_key("k", T0)
    m.put("a", 1, expire_at=5_000)  # fixes the map's clock: event time
    with pytest.raises(ConfigError, match="one MapState uses one clock"):
        m.put("b", 1, ttl=Ttl(seconds=1, time="processing"))


def test_broadcast_state_takes_neither_option() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    rules = store.bind(BroadcastState("rules"))
    store.broadcast_writable = True
    with pytest.raises(ConfigError, match="BroadcastState"):
        rules.put("r", 1, metadata="m")
    with pytest.raises(ConfigError, match="do not expire"):
        rules.put("r", 1, expire_at=5)
    rules.put("r", 1)
    assert rules.get("r") == 1


# -- the model -----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", ("c", 1), ("c", 2), 3])
VALUES = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3),
                                                                             max_size=2))
METADATA = st.one_of(st.none(), st.integers(0, 9), st.dictionaries(st.sampled_from("xy"),
                                                                   st.integers(0, 3)))


class EntriesModel(RuleBasedStateMachine):
    """A MapState with metadata and expire_at (and a state Ttl) against a dict of
    ``map key -> (value, metadata, expires_at)`` per user key."""

    backend_kind = "memory"
    TTL = 300

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp() if self.backend_kind == "rocksdb" else None
        self.db = RocksDbStateBackend(self.tmp) if self.tmp else InMemoryStateBackend()
        self.store = KeyedStateStore(self.db, ttl_config=TtlConfig(sweep_lag_ms=0))
        self.table = self.store.bind(MapState("table", ttl=Ttl(ms=self.TTL)))
        self.watermark = 0
        self.store.backend.set_watermark(0)
        self.model: dict[str, dict[Any, tuple[Any, Any, int]]] = {}

    def teardown(self) -> None:
        self.db.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def live(self, user: str) -> dict[Any, tuple[Any, Any, int]]:
        return {k: e for k, e in self.model.get(user, {}).items() if e[2] > self.watermark}

    @rule(user=st.sampled_from(["u1", "u2"]), key=KEYS, value=VALUES, metadata=METADATA,
          expire_in=st.one_of(st.none(), st.integers(-50, 600)))
    def put(self, user: str, key: Any, value: Any, metadata: Any, expire_in: int | None) -> None:
        self.store.set_key(user, self.watermark)
        if expire_in is None:
            self.table.put(key, value, metadata=metadata)
            expires_at = self.watermark + self.TTL
        else:
            expires_at = max(0, self.watermark + expire_in)
            self.table.put(key, value, expire_at=expires_at, metadata=metadata)
        self.model.setdefault(user, {})[key] = (value, metadata, expires_at)

    @rule(user=st.sampled_from(["u1", "u2"]), key=KEYS)
    def remove(self, user: str, key: Any) -> None:
        self.store.set_key(user, self.watermark)
        self.table.remove(key)
        self.model.get(user, {}).pop(key, None)

    @rule(user=st.sampled_from(["u1", "u2"]))
    def clear(self, user: str) -> None:
        self.store.set_key(user, self.watermark)
        self.table.clear()
        self.model.pop(user, None)

    @rule(delta=st.integers(0, 200))
    def advance(self, delta: int) -> None:
        self.watermark += delta
        self.store.backend.set_watermark(self.watermark)

    @rule()
    def checkpoint_and_reload(self) -> None:
        self.store.flush()
        self.store.clear_cache()

    @rule()
    def sweep(self) -> None:
        self.store.flush()
        self.store.backend.sweep_all()
        for _, data in self.db.iterate("table"):
            assert int.from_bytes(data[:8], "little") > self.watermark

    @invariant()
    def reads_match(self) -> None:
        for user in ("u1", "u2"):
            self.store.set_key(user, self.watermark)
            live = self.live(user)
            for key in ["a", "b", ("c", 1), ("c", 2), 3]:
                want = live.get(key)
                got = self.table.get_with_metadata(key)
                if want is None:
                    assert got is None, (user, key, got)
                else:
                    assert got == ed.Entry(want[0], want[1], want[2]), (user, key, got, want)
            full = list(self.table.entries(with_metadata=True))
            assert [(k, e.value) for k, e in full] == list(self.table.entries())
            assert {k: tuple(e) for k, e in full} == live


STATEFUL = settings(max_examples=60, stateful_step_count=30, deadline=None)


class RocksDbEntriesModel(EntriesModel):
    backend_kind = "rocksdb"


TestEntriesModelMemory = EntriesModel.TestCase
TestEntriesModelMemory.settings = STATEFUL
TestEntriesModelRocksDb = RocksDbEntriesModel.TestCase
TestEntriesModelRocksDb.settings = settings(STATEFUL, max_examples=25)


# -- through a job's keyed path ------------------------------------------------------------------


class Leases(ed.KeyedProcessFunction):
    """Grants a lease per resource until an absolute time, with who holds it as metadata."""

    leases = ed.MapState("leases")

    def on_event(self, event, ctx):
        if event["op"] == "grant":
            self.leases.put(event["res"], event["n"], expire_at=event["until"],
                            metadata={"holder": event["holder"]})
        else:
            entry = self.leases.get_with_metadata(event["res"])
            yield None if entry is None else (entry.value, entry.metadata["holder"],
                                              entry.expires_at)


def test_harness_snapshot_and_restore_keep_metadata_and_expiry() -> None:
    from eddies.testing import Harness

    h = Harness(Leases())
    h.event({"op": "grant", "res": "db", "n": 1, "until": 5_000, "holder": "ann"},
            key="k", timestamp=1_000)
    snapshot = h.snapshot()
    restored = Harness(Leases())
    restored.restore(snapshot)
    assert restored.event({"op": "read", "res": "db"}, key="k", timestamp=2_000) == [
        (1, "ann", 5_000)]
    restored.watermark(4_999)
    assert restored.event({"op": "read", "res": "db"}, key="k", timestamp=4_999) == [
        (1, "ann", 5_000)]
    restored.watermark(5_000)
    assert restored.event({"op": "read", "res": "db"}, key="k", timestamp=5_000) == [None]
