"""Time-to-live: event time by default, processing time on request, per entry and per element."""

from __future__ import annotations

import operator

import pytest

import eddies as ed
from eddies.errors import ConfigError, MissingTimestampError
from eddies.state import (
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    ReducingState,
    Ttl,
    TtlConfig,
    TtlStateBackend,
    ValueState,
)
from eddies.testing import Harness

YEARS = 10 * 365 * 86_400_000
EXACT = TtlConfig(sweep_lag_ms=0)
"""Sweeps delete what expired at once, for tests that look at what is stored."""


class Remember(ed.KeyedProcessFunction):
    """Sets a ValueState with a 10 s event-time TTL; reports what it saw before."""

    seen = ValueState("seen", ttl=Ttl(seconds=10))

    def on_event(self, event, ctx):
        before = self.seen.get()
        self.seen.set(event)
        yield before


# -- event time ----------------------------------------------------------------------------------


def test_event_time_ttl_boundary() -> None:
    h = Harness(Remember())
    h.event("v", key="k", timestamp=1_000)
    h.processing_time(YEARS)  # wall-clock time does not expire event-time state
    assert h.state("seen", "k") == "v"
    h.watermark(10_999)
    assert h.state("seen", "k") == "v"
    h.watermark(11_000)
    assert h.state("seen", "k") is None
    assert h.event("w", key="k", timestamp=11_500) == [None], "on_event sees it gone too"


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_event_time_ttl_boundary_after_reload(state, tmp_path) -> None:
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'db'}"
    h = Harness(Remember(), state=spec)
    h.event("v", key="k", timestamp=1_000)
    h.watermark(10_999)
    h.operator.store.clear_cache()
    assert h.state("seen", "k") == "v"
    assert h.event("again", key="k", timestamp=2_000) == ["v"]
    h.watermark(11_999)
    h.operator.store.clear_cache()
    assert h.state("seen", "k") == "again"
    h.watermark(12_000)
    h.operator.store.clear_cache()
    assert h.state("seen", "k") is None
    # Physical deletion lags expiry by one TTL by default (TtlConfig.sweep_lag_ms).
    assert h.operator.backend.inner.count("seen") == 1, "expired, not swept yet"
    h.watermark(21_999)
    assert h.operator.backend.inner.count("seen") == 1
    h.watermark(22_000)
    assert h.operator.backend.inner.count("seen") == 0, "swept: physically gone"
    h.close()


def test_processing_time_clock_does_not_expire_event_time_state() -> None:
    now = [0]
    store = KeyedStateStore(InMemoryStateBackend(), ttl_config=TtlConfig(clock=lambda: now[0]))
    seen = store.bind(ValueState("seen", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    seen.set(1)
    store.flush()
    now[0] = YEARS
    assert store.backend.sweep_all() == 0
    store.clear_cache()
    store.set_key("k", 2_000)
    assert seen.get() == 1


def test_write_from_a_timer_counts_from_the_timer_time() -> None:
    class Later(ed.KeyedProcessFunction):
        note = ValueState("note", ttl=Ttl(seconds=10))

        def on_event(self, event, ctx):
            ctx.timers.register_event_time(5_000)

        def on_timer(self, timestamp, ctx):
            self.note.set(timestamp)

    h = Harness(Later())
    h.event("x", key="k", timestamp=1_000)
    h.watermark(5_000)
    assert h.state("note", "k") == 5_000
    h.watermark(14_999)
    assert h.state("note", "k") == 5_000
    h.watermark(15_000)
    assert h.state("note", "k") is None


def test_late_write_is_born_expired() -> None:
    h = Harness(Remember(), ttl_config=EXACT)
    h.watermark(20_000)
    h.event("late", key="k", timestamp=1_000)  # expires_at 11_000 <= watermark
    assert h.state("seen", "k") is None
    h.checkpoint()
    assert h.operator.backend.inner.count("seen") == 0


def test_write_without_timestamp_counts_from_the_watermark() -> None:
    h = Harness(Remember())
    h.watermark(50_000)
    h.event("v", key="k")
    h.watermark(59_999)
    assert h.state("seen", "k") == "v"
    h.watermark(60_000)
    assert h.state("seen", "k") is None


# -- missing timestamps --------------------------------------------------------------------------


class WriteEverything(ed.KeyedProcessFunction):
    value = ValueState("value", ttl=Ttl(seconds=1))
    items = ListState("items", ttl=Ttl(seconds=1))
    table = MapState("table", ttl=Ttl(seconds=1))
    total = ReducingState("total", operator.add, ttl=Ttl(seconds=1))

    def on_event(self, event, ctx):
        kind = event
        if kind == "value":
            self.value.set(1)
        elif kind == "list":
            self.items.add(1)
        elif kind == "list_all":
            self.items.add_all([1])
        elif kind == "list_update":
            self.items.update([1])
        elif kind == "map":
            self.table.put("a", 1)
        elif kind == "reducing":
            self.total.add(1)


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        ("value", "ValueState 'value'"),
        ("list", "ListState 'items'"),
        ("list_all", "ListState 'items'"),
        ("list_update", "ListState 'items'"),
        ("map", "MapState 'table'"),
        ("reducing", "ReducingState 'total'"),
    ],
)
def test_missing_timestamp(kind, state) -> None:
    h = Harness(WriteEverything())
    with pytest.raises(MissingTimestampError) as err:
        h.event(kind, key=("user", 7))
    message = str(err.value)
    assert state in message
    assert "('user', 7)" in message
    assert "timestamp" in message and "time='processing'" in message
    # With a timestamp the same write works.
    h.event(kind, key=("user", 7), timestamp=1)


def test_no_ttl_and_processing_ttl_need_no_timestamp() -> None:
    class Plain(ed.KeyedProcessFunction):
        plain = ValueState("plain")
        proc = ValueState("proc", ttl=Ttl(seconds=1, time="processing"))

        def on_event(self, event, ctx):
            self.plain.set(event)
            self.proc.set(event)

    h = Harness(Plain())
    h.event("v", key="k")
    assert h.state("plain", "k") == "v"
    assert h.state("proc", "k") == "v"


# -- processing time -----------------------------------------------------------------------------


class ProcRemember(ed.KeyedProcessFunction):
    seen = ValueState("seen", ttl=Ttl(seconds=10, time="processing"))

    def on_event(self, event, ctx):
        self.seen.set(event)


def test_processing_time_ttl_with_the_harness_clock() -> None:
    h = Harness(ProcRemember(), ttl_config=EXACT)
    h.processing_time(1_000)
    h.event("v", key="k")  # no timestamp needed
    h.watermark(YEARS)  # event time does not expire processing-time state
    assert h.state("seen", "k") == "v"
    h.processing_time(10_999)
    assert h.state("seen", "k") == "v"
    h.processing_time(11_000)
    assert h.state("seen", "k") is None
    assert h.operator.backend.inner.count("seen") == 0


def test_processing_time_ttl_with_an_injected_clock() -> None:
    now = [1_000]
    store = KeyedStateStore(
        InMemoryStateBackend(),
        ttl_config=TtlConfig(ttl_ms=10_000, time="processing", clock=lambda: now[0],
                             sweep_lag_ms=0),
    )
    seen = store.bind(ValueState("seen"))  # the config's default TTL applies
    store.set_key("k")
    seen.set("v")
    store.flush()
    now[0] = 10_999
    assert store.backend.sweep_all() == 0
    store.set_key("k")
    assert seen.get() == "v"
    now[0] = 11_000
    assert seen.get() is None, "expired before any sweep"
    assert store.backend.sweep_all() == 1
    store.clear_cache()
    assert seen.get() is None


def test_injected_clock_wins_over_the_harness_clock() -> None:
    now = [1_000]
    h = Harness(ProcRemember(), ttl_config=TtlConfig(clock=lambda: now[0]))
    h.event("v", key="k")
    h.processing_time(10**9)  # moves timers, not this TTL clock
    assert h.state("seen", "k") == "v"
    now[0] = 11_000
    assert h.state("seen", "k") is None


def test_harness_clock_drives_a_ttl_backend_passed_in() -> None:
    backend = TtlStateBackend(InMemoryStateBackend(), TtlConfig())
    h = Harness(ProcRemember(), state=backend)
    h.processing_time(1_000)
    h.event("v", key="k")
    h.processing_time(10_999)
    assert h.state("seen", "k") == "v"
    h.processing_time(11_000)
    assert h.state("seen", "k") is None


# -- update and visibility -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("update", "gone_at"), [("on_write", 11_000), ("on_read_and_write", 15_000)]
)
def test_value_update_mode(update, gone_at) -> None:
    class Touch(ed.KeyedProcessFunction):
        v = ValueState("v", ttl=Ttl(seconds=10, update=update))

        def on_event(self, event, ctx):
            if event == "write":
                self.v.set(1)
            else:
                yield self.v.get()

    h = Harness(Touch())
    h.event("write", key="k", timestamp=1_000)
    assert h.event("read", key="k", timestamp=5_000) == [1]
    h.watermark(gone_at - 1)
    assert h.state("v", "k") == 1
    h.watermark(gone_at)
    assert h.state("v", "k") is None
    assert h.event("read", key="k", timestamp=gone_at) == [None], "no resurrection by a read"


def test_map_and_list_refresh_on_read() -> None:
    class Touch(ed.KeyedProcessFunction):
        m = MapState("m", ttl=Ttl(seconds=10, update="on_read_and_write"))
        items = ListState("items", ttl=Ttl(seconds=10, update="on_read_and_write"))

        def on_event(self, event, ctx):
            if event == "write":
                self.m.put_all({"a": 1, "b": 2})
                self.items.add_all([1, 2])
            else:
                yield self.m.get("a"), self.items.get()

    h = Harness(Touch())
    h.event("write", key="k", timestamp=1_000)
    assert h.event("read", key="k", timestamp=5_000) == [(1, [1, 2])]
    h.watermark(11_000)
    assert h.state("m", "k") == {"a": 1}, "b was not read, so it kept its first expiry"
    assert h.state("items", "k") == [1, 2]
    h.operator.store.clear_cache()
    assert h.state("m", "k") == {"a": 1}
    assert h.state("items", "k") == [1, 2]
    h.watermark(15_000)
    assert h.state("m", "k") is None
    assert h.state("items", "k") is None


def test_visibility_expired_if_present() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    shown = store.bind(ValueState("shown", ttl=Ttl(seconds=10, visibility="expired_if_present")))
    hidden = store.bind(ValueState("hidden", ttl=Ttl(seconds=10)))
    shown_map = store.bind(
        MapState("shown_map", ttl=Ttl(seconds=10, visibility="expired_if_present"))
    )
    shown_list = store.bind(
        ListState("shown_list", ttl=Ttl(seconds=10, visibility="expired_if_present"))
    )
    store.set_key("k", 1_000)
    for handle in (shown, hidden):
        handle.set("v")
    shown_map.put("a", 1)
    shown_list.add(1)
    store.flush()
    store.backend.set_watermark(11_000)  # expired, not yet swept: still present
    for reload in (False, True):
        if reload:
            store.clear_cache()
        store.set_key("k", 11_000)
        assert shown.get() == "v"
        assert hidden.get() is None
        assert shown_map.get("a") == 1
        assert shown_list.get() == [1]
    assert store.backend.sweep_all() == 4
    # Swept: no longer present, from the cache as from the backend.
    for reload in (False, True):
        if reload:
            store.clear_cache()
        store.set_key("k", 11_000)
        assert shown.get() is None
        assert shown_map.get("a") is None
        assert shown_list.get() == []


def test_harness_sweep_ends_expired_if_present() -> None:
    class Show(ed.KeyedProcessFunction):
        v = ValueState("v", ttl=Ttl(seconds=10, visibility="expired_if_present"))

        def on_event(self, event, ctx):
            self.v.set(event)

    h = Harness(Show())
    h.event("x", key="k", timestamp=1_000)
    h.watermark(11_000)  # a watermark sweeps at once
    assert h.state("v", "k") is None


# -- per entry and per element -------------------------------------------------------------------


def test_map_entry_ttl() -> None:
    store = KeyedStateStore(InMemoryStateBackend(), ttl_config=EXACT)
    m = store.bind(MapState("m"))  # no TTL of its own
    store.set_key("k", 1_000)
    m.put("short", 1, ttl=Ttl(seconds=1))
    m.put("long", 2, ttl=Ttl(seconds=100))
    m.put("forever", 3)
    store.flush()
    store.backend.set_watermark(1_999)
    assert dict(m.entries()) == {"short": 1, "long": 2, "forever": 3}
    store.backend.set_watermark(2_000)
    assert dict(m.entries()) == {"long": 2, "forever": 3}
    assert not m.contains("short")
    assert m.get("short", "gone") == "gone"
    assert m.get_many(["short", "long"]) == [None, 2]
    assert len(m) == 2
    assert store.backend.sweep_all() == 1
    store.backend.set_watermark(101_000)
    assert store.backend.sweep_all() == 1
    store.clear_cache()
    store.set_key("k", 101_000)
    assert dict(m.entries()) == {"forever": 3}


def test_map_entry_ttl_overrides_the_state_ttl() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    m = store.bind(MapState("m", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    m.put("default", 1)
    m.put("longer", 2, ttl=Ttl(seconds=60))
    store.flush()
    store.backend.set_watermark(11_000)
    store.backend.sweep_all()
    store.clear_cache()
    store.set_key("k", 11_000)
    assert dict(m.entries()) == {"longer": 2}
    with pytest.raises(ConfigError, match="one MapState uses one clock"):
        m.put("x", 1, ttl=Ttl(seconds=1, time="processing"))


def test_list_element_ttl() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    items = store.bind(ListState("items", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    items.add("a")
    store.set_key("k", 5_000)
    items.add("b")
    store.set_key("k", 6_000)
    items.add_all(["c", "d"])
    store.flush()
    for watermark, expected in [
        (10_999, ["a", "b", "c", "d"]),
        (11_000, ["b", "c", "d"]),
        (15_000, ["c", "d"]),
        (16_000, []),
    ]:
        store.backend.set_watermark(watermark)
        store.backend.sweep_all()
        for reload in (False, True):
            if reload:
                store.clear_cache()
            store.set_key("k", watermark)
            assert items.get() == expected, (watermark, reload)
            assert items.length() == len(expected)
            assert items.is_empty() == (not expected)
    store.set_key("k", 20_000)
    items.add("e")
    store.flush()
    store.clear_cache()
    assert items.get() == ["e"]


def test_list_update_restamps_every_element() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    items = store.bind(ListState("items", ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    items.add_all(["a", "b"])
    store.set_key("k", 8_000)
    items.update(items.get() + ["c"])
    store.flush()
    store.backend.set_watermark(17_999)
    store.backend.sweep_all()
    store.clear_cache()
    assert items.get() == ["a", "b", "c"]
    store.backend.set_watermark(18_000)
    assert items.get() == []


def test_reducing_ttl_restarts_the_fold() -> None:
    store = KeyedStateStore(InMemoryStateBackend())
    total = store.bind(ReducingState("total", operator.add, ttl=Ttl(seconds=10)))
    store.set_key("k", 1_000)
    total.add(5)
    total.add(1)
    store.flush()
    store.backend.set_watermark(11_000)
    store.set_key("k", 12_000)
    total.add(3)
    assert total.get() == 3


# -- switching TTL on and off --------------------------------------------------------------------


def test_ttl_switched_on_and_off_without_migration() -> None:
    db = InMemoryStateBackend()
    before = KeyedStateStore(db)
    old = before.bind(ValueState("v"))
    old_items = before.bind(ListState("items"))
    before.set_key("old", 1_000)
    old.set("never stamped")
    old_items.add("never stamped")
    before.flush()

    with_ttl = KeyedStateStore(db)
    v = with_ttl.bind(ValueState("v", ttl=Ttl(seconds=10)))
    items = with_ttl.bind(ListState("items", ttl=Ttl(seconds=10)))
    with_ttl.set_key("new", 1_000)
    v.set("stamped")
    items.add("stamped")
    with_ttl.flush()
    with_ttl.backend.set_watermark(11_000)
    with_ttl.set_key("old", 11_000)
    assert v.get() == "never stamped", "existing values carry the never stamp"
    assert items.get() == ["never stamped"]
    with_ttl.set_key("new", 11_000)
    assert v.get() is None

    # TTL off again: what was written under TTL keeps its stamp (reads and sweeps agree),
    # new writes never expire.
    with_ttl.set_key("new2", 12_000)
    v.set("stamped too")
    items.add("stamped too")
    with_ttl.flush()
    without = KeyedStateStore(db)
    without.backend.set_watermark(22_000)
    v2 = without.bind(ValueState("v"))
    items2 = without.bind(ListState("items"))
    without.set_key("new2", 22_000)
    assert v2.get() is None
    assert items2.get() == []
    v2.set("plain")
    without.set_key("old", 22_000)
    assert v2.get() == "never stamped"
    without.flush()
    without.backend.set_watermark(10**15)
    without.backend.sweep_all()
    without.clear_cache()
    without.set_key("new2", 10**15)
    assert v2.get() == "plain", "a write without TTL does not inherit the old stamp"
    without.set_key("old", 10**15)
    assert v2.get() == "never stamped"


# -- the Ttl option ------------------------------------------------------------------------------


def test_ttl_duration_adds_up() -> None:
    assert Ttl(ms=1).duration_ms == 1
    assert Ttl(seconds=10).duration_ms == 10_000
    assert Ttl(minutes=1, seconds=30).duration_ms == 90_000
    assert Ttl(hours=1, minutes=1, seconds=1, ms=1).duration_ms == 3_661_001
    assert Ttl(seconds=0.5).duration_ms == 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"seconds": -1},
        {"seconds": 1, "time": "wall"},
        {"seconds": 1, "update": "on_read"},
        {"seconds": 1, "visibility": "always"},
    ],
)
def test_bad_ttl(kwargs) -> None:
    with pytest.raises(ConfigError):
        Ttl(**kwargs)


def test_ttl_must_be_a_ttl() -> None:
    with pytest.raises(ConfigError, match="Ttl"):
        ValueState("v", ttl=10)  # type: ignore[arg-type]


def test_a_refresh_on_read_never_shortens_an_entry_put_with_its_own_longer_ttl() -> None:
    for read in (False, True):
        store = KeyedStateStore(InMemoryStateBackend())
        m = store.bind(MapState("m", ttl=Ttl(ms=100, update="on_read_and_write")))
        store.set_key("k", 0)
        m.put("long", "v", ttl=Ttl(hours=1))
        store.set_key("k", 10)
        if read:
            assert m.get("long") == "v"
        store.flush()
        store.backend.set_watermark(1_000)
        store.set_key("k", 1_000)
        assert m.get("long") == "v"


def test_broadcast_entries_take_no_ttl() -> None:
    class Rules(ed.KeyedBroadcastProcessFunction):
        rules = ed.BroadcastState("rules")

        def on_broadcast(self, event, ctx):
            self.rules.put("r", event, ttl=ed.Ttl(ms=100))

        def on_event(self, event, ctx):
            yield self.rules.get("r")

    with pytest.raises(ConfigError, match="BroadcastState entries do not expire"):
        Harness(Rules()).broadcast("rule", timestamp=0)


def test_a_ttl_expiring_before_1970_is_a_dead_letter_not_a_live_value() -> None:
    """Stamps are unsigned: a write whose expiry would be negative cannot be stored as it
    is, and stored as 0 it would stay live at the input's negative watermarks."""
    class Keep(ed.KeyedProcessFunction):
        v = ed.ValueState("v", ttl=ed.Ttl(ms=100))

        def on_event(self, event, ctx):
            self.v.set(event["n"])
            yield (ctx.key, self.v.get())

    job = ed.Job("old")
    out = ed.sinks.collect()
    events = [{"k": "a", "ts": -10_000, "n": 1}, {"k": "a", "ts": 5, "n": 2}]
    (job.source(ed.sources.iterable(events), timestamp="ts").key_by("k").process(Keep())
     .sink(out))
    result = ed.run_local(job)
    assert result.collected(out) == [("a", 2)]
    assert len(result.dead_letters) == 1
    assert "expires at -9900, before 1970" in result.dead_letters[0]["reason"]
