"""The bounded write-back cache: eviction keeps results equal, and the cache stays bounded."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.local import LocalRunner
from eddies.state import (
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    RocksDbStateBackend,
    Ttl,
    ValueState,
)

T0 = 1_700_000_000_000


class Totals(ed.KeyedProcessFunction):
    """Every primitive, read and written per event, so evictions hit all of them."""

    count = ed.ValueState("count", default=0)
    seen = ed.ValueState("seen", ttl=ed.Ttl(seconds=30))
    recent = ed.ListState("recent")
    per_page = ed.MapState("per_page")

    def on_event(self, event, ctx):
        n = self.count.get() + 1
        self.count.set(n)
        first = self.seen.get() is None
        self.seen.set(ctx.timestamp)
        self.recent.add(event["v"])
        if self.recent.length() > 3:
            self.recent.update(self.recent.get()[-3:])
        self.per_page.put(event["page"], self.per_page.get(event["page"], 0) + 1)
        yield (ctx.key, n, first, self.recent.get(), sorted(self.per_page.entries()))


def events(n: int, keys: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [{"user": f"u{rng.randrange(keys)}", "ts": T0 + i * 500, "v": rng.randrange(100),
             "page": rng.choice("abc")} for i in range(n)]


def run(evs: list[dict], state: str, **options) -> tuple[list, ed.RunStats]:
    job = ed.Job("cache")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(evs), timestamp="ts")
        .key_by("user").process(Totals()).sink(out))
    result = ed.run_local(job, state, batch_size=50, **options)
    return result.collected(out), result.stats


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_small_cache_gives_the_same_results(tmp_path: Path, backend: str) -> None:
    evs = events(3_000, keys=200)

    def state(name: str) -> str:
        return "memory" if backend == "memory" else f"rocksdb:{tmp_path / name}"

    expected, _ = run(evs, state("big"), checkpoint_interval=100)
    got, _ = run(evs, state("small"), checkpoint_interval=100, cache_entries=5)
    assert got == expected


def test_cache_stays_within_its_limit_after_each_checkpoint(tmp_path: Path) -> None:
    evs = events(4_000, keys=1_000)
    sizes: list[int] = []
    job = ed.Job("bounded")
    (job.source(ed.sources.iterable(evs), timestamp="ts")
        .key_by("user").process(Totals()).sink(ed.sinks.collect()))
    runner = LocalRunner(job, f"rocksdb:{tmp_path / 'db'}", checkpoint_interval=100,
                         batch_size=50, cache_entries=20,
                         on_progress=lambda stats: sizes.append(cached()))

    def cached() -> int:
        return max(op.store.cached_entries() for op in runner.operators.values())

    result = runner.run()
    assert result.stats.events_in == 4_000
    # Between checkpoints a cache takes in at most one interval's new keys (100 events);
    # right after one it is back at its limit.
    assert max(sizes) <= 20 + 100
    store = next(iter(runner.operators.values())).store
    assert len(store.cached_prefixes) <= 20
    assert sum(h.evictions for h in store.handles.values()) > 0


def test_a_cache_outgrowing_twice_its_limit_brings_the_checkpoint_forward(
    tmp_path: Path,
) -> None:
    evs = events(2_000, keys=2_000)
    expected, plain = run(evs, "memory", checkpoint_interval=10**9)
    got, stats = run(evs, f"rocksdb:{tmp_path / 'db'}", checkpoint_interval=10**9,
                     cache_entries=100)
    assert got == expected
    assert plain.checkpoints == 1  # the final one
    assert stats.checkpoints > 5  # every round that left more than 200 keys cached


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_trim_drops_only_clean_entries(tmp_path: Path, backend: str) -> None:
    db = InMemoryStateBackend() if backend == "memory" else RocksDbStateBackend(tmp_path)
    store = KeyedStateStore(db, cache_entries=3)
    value = store.bind(ValueState("v"))
    items = store.bind(ListState("l"))
    table = store.bind(MapState("m"))
    expiring = store.bind(ValueState("e", ttl=Ttl(seconds=1)))
    for i in range(10):
        store.set_key(f"k{i}", T0 + i)
        value.set(i)
        items.add(i)
        table.put(("x", i), i)
        expiring.set(i)
    store.flush()  # writes all ten; the caches trim at the next collect (or trim())
    for i in range(10, 12):  # two dirty keys, which trimming must keep
        store.set_key(f"k{i}", T0 + i)
        value.set(i)
    assert store.trim() > 0
    assert len(value._cache) == 3 and {"k10", "k11"} <= set(value._cache)
    assert len(items._cache) == 3 and len(table._cache) == 3 and len(expiring._cache) == 3
    for i in range(12):  # evicted keys read back from the backend, TTL stamps included
        store.set_key(f"k{i}", T0 + i)
        assert value.get() == i
        if i < 10:
            assert items.get() == [i]
            assert dict(table.entries()) == {("x", i): i}
            assert expiring.get() == i
    store.backend.set_watermark(T0 + 1_000 + 4)  # k0..k4 of "e" expire, evicted or not
    for i in range(10):
        store.set_key(f"k{i}", T0 + i)
        assert expiring.get() == (None if i <= 4 else i)
    db.close()


def test_a_fresh_state_answers_misses_without_backend_reads() -> None:
    db = InMemoryStateBackend()
    store = KeyedStateStore(db)
    value = store.bind(ValueState("v", default=0))
    for i in range(100):
        store.set_key(i)
        value.set(value.get() + 1)
    assert db.round_trips == 1  # one range read found the state empty
    store.flush()
    store.clear_cache()
    store.set_key(5)
    assert value.get() == 1  # after clear_cache, misses read the backend again


def test_cache_entries_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="cache_entries"):
        KeyedStateStore(InMemoryStateBackend(), cache_entries=0)
