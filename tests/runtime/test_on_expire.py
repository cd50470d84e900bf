"""``on_expire``: each expired value of a state declared with ``on_expire=True`` reaches the
function once, in expiry-time order, before the watermark moves past it, whatever the batch
sizes, checkpoints and restarts."""

from __future__ import annotations

import random
import struct
import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.errors import ConfigError, UserFunctionError
from eddies.state import InMemoryStateBackend, KeyedStateStore
from eddies.state.keys import state_key
from eddies.testing import Harness

TTL = 1_000
_prefix = KeyedStateStore(InMemoryStateBackend()).prefix  # the local runner's key groups
BOUND = 200


class Sessions(ed.KeyedProcessFunction):
    """A running count per key that starts over after TTL ms of quiet; every run is reported
    when its state expires, together with what the function saw then."""

    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=TTL), on_expire=True)
    total = ed.ReducingState("total", lambda a, b: a + b, ttl=ed.Ttl(ms=2 * TTL),
                             on_expire=True)

    def on_event(self, event, ctx):
        self.acc.set((self.acc.get() or 0) + 1)
        self.total.add(event["v"])

    def on_timer(self, timestamp, ctx):
        yield ("timer", ctx.key, timestamp, self.acc.get())

    def on_expire(self, state, value, ctx):
        # The expired value is gone before the call; the other state is as of ctx.watermark.
        yield ("expired", state, ctx.key, value, ctx.timestamp, ctx.watermark,
               self.acc.get() if state == "acc" else None)


def stored_key(key: Any) -> bytes:
    """The stored-key prefix of ``key`` in the local runner (key group, then the key), which
    orders expiries due at one time."""
    return _prefix(state_key(key))


def reference(events: list[dict[str, Any]]) -> list[tuple]:
    """What a hand-written loop over the same events reports (watermark = max ts - BOUND - 1,
    advanced after each record; a write stamps ts + ttl)."""
    state: dict[tuple[str, Any], list] = {}  # (state, key) -> [value, expires_at]
    out = []
    wm = -(2**63)

    def expire_up_to(limit: int) -> None:
        due = [(e[1], name, key) for (name, key), e in state.items() if e[1] <= limit]
        for at, name, key in sorted(due, key=lambda d: (d[0], stored_key(d[2]), d[1])):
            value = state.pop((name, key))[0]
            acc = state.get(("acc", key))
            out.append(("expired", name, key, value, at, at,
                        acc[0] if name == "acc" and acc and acc[1] > at else None))

    for e in events:
        key, ts = e["key"], e["ts"]
        a = state.get(("acc", key))
        state[("acc", key)] = [(a[0] if a else 0) + 1, ts + TTL]
        t = state.get(("total", key))
        state[("total", key)] = [(t[0] if t else 0) + e["v"], ts + 2 * TTL]
        new_wm = max(wm, ts - BOUND - 1)
        if new_wm > wm:
            expire_up_to(new_wm)
            wm = new_wm
    expire_up_to(2**62)
    return out


def make_events(seed: int, n: int = 400) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t = 10_000
    events = []
    for _ in range(n):
        t += rng.choice([0, 1, 5, 60, 400])
        events.append({"key": rng.choice(["a", "b", "c", "d", 7]),
                       "ts": t - rng.randint(0, BOUND), "v": rng.randint(1, 9)})
    return events


def run(events: list[dict[str, Any]], state: str, batch_size: int, interval: int,
        **options: Any) -> list:
    job = ed.Job("sessions")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(BOUND))
     .key_by("key").process(Sessions(), name="sessions").sink(out))
    ed.run_local(job, state, batch_size=batch_size, checkpoint_interval=interval, **options)
    return out.items


def test_expiries_come_in_time_order_once_each_with_the_value_deleted() -> None:
    h = Harness(Sessions())
    h.event({"v": 1}, key="b", timestamp=100)
    h.event({"v": 2}, key="a", timestamp=100)
    h.event({"v": 3}, key="a", timestamp=500)  # moves a's acc expiry to 1500
    assert h.watermark(1099) == []
    # b's acc expires at 1100; a's moved on to 1500 and fires only then.
    assert h.watermark(1100) == [("expired", "acc", "b", 1, 1100, 1100, None)]
    assert h.state("acc", "b") is None
    assert h.watermark(5000) == [
        ("expired", "acc", "a", 2, 1500, 1500, None),
        ("expired", "total", "b", 1, 2100, 2100, None),
        ("expired", "total", "a", 5, 2500, 2500, None),
    ]
    assert h.watermark(9000) == []  # once per value


def test_expiries_fire_before_timers_at_the_same_time() -> None:
    class WithTimer(Sessions):
        def on_event(self, event, ctx):
            super().on_event(event, ctx)
            ctx.timers.register_event_time(ctx.timestamp + TTL)

    h = Harness(WithTimer())
    h.event({"v": 1}, key="k", timestamp=0)
    h.event({"v": 1}, key="j", timestamp=1)
    # At one time expiries go first: the timer sees no expired value.
    assert h.watermark(TTL) == [("expired", "acc", "k", 1, TTL, TTL, None),
                                ("timer", "k", TTL, None)]
    assert h.watermark(TTL + 1) == [("expired", "acc", "j", 1, TTL + 1, TTL + 1, None),
                                    ("timer", "j", TTL + 1, None)]


def test_a_value_written_already_expired_is_never_read_and_fires_once() -> None:
    class ReadBack(Sessions):
        def on_event(self, event, ctx):
            super().on_event(event, ctx)
            yield ("read", ctx.key, self.acc.get())

    h = Harness(ReadBack())
    h.watermark(5_000)
    # A record later than the TTL: its value is expired as it is written.
    assert h.event({"v": 1}, key="late", timestamp=100) == [("read", "late", None)]
    assert h.event({"v": 1}, key="live", timestamp=5_000) == [("read", "live", 1)]
    # It fires when the watermark next moves (ctx.watermark is then past its stamp), once.
    assert h.watermark(5_001) == [("expired", "acc", "late", 1, 1100, 5_000, None),
                                  ("expired", "total", "late", 1, 2100, 5_000, None)]
    assert h.watermark(9_000) == [("expired", "acc", "live", 1, 6_000, 6_000, None),
                                  ("expired", "total", "live", 1, 7_000, 7_000, None)]


@pytest.mark.parametrize("seed", [1, 2, 3, 21])
def test_results_equal_a_hand_written_loop_for_every_batch_size_and_backend(
    seed: int, tmp_path: Any
) -> None:
    events = make_events(seed)
    expected = reference(events)
    assert len(expected) >= 20
    for i, (size, interval) in enumerate([(1, 1), (7, 13), (64, 50), (5_000, 100_000)]):
        assert run(events, "memory", size, interval) == expected, (size, interval)
        assert run(events, f"rocksdb:{tmp_path / str(i)}", size, interval) == expected


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_values_dropped_from_the_cache_still_fire_in_order(backend: str, tmp_path: Any) -> None:
    # With a cache of 2 keys, most values are read back from the backend when they expire
    # or are rewritten: their queued expiries must still find them, once each.
    events = make_events(5, 300)
    job = ed.Job("sessions")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(BOUND))
     .key_by("key").process(Sessions(), name="sessions").sink(out))
    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'db'}"
    ed.run_local(job, state, batch_size=3, checkpoint_interval=2, cache_entries=2)
    assert out.items == reference(events)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 150), cache=st.integers(1, 4),
       size=st.integers(1, 40), interval=st.integers(1, 60), rocksdb=st.booleans())
def test_any_cache_size_gives_the_hand_written_results(
    seed: int, n: int, cache: int, size: int, interval: int, rocksdb: bool
) -> None:
    # Five keys through a cache of 1-4: queued keys lose their cached values at checkpoints
    # (their slots are parked) and take them back on their next record or expiry.
    events = make_events(seed, n)
    with tempfile.TemporaryDirectory() as tmp:
        state = f"rocksdb:{tmp}/db" if rocksdb else "memory"
        got = run(events, state, size, interval, cache_entries=cache)
    assert got == reference(events)


def test_a_value_cleared_and_set_again_at_one_time_fires_once_for_the_new_value() -> None:
    class Reset(ed.KeyedProcessFunction):
        acc = ed.ValueState("acc", ttl=ed.Ttl(ms=TTL), on_expire=True)

        def on_event(self, event, ctx):
            if event.get("reset"):
                self.acc.clear()
            self.acc.set(event["v"])

        def on_expire(self, state, value, ctx):
            yield (ctx.key, value, ctx.timestamp)

    h = Harness(Reset())
    h.event({"v": 1}, key="k", timestamp=100)
    h.event({"v": 2, "reset": True}, key="k", timestamp=100)  # same stamp, a new value
    h.event({"v": 3}, key="j", timestamp=100)
    h.event({"v": 4, "reset": True}, key="j", timestamp=50)  # an earlier stamp
    assert h.watermark(5_000) == [("j", 4, 1050), ("k", 2, 1100)]
    assert h.watermark(9_000) == []


def test_a_restored_snapshot_fires_what_the_uninterrupted_run_fires(tmp_path: Any) -> None:
    events = make_events(4, 300)
    whole = Harness(Sessions(), f"rocksdb:{tmp_path / 'whole'}")
    first = Harness(Sessions(), f"rocksdb:{tmp_path / 'first'}")
    expected, got = [], []
    wm = -(2**63)
    for i, e in enumerate(events):
        if i == 150:
            snap = first.snapshot()
            first.close()
            first = Harness(Sessions(), f"rocksdb:{tmp_path / 'second'}")
            first.restore(snap)
        for h in (whole, first):
            h.event({"v": e["v"]}, key=e["key"], timestamp=e["ts"])
        if e["ts"] - BOUND - 1 > wm:
            wm = e["ts"] - BOUND - 1
            expected += whole.watermark(wm)
            got += first.watermark(wm)
    expected += whole.watermark(2**62)
    got += first.watermark(2**62)
    assert got == expected
    assert len([o for o in expected if o[1] == "acc"]) > 20


def test_on_expire_needs_the_method_and_an_event_time_ttl() -> None:
    class NoMethod(ed.KeyedProcessFunction):
        acc = ed.ValueState("acc", ttl=ed.Ttl(ms=5), on_expire=True)

        def on_event(self, event, ctx):
            pass

    with pytest.raises(ConfigError, match="must define on_expire"):
        Harness(NoMethod())
    with pytest.raises(ConfigError, match="event-time ttl"):
        ed.ValueState("x", ttl=ed.Ttl(ms=5, time="processing"), on_expire=True)
    with pytest.raises(ConfigError, match="event-time ttl"):
        ed.ReducingState("x", max, on_expire=True)


@pytest.mark.parametrize("fires", [False, True])
def test_a_timer_reads_a_late_value_rewritten_still_expired_as_absent(fires: bool) -> None:
    class F(ed.KeyedProcessFunction):
        acc = ed.ValueState("acc", ttl=ed.Ttl(ms=TTL), on_expire=fires)

        def on_event(self, event, ctx):
            self.acc.set(event["v"])
            if "timer" in event:
                ctx.timers.register_event_time(event["timer"])

        def on_timer(self, timestamp, ctx):
            yield ("timer", ctx.key, timestamp, ctx.watermark, self.acc.get())

        def on_expire(self, state, value, ctx):
            yield ("expired", ctx.key, value, ctx.timestamp)

    h = Harness(F())
    h.watermark(9_999)
    assert h.event({"v": 1}, key="b", timestamp=100) == []  # stamp 1,100: expired already
    assert h.watermark(9_999) == []  # no move (the queue's next time is asked for)
    # Rewritten at stamp 2,000, still expired, with a timer at 1,500 between the stamps:
    # the timer fires first (at the watermark, 9,999) and reads nothing, as with plain TTL.
    assert h.event({"v": 2, "timer": 1_500}, key="b", timestamp=1_000) == []
    fired = [("timer", "b", 1_500, 9_999, None)]
    if fires:
        fired.append(("expired", "b", 2, 2_000))
    assert h.watermark(10_000) == fired


class TimersFromExpiries(ed.KeyedProcessFunction):
    """Each expiry registers a timer ``value % 7 * 60`` ms later (0: at its own time); each
    timer whose time is odd reports the key's state as the timer sees it."""

    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=TTL), on_expire=True)

    def on_event(self, event, ctx):
        self.acc.set(event["v"])

    def on_expire(self, state, value, ctx):
        ctx.timers.register_event_time(ctx.timestamp + value % 7 * 60)
        yield ("expired", ctx.key, value, ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        yield ("timer", ctx.key, timestamp, self.acc.get())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 1_500),
                          st.integers(0, 50)), min_size=1, max_size=12))
def test_timers_registered_by_on_expire_fire_in_time_order_in_one_advance(events) -> None:
    def run(steps: bool) -> list[Any]:
        h = Harness(TimersFromExpiries())
        for key, ts, v in events:
            h.event({"v": v}, key=key, timestamp=ts)
        if not steps:
            return h.watermark(5_000)
        out: list[Any] = []
        for wm in range(0, 5_001):
            out += h.watermark(wm)
        return out

    one = run(steps=False)
    assert one == run(steps=True)
    times = [o[3] if o[0] == "expired" else o[2] for o in one]
    assert times == sorted(times)
    assert len([o for o in one if o[0] == "expired"]) == len({key for key, _, _ in events})


@pytest.mark.parametrize("states", [1, 2])
def test_an_error_in_on_expire_names_on_expire_and_the_state(states: int) -> None:
    class Fails(ed.KeyedProcessFunction):
        acc = ed.ValueState("acc", ttl=ed.Ttl(ms=100), on_expire=True)
        if states == 2:
            other = ed.ValueState("other", ttl=ed.Ttl(ms=100), on_expire=True)

        def on_event(self, event, ctx):
            self.acc.set(1)
            ctx.timers.register_event_time(event["timer"])

        def on_expire(self, state, value, ctx):
            if ctx.key == "b":
                raise ValueError("boom in on_expire")

        def on_timer(self, timestamp, ctx):
            raise ValueError("boom in on_timer")

    def run(events: list[dict[str, Any]]) -> None:
        job = ed.Job("e")
        (job.source(ed.sources.iterable(events), timestamp="ts")
         .key_by("k").process(Fails(), name="f").sink(ed.sinks.collect()))
        ed.run_local(job, "memory")

    with pytest.raises(UserFunctionError,
                       match=r"operator 'f' on key 'b' failed in on_expire of state 'acc' at "
                             r"1100: ValueError: boom in on_expire"):
        run([{"k": "b", "ts": 1_000, "timer": 5_000}])
    # Expiries that returned leave the timers' errors named as theirs
    with pytest.raises(UserFunctionError,
                       match=r"operator 'f' on key 'a' failed in on_timer at 2000: ValueError"):
        run([{"k": "a", "ts": 1_000, "timer": 2_000}])


class TimerAmongOthers(ed.KeyedProcessFunction):
    """``a``'s expiry at 1,100 registers a timer at 1,150, before ``b``'s expiry at 1,200,
    while other keys' timers fill the bounded timer heap (``c``'s expiry registers one
    too, after)."""

    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=1_000), on_expire=True)

    def on_event(self, event, ctx):
        if ctx.key in ("a", "b", "c"):
            self.acc.set(1)
        elif ctx.key != "tick":
            ctx.timers.register_event_time(1_500 if ctx.key == "x" else 1_600)

    def on_expire(self, state, value, ctx):
        if ctx.key in ("a", "c"):
            ctx.timers.register_event_time(1_150 if ctx.key == "a" else 1_700)
        yield ("expired", ctx.key, ctx.timestamp)

    def on_timer(self, timestamp, ctx):
        yield ("timer", ctx.key, timestamp)


class TimerAmongOthers2(TimerAmongOthers):
    other = ed.ValueState("other", ttl=ed.Ttl(ms=50_000), on_expire=True)


@pytest.mark.parametrize(("fn", "keys", "cache"), [
    (TimerAmongOthers, "abxyzw", 4),
    (TimerAmongOthers2, "acbx", 2),
])
@pytest.mark.parametrize("cached", [False, True])
def test_a_timer_from_on_expire_fires_in_order_when_timers_spill_from_memory(
        fn: type, keys: str, cache: int, cached: bool) -> None:
    stamps = {"a": 100, "c": 100, "b": 200}
    events = [{"key": k, "ts": stamps.get(k, 300)} for k in keys]
    events += [{"key": "tick", "ts": 1_301}, {"key": "tick", "ts": 5_000}]
    job = ed.Job("spill")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(0))
     .key_by("key").process(fn(), name="f").sink(out))
    ed.run_local(job, "memory", batch_size=100, **({"cache_entries": cache} if cached else {}))
    assert out.items.index(("timer", "a", 1_150)) == out.items.index(("expired", "a", 1_100)) + 1
    times = [o[2] for o in out.items]
    assert times == sorted(times)


def test_a_write_whose_stamp_cannot_be_stored_leaves_the_state_as_it_was() -> None:
    class Keep(ed.KeyedProcessFunction):
        acc = ed.ValueState("acc", ttl=ed.Ttl(ms=1_000), on_expire=True)

        def on_event(self, event, ctx):
            if event.get("unstampable"):  # the fault: a time no stamp can hold
                self.acc.store.timestamp = 1.5
            self.acc.set(event["v"])

        def on_expire(self, state, value, ctx):
            yield ("expired", ctx.key, value, ctx.timestamp)

    h = Harness(Keep())
    with pytest.raises(struct.error, match="integer"):
        h.event({"v": 1, "unstampable": True}, key="k", timestamp=1_000)
    assert h.state("acc", "k") is None  # nothing of the failed write is visible
    h.event({"v": 2}, key="k", timestamp=2_000)  # stamped 3,000: queued, not taken as queued
    assert h.watermark(10_000) == [("expired", "k", 2, 3_000)]
