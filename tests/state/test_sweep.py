"""The TTL sweep: it deletes expired entries through the expiry index, never scanning live data."""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from eddies.errors import ConfigError
from eddies.state import (
    Batch,
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    RocksDbStateBackend,
    StateBackend,
    Ttl,
    TtlConfig,
    TtlStateBackend,
    ValueState,
    encode_value,
)
from eddies.state.backend import DELETE
from eddies.state.ttl import EXPIRY_CF, EXPIRY_PROC_CF

EXACT = TtlConfig(sweep_lag_ms=0)
"""Sweeps delete what expired at once: these tests pin down when each entry goes."""


class CountingBackend(StateBackend):
    """Passes every call to a real backend and counts what each column family was asked."""

    def __init__(self, inner: StateBackend) -> None:
        super().__init__()
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.point_reads: Counter[str] = Counter()  # keys asked by get/multi_get
        self.scans: Counter[str] = Counter()  # iterate calls
        self.scanned: Counter[str] = Counter()  # entries those scans yielded
        self.asked: dict[str, list[bytes]] = {}

    def get(self, cf: str, key: bytes) -> bytes | None:
        self.point_reads[cf] += 1
        self.asked.setdefault(cf, []).append(key)
        return self.inner.get(cf, key)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        self.point_reads[cf] += len(keys)
        self.asked.setdefault(cf, []).extend(keys)
        return self.inner.multi_get(cf, keys)

    def iterate(self, cf, lower=None, upper=None, reverse=False) -> Iterator[tuple[bytes, bytes]]:
        self.scans[cf] += 1
        for item in self.inner.iterate(cf, lower, upper, reverse):
            self.scanned[cf] += 1
            yield item

    def _apply(self, batch: Batch, sync: bool) -> None:
        self.inner.write(batch, sync)

    def column_families(self) -> list[str]:
        return self.inner.column_families()

    def count(self, cf: str) -> int:
        return self.inner.count(cf)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["memory", "rocksdb"])
def inner(request, tmp_path: Path) -> Iterator[StateBackend]:
    db = InMemoryStateBackend() if request.param == "memory" else RocksDbStateBackend(tmp_path)
    yield db
    db.close()


def _dump(db: StateBackend, cf: str) -> dict[bytes, bytes]:
    return dict(db.iterate(cf))


def test_sweep_touches_only_the_index_and_the_expired(inner: StateBackend) -> None:
    counting = CountingBackend(inner)
    store = KeyedStateStore(counting, ttl_config=EXACT)
    short = store.bind(ValueState("short", ttl=Ttl(seconds=10)))
    long_ = store.bind(ValueState("long", ttl=Ttl(hours=1)))
    plain = store.bind(ValueState("plain"))
    items = store.bind(ListState("items", ttl=Ttl(seconds=10)))
    table = store.bind(MapState("table"))
    for i in range(1_000):
        store.set_key(("user", i), 1_000)
        long_.set(i)
        plain.set(i)
        table.put("forever", i)
        table.put("brief", i, ttl=Ttl(hours=1))
        if i % 10 == 0:  # 100 keys hold short-lived entries
            short.set(i)
            items.add(i)
            table.put("short", i, ttl=Ttl(seconds=10))
        store.set_key(("user", i), 5_000)
        items.add(-i)  # every list also has an element that outlives the sweep
    store.flush()
    live_before = {cf: _dump(inner, cf) for cf in ("long", "plain")}
    table_before = _dump(inner, "table")
    items_before = _dump(inner, "items")
    assert inner.count(EXPIRY_CF) == 1_000 * 2 + 100 * 3 + 1_000

    counting.reset()
    store.backend.set_watermark(11_000)
    assert store.backend.sweep_all() == 300

    # Reads: index scans plus exactly one point read per index entry up to the watermark.
    assert set(counting.scans) <= {EXPIRY_CF, EXPIRY_PROC_CF}, "no scan of a live state"
    assert counting.scanned[EXPIRY_CF] <= 300 + 1
    assert counting.point_reads == Counter({"short": 100, "items": 100, "table": 100})
    assert counting.point_reads["long"] == counting.point_reads["plain"] == 0
    # Writes: the expired entries and their index entries went; live data is byte-identical.
    assert inner.count("short") == 0
    assert {cf: _dump(inner, cf) for cf in ("long", "plain")} == live_before
    assert inner.count("table") == 2_000
    assert {k: v for k, v in table_before.items() if k in _dump(inner, "table")} == _dump(
        inner, "table"
    )
    assert inner.count("items") == 1_000
    assert set(_dump(inner, "items")) < set(items_before)
    assert inner.count(EXPIRY_CF) == 1_000 * 2 + 1_000
    assert store.backend.expired_deleted == 300

    # Nothing expired is left: a second sweep reads one index entry and stops.
    counting.reset()
    assert store.backend.sweep_all() == 0
    assert sum(counting.point_reads.values()) == 0
    assert counting.scanned[EXPIRY_CF] <= 2


def test_sweep_skips_values_rewritten_with_a_later_expiry(inner: StateBackend) -> None:
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    v.set("first")
    store.flush()
    store.set_key("k", 5_000)
    v.set("second")
    store.flush()
    # Lazy index: the entry at 11_000 still precedes the new stamp, so no second one.
    assert _index_times(inner) == [11_000]
    store.backend.set_watermark(11_000)
    assert store.backend.sweep_all() == 0, "the stored value now expires at 15_000"
    assert _index_times(inner) == [15_000], "the sweep moved the entry to the new stamp"
    assert inner.count("v") == 1
    store.backend.set_watermark(15_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0
    assert inner.count(EXPIRY_CF) == 0


def _index_times(inner: StateBackend) -> list[int]:
    return [int.from_bytes(k[:8], "big") for k, _ in inner.iterate(EXPIRY_CF)]


def test_lazy_index_adds_an_entry_when_a_write_moves_the_stamp_earlier(
    inner: StateBackend,
) -> None:
    """Out-of-order event times: a later write may expire before the indexed time; it gets
    an entry of its own, so the sweep deletes it on time."""
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("k", 5_000)
    v.set("first")
    store.flush()
    store.set_key("k", 3_000)
    v.set("second")  # expires at 13_000, before the entry at 15_000
    store.flush()
    assert _index_times(inner) == [13_000, 15_000]
    store.backend.set_watermark(13_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0
    store.backend.set_watermark(15_000)
    assert store.backend.sweep_all() == 0
    assert inner.count(EXPIRY_CF) == 0


def test_lazy_index_after_a_cache_reset_indexes_again(inner: StateBackend) -> None:
    """A handle that forgot its index times (restore, eviction) writes an entry again: a
    duplicate at worst, never a value without one."""
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    v.set("first")
    store.flush()
    store.clear_cache()
    store.set_key("k", 2_000)
    v.set("second")
    store.flush()
    assert _index_times(inner) == [11_000, 12_000]
    store.backend.set_watermark(12_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


@pytest.mark.parametrize("ttl", [Ttl(seconds=10), Ttl(seconds=10, update="on_read_and_write")],
                         ids=["on_write", "on_read_and_write"])
def test_lazy_index_rewrite_of_a_swept_key_indexes_again(inner: StateBackend, ttl: Ttl) -> None:
    """The handle still caches the swept value's stamp; that stamp vouches for no entry any
    more (the sweep took it), so the next write gets one."""
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=ttl))
    store.set_key("k", 1_000)
    v.set("first")
    store.flush()
    store.backend.set_watermark(11_000)
    assert store.backend.sweep_all() == 1
    store.set_key("k", 12_000)
    v.set("again")
    store.flush()
    assert _index_times(inner) == [22_000]
    store.backend.set_watermark(22_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


@pytest.mark.parametrize("ttl", [Ttl(seconds=10), Ttl(seconds=10, update="on_read_and_write")],
                         ids=["on_write", "on_read_and_write"])
def test_lazy_index_sweep_between_a_write_and_its_collect(inner: StateBackend, ttl: Ttl) -> None:
    """A write vouched for by the stored stamp's entry, then a sweep that deletes the stored
    value (and its entry) before the write is collected: the write is indexed after all."""
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=ttl))
    store.set_key("k", 1_000)
    v.set("first")
    store.flush()
    store.set_key("k", 5_000)
    v.set("second")  # expires at 15_000; the entry at 11_000 vouches for it
    store.backend.set_watermark(11_000)
    assert store.backend.sweep_all() == 1, "the stored value still expires at 11_000"
    store.flush()
    assert _index_times(inner) == [15_000]
    store.backend.set_watermark(15_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


def test_sweep_floor_sees_entries_written_below_it(inner: StateBackend) -> None:
    """After a sweep to 20_000 the next one starts there, unless an entry was written below
    (a late event's short remaining life)."""
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("a", 1_000)
    v.set(1)
    store.flush()
    store.backend.set_watermark(20_000)
    assert store.backend.sweep_all() == 1
    store.set_key("b", 5_000)  # expires at 15_000, already behind the clock
    v.set(2)
    store.flush()
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


def test_sweep_drops_index_entries_of_cleared_values(inner: StateBackend) -> None:
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    v.set("x")
    store.flush()
    v.clear()
    store.flush()
    store.backend.set_watermark(11_000)
    assert store.backend.sweep_all() == 0
    assert inner.count(EXPIRY_CF) == 0


def test_sweep_steps_are_bounded(inner: StateBackend) -> None:
    ttl = TtlStateBackend(inner, TtlConfig(sweep_batch=7, sweep_lag_ms=0))
    batch = Batch()
    for i in range(30):
        batch.put("s", b"k%03d" % i, encode_value(i, 1_000 + i))
    ttl.write(batch)
    ttl.set_watermark(1_019)  # 20 expired
    assert ttl.sweep(limit=5) == 5
    assert ttl.sweep() == 7
    assert ttl.sweep() == 7
    assert ttl.sweep() == 1
    assert ttl.sweep() == 0
    assert inner.count("s") == 10
    assert sorted(_dump(inner, "s"))[0] == b"k020"


def test_sweep_deletes_reach_write_listeners(inner: StateBackend) -> None:
    """The Kafka changelog listens to batches: sweeps must reach it as deletes."""
    seen: list[tuple[str, bytes]] = []
    inner.add_write_listener(
        lambda batch: seen.extend((cf, key) for kind, cf, key, _ in batch.singles() if kind == DELETE)
    )
    store = KeyedStateStore(inner, ttl_config=EXACT)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    v.set(1)
    store.flush()
    store.backend.set_watermark(11_000)
    store.backend.sweep_all()
    assert [cf for cf, _ in seen] == ["v", EXPIRY_CF]
    assert seen[0][1] == store.prefix(("k",))


def test_processing_time_sweep(inner: StateBackend) -> None:
    now = [0]
    store = KeyedStateStore(inner, ttl_config=TtlConfig(clock=lambda: now[0], sweep_lag_ms=0))
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10, time="processing")))
    e = store.bind(ValueState("e", ttl=Ttl(seconds=10)))
    store.set_key("k", 0)
    v.set(1)
    e.set(1)
    store.flush()
    now[0] = 10_000
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0
    assert inner.count("e") == 1
    store.backend.set_watermark(10_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("e") == 0


# -- a million keys --------------------------------------------------------------------------------

MILLION = 1_000_000


@pytest.mark.slow
def test_memory_stays_flat_while_a_million_keys_expire(tmp_path: Path) -> None:
    """1M TTL'd keys expire in one sweep_all(); Python memory stays bounded by the step size."""
    db = RocksDbStateBackend(tmp_path / "state")
    ttl = TtlStateBackend(db, TtlConfig(sweep_batch=10_000, sweep_lag_ms=0))
    keep = encode_value("keep")  # never expires
    step = 50_000
    for start in range(0, MILLION, step):
        batch = Batch()
        ops = batch.ops
        for i in range(start, start + step):
            # Expiry times spread over 1000..1999 so the index is not in key order.
            ops.append((0, "dedup", b"k%07d" % i, encode_value(1, 1_000 + i % 1_000)))
        if start == 0:
            for i in range(100):
                ops.append((0, "dedup", b"live%03d" % i, keep))
        ttl.write(batch)
    del batch, ops
    ttl.set_watermark(2_000)
    gc.collect()

    tracemalloc.start()
    try:
        deleted = ttl.sweep_all()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert deleted == MILLION
    assert peak < 50 * 1024 * 1024, f"sweep peak {peak / 1e6:.1f} MB"
    assert ttl.sweeps >= MILLION // 10_000, "done in bounded steps"
    assert list(db.iterate("dedup")) == [(b"live%03d" % i, keep) for i in range(100)]
    assert next(iter(db.iterate(EXPIRY_CF)), None) is None
    db.close()


def test_sweep_lag_defers_deletion_not_expiry(inner: StateBackend) -> None:
    """With sweep_lag_ms an expired value reads as absent at once but is deleted only once
    the clock is that far past its stamp; one overwritten meanwhile needs no deletion."""
    store = KeyedStateStore(inner, ttl_config=TtlConfig(sweep_lag_ms=5_000))
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    for key in ("a", "b"):
        store.set_key(key, 1_000)
        v.set(key)
    store.flush()
    store.backend.set_watermark(11_000)
    store.set_key("a", 11_000)
    assert v.get() is None, "expired at 11_000 whatever the lag"
    assert store.backend.sweep_all() == 0
    assert inner.count("v") == 2
    store.set_key("b", 12_000)
    v.set("b again")  # overwrites the expired value; expires at 22_000
    store.flush()
    store.backend.set_watermark(16_000)
    assert store.backend.sweep_all() == 1, "only a is left to delete"
    store.set_key("b", 16_000)
    assert v.get() == "b again"
    store.backend.set_watermark(27_000)
    assert store.backend.sweep_all() == 1
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


def test_sweep_lag_lowers_the_index_horizon(inner: StateBackend) -> None:
    """With a sweep lag, sweeps reach only the watermark less the lag: a key rewritten after
    its stamp expired but before a sweep reached it keeps its index entry (the sweep moves it
    on), and one rewritten after a sweep reached its stamp gets a new entry."""
    store = KeyedStateStore(inner, ttl_config=TtlConfig(sweep_lag_ms=5_000))
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    for key in ("a", "b"):
        store.set_key(key, 1_000)
        v.set(key)  # expires at 11_000
    store.flush()
    assert _index_times(inner) == [11_000, 11_000]
    store.backend.set_watermark(13_000)  # both expired; sweeps reach 8_000
    assert store.backend.index_horizon("v") == 8_000
    store.set_key("a", 13_000)
    v.set("a again")  # expires at 23_000: the entry at 11_000 is not swept yet and vouches
    store.flush()
    assert _index_times(inner) == [11_000, 11_000], "no new entry for a"
    store.backend.set_watermark(16_000)  # sweeps reach 11_000: b goes, a's entry moves on
    assert store.backend.sweep_all() == 1
    assert _index_times(inner) == [23_000]
    store.set_key("b", 16_000)
    assert v.get() is None
    v.set("b again")  # expires at 26_000; the sweep took b's entry, so b needs a new one
    store.flush()
    assert _index_times(inner) == [23_000, 26_000]
    store.backend.set_watermark(31_000)  # sweeps reach 26_000
    assert store.backend.sweep_all() == 2
    assert inner.count("v") == 0 and inner.count(EXPIRY_CF) == 0


def test_default_sweep_lag_is_the_shortest_ttl_of_each_clock() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    ttl = store.backend
    assert (ttl.sweep_lag("event"), ttl.sweep_lag("processing")) == (0, 0), "no TTL yet"
    store.bind(ListState("recent", ttl=Ttl(minutes=1)))
    store.bind(ValueState("seen", ttl=Ttl(seconds=10)))
    store.bind(ValueState("session", ttl=Ttl(seconds=5, time="processing")))
    assert (ttl.sweep_lag("event"), ttl.sweep_lag("processing")) == (10_000, 5_000)
    ttl.set_watermark(100_000)
    assert ttl.index_horizon("seen") == 90_000
    # A MapState entry with a shorter TTL of its own shortens the lag, and the horizon moves
    # up with it (sweeps now reach further).
    m = store.bind(MapState("m"))
    store.set_key("k", 100_000)
    m.put("brief", 1, ttl=Ttl(seconds=2))
    assert ttl.sweep_lag("event") == 2_000
    assert ttl.index_horizon("seen") == 98_000


def test_default_sweep_lag_is_zero_on_a_clock_that_shows_expired_values() -> None:
    """visibility="expired_if_present" states are read until deleted: deleting late would
    show them longer, so their clock keeps no lag (the other clock still does)."""
    store = KeyedStateStore(InMemoryStateBackend())
    store.bind(ValueState("seen", ttl=Ttl(seconds=10)))
    store.bind(ValueState("shown", ttl=Ttl(minutes=1, visibility="expired_if_present")))
    store.bind(ValueState("session", ttl=Ttl(seconds=5, time="processing")))
    assert store.backend.sweep_lag("event") == 0
    assert store.backend.sweep_lag("processing") == 5_000


def test_an_entry_ttl_visibility_does_not_drop_the_lag() -> None:
    """Reads of a MapState show what the map's own Ttl says, so an entry Ttl asking for
    expired_if_present shows nothing and keeps the lag."""
    store = KeyedStateStore(InMemoryStateBackend())
    m = store.bind(MapState("m", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    m.put("a", 1, ttl=Ttl(seconds=20, visibility="expired_if_present"))
    assert store.backend.sweep_lag("event") == 10_000


def test_a_sweep_lag_given_is_kept() -> None:
    store = KeyedStateStore(InMemoryStateBackend(), ttl_config=TtlConfig(sweep_lag_ms=7))
    store.bind(ValueState("seen", ttl=Ttl(seconds=10)))
    store.bind(ValueState("shown", ttl=Ttl(minutes=1, visibility="expired_if_present")))
    assert (store.backend.sweep_lag("event"), store.backend.sweep_lag("processing")) == (7, 7)


def test_default_sweep_lag_deletes_one_ttl_after_expiry(inner: StateBackend) -> None:
    store = KeyedStateStore(inner)
    v = store.bind(ValueState("v", ttl=Ttl(seconds=10)))
    store.set_key("a", 1_000)
    v.set("a")  # expires at 11_000, deleted once the watermark reaches 21_000
    store.flush()
    store.backend.set_watermark(11_000)
    store.set_key("a", 11_000)
    assert v.get() is None
    store.backend.set_watermark(20_999)
    assert store.backend.sweep_all() == 0 and inner.count("v") == 1
    store.backend.set_watermark(21_000)
    assert store.backend.sweep_all() == 1 and inner.count("v") == 0


def test_sweep_lag_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="sweep_lag_ms"):
        TtlConfig(sweep_lag_ms=-1)
