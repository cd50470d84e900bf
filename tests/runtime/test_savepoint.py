"""Savepoints: a run stopped half-way, saved, and restored (into memory, into RocksDB, with
another max_parallelism, into a changed job) continues exactly as one uninterrupted run (or
as a plain-Python reference of the changed job); the file format is pinned by golden bytes;
whatever does not fit stops before the first event with a message that names the operator
and state and says what to do."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.errors import SavepointError, StateIdentityError
from eddies.runtime.cli import main
from eddies.runtime.local import LocalRunner
from eddies.runtime.savepoint import (
    MAGIC,
    SavepointEntry,
    SavepointWriter,
    create_savepoint,
    read_savepoint,
)
from eddies.state.memory import InMemoryStateBackend
from eddies.state.rocksdb import RocksDbStateBackend


def write_events(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def run_until(job: ed.Job, state, n: int, **options) -> LocalRunner:
    """Run ``job`` and stop it (with its final checkpoint) once it has read ``n`` events."""
    runner: LocalRunner | None = None

    def progress(stats):
        if stats.events_in >= n:
            runner.request_stop()

    runner = LocalRunner(job, state, batch_size=7, checkpoint_interval=20,
                         on_progress=progress, **options)
    runner.result = runner.run()
    return runner


# -- a job with every kind of state, TTL, timers and a window ---------------------------------------
class Profile(ed.KeyedProcessFunction):
    total = ed.ValueState("total", default=0, ttl=ed.Ttl(ms=400))
    amounts = ed.ListState("amounts")
    by_bucket = ed.MapState("by_bucket")
    biggest = ed.ReducingState("biggest", max)

    def on_event(self, event, ctx):
        self.total.set(self.total.get() + event["v"])
        self.amounts.add(event["v"])
        self.by_bucket.put(event["v"] % 3, event["ts"], metadata={"i": event["i"]})
        self.biggest.add(event["v"])
        ctx.timers.register_event_time(ctx.timestamp + 150)
        yield {"k": ctx.key, "i": event["i"], "total": self.total.get(),
               "n": len(self.amounts.get()), "max": self.biggest.get()}

    def on_timer(self, timestamp, ctx):
        yield {"k": ctx.key, "timer": timestamp, "buckets": sorted(self.by_bucket.keys())}


def profile_job(src: Path) -> tuple[ed.Job, object, object]:
    job = ed.Job("profile")
    out, windows = ed.sinks.collect(), ed.sinks.collect(name="windows")
    keyed = job.source(ed.sources.jsonl(src), timestamp="ts",
                       watermarks=ed.BoundedOutOfOrderness(20)).key_by("k")
    keyed.process(Profile(), name="profile").sink(out)
    keyed.window(ed.Tumbling(100), allowed_lateness=30).aggregate(
        ed.Sum("v"), name="sums").sink(windows)
    big = job.source(ed.sources.jsonl(src), timestamp="ts", name="again").filter(
        lambda e: e["v"] > 10).key_by("k")
    keyed.interval_join(big, lower=-30, upper=30, name="near",
                        fn=lambda a, b: {"near": [a["i"], b["i"]]}).sink(out)
    return job, out, windows


def outputs(result, *sinks) -> list[str]:
    return sorted(json.dumps(v, sort_keys=True) for s in sinks for v in result.collected(s))


event_lists = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(-5, 20)),
    min_size=2, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=event_lists, cut=st.floats(0, 1), target=st.sampled_from(["memory", "rocksdb"]),
       parallelism=st.sampled_from([1, 7, 128, 1000]))
def test_restored_run_continues_as_one_uninterrupted_run(raw, cut, target, parallelism):
    """Property: run, stop, savepoint, restore (memory or RocksDB, any max_parallelism),
    continue: the outputs of both parts (a process function with every kind of state, TTL
    and timers, a window with lateness, an interval join) are those of one run over the
    whole input."""
    tmp = Path(tempfile.mkdtemp())
    try:
        ts, events = 0, []
        for i, (k, dt, v) in enumerate(raw):
            ts += dt
            events.append({"k": f"k{k}", "ts": ts, "v": v, "i": i})
        src = write_events(tmp / "in.jsonl", events)
        job, out, windows = profile_job(src)
        whole = outputs(ed.run_local(job), out, windows)

        job, out, windows = profile_job(src)
        first = run_until(job, f"rocksdb:{tmp / 'a'}", max(1, int(cut * len(events))))
        before = outputs(first.result, out, windows)
        create_savepoint(tmp / "a", tmp / "sp")

        job, out, windows = profile_job(src)
        state = "memory" if target == "memory" else f"rocksdb:{tmp / 'b'}"
        rest = ed.run_local(job, state, from_savepoint=tmp / "sp",
                            max_parallelism=parallelism)
        assert sorted(before + outputs(rest, out, windows)) == whole
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _contents(backend) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every stored entry but the TTL expiry index's (derived: a restore writes an entry per
    stamped value where a run wrote one per key and TTL period)."""
    return {cf: list(backend.iterate(cf)) for cf in sorted(backend.column_families())
            if cf != "default" and not cf.startswith("__expiry") and not backend.is_empty(cf)}


def test_memory_to_rocksdb_and_back_is_byte_equal(tmp_path):
    """A savepoint of a memory run restores into RocksDB and back into memory with every
    stored byte equal (state, timers, checkpoint metadata), and a savepoint of each restore
    is the same file."""
    events = [{"k": f"k{i % 9}", "ts": i * 13, "v": i % 11, "i": i} for i in range(300)]
    src = write_events(tmp_path / "in.jsonl", events)
    memory = InMemoryStateBackend()
    run_until(profile_job(src)[0], memory, 150)
    original = create_savepoint(memory, tmp_path / "sp1")
    assert original.total_entries > 100

    def restore(sp: Path, backend) -> None:
        runner = LocalRunner(profile_job(src)[0], backend, from_savepoint=sp)
        runner._restore_savepoint(sp)  # noqa: SLF001 - the restore alone, without running
        runner.close()

    restore(tmp_path / "sp1", f"rocksdb:{tmp_path / 'db'}")
    with RocksDbStateBackend(tmp_path / "db", read_only=True) as db:
        assert _contents(db) == _contents(memory)
    create_savepoint(tmp_path / "db", tmp_path / "sp2")
    back = InMemoryStateBackend()
    restore(tmp_path / "sp2", back)
    assert _contents(back) == _contents(memory)
    create_savepoint(back, tmp_path / "sp3")
    one = (tmp_path / "sp1").read_bytes()
    assert one == (tmp_path / "sp2").read_bytes() == (tmp_path / "sp3").read_bytes()


# -- golden bytes -------------------------------------------------------------------------------
def test_golden_bytes_of_a_written_savepoint(tmp_path):
    """The file layout, pinned: magic, header, two state sections of one chunk each (stored
    key and value bytes), an empty timers section, the footer index, its offset and the end
    magic."""
    path = tmp_path / "sp"
    with SavepointWriter(path, job="g", max_parallelism=4) as w:
        w.state("Op", "n", "value", [("a", 1)])
        w.state("Op", "m", "map", [SavepointEntry("a", "x", 2, expires_at=9,
                                                  metadata={"e": 1})], version=2)
    data = path.read_bytes()
    assert data[:8] == MAGIC and data[-8:] == MAGIC
    assert data.hex() == GOLDEN_WRITTEN
    sp = read_savepoint(path)
    assert [(s.operator, s.name, s.kind, s.version, s.entries) for s in sp.states] == [
        ("Op", "m", "map", 2, 1), ("Op", "n", "value", 1, 1)]
    assert list(sp.entries("m")) == [SavepointEntry("a", ("x",), 2, 9, {"e": 1})]


GOLDEN_WRITTEN = (
    # magic "EDDIESSP", then the header map (format 2)
    "4544444945535350"
    "88a6666f726d617402aa6b65795f6c61796f757402a36a6f62a167"
    "af6d61785f706172616c6c656c69736d04"
    "a86964656e74697479"
    "84a776657273696f6e01a36a6f62a167a96f70657261746f72739183a46e616d65a24f70"
    "a673746174657392""92a16da36d6170""92a16ea576616c7565"
    "a876657273696f6e7381a16d02a7736f757263657390"
    "aa77617465726d61726b7380a7736f757263657380a46d657461c0"
    # the header's CRC32, big-endian
    "07f6fdca"
    # states in name order. 'm' at 174: one chunk framed as length (30) | CRC32 | the
    # msgpack array [key, value]: key group 1 | ("a",) | ("x",), and expires 9 | c1 |
    # [{"e": 1}, 2]
    "0000001e2af8fa74"
    "92c40a00010502610000027800c40f0900000000000000c19281a1650102"
    # 'n' at 212: length (21) | CRC32 | [key group 1 | ("a",), never | 1]
    "0000001578afa517"
    "92c40700010502610000c409ffffffffffffffff01"
    # timers of 'Op' at 241: none. Footer at 241, framed (79 bytes): the sections with their
    # offsets, 2 entries
    "0000004f7f47a37e"
    "82a873656374696f6e7393"
    "97a57374617465a24f70a16da36d61700201ccae"
    "97a57374617465a24f70a16ea576616c75650101ccd4"
    "97a674696d657273a24f70c0c00000ccf1"
    "a7656e747269657302"
    # the footer's offset (241), big-endian, and the magic again
    "00000000000000f14544444945535350"
)


def test_golden_bytes_of_a_job_savepoint(tmp_path):
    """A savepoint of a job stopped after two of its three events, pinned: its header
    (identity, position, watermarks, sink length and counters) and its state and timer
    bytes."""
    class Seen(ed.KeyedProcessFunction):
        last = ed.ValueState("last", ttl=ed.Ttl(ms=100))

        def on_event(self, event, ctx):
            self.last.set(event["v"])
            ctx.timers.register_event_time(ctx.timestamp + 50)

    src = write_events(tmp_path / "in.jsonl", [{"k": "a", "ts": 10, "v": 1},
                                               {"k": "b", "ts": 20, "v": 2},
                                               {"k": "c", "ts": 90, "v": 3}])
    job = ed.Job("golden")
    (job.source(ed.sources.jsonl(src), timestamp="ts", name="in").key_by("k")
     .process(Seen(), name="seen").sink(ed.sinks.jsonl(tmp_path / "out.jsonl"), name="out"))
    memory = InMemoryStateBackend()
    runner = LocalRunner(job, memory, batch_size=1, checkpoint_interval=1,
                         on_progress=lambda stats: runner.request_stop())
    runner.run()
    sp = create_savepoint(memory, tmp_path / "sp")
    (fingerprint,) = sp.identity["sources"][0]["partitions"]
    assert fingerprint["path"] == str(src) and fingerprint["size"] == 87
    assert sp.header == {
        "format": 2, "key_layout": 2, "job": "golden", "max_parallelism": 128,
        "identity": {"version": 1, "job": "golden",
                     "operators": [{"name": "seen", "states": [["last", "value"]]}],
                     "sources": [{"name": "in", "kind": "jsonl", "partitions": [fingerprint]}]},
        "watermarks": {"seen": 19}, "sources": {"in": [[[58, 2], 19]]},
        "meta": {"sinks": {"out": 0}, "stats": [2, 0, 0, 0, 2, 0], "max_parallelism": 128}}
    assert [(k.hex(), v.hex()) for k, v in sp.raw_entries("last")] == [
        # key group crc32(05 02 62 00 00) % 128 = 40 | ("b",); expires 20 + 100 | 2
        ("00280502620000", "780000000000000002"),
        ("00710502610000", "6e0000000000000001")]
    # key group | "e" | 20 + 50 + 2**63, big-endian | ("b",)
    assert [k.hex() for k in sp.raw_timers("seen")] == [
        "00286580000000000000460502620000", "007165800000000000003c0502610000"]
    assert list(sp.timers("seen")) == [("event", 70, "b"), ("event", 60, "a")]
    assert [(e.key, e.value, e.expires_at) for e in sp.entries("last")] == [
        ("b", 2, 120), ("a", 1, 110)]


# -- unreadable savepoints -------------------------------------------------------------------------
def _one(tmp_path) -> Path:
    path = tmp_path / "sp"
    with SavepointWriter(path, job="j") as w:
        w.state("Op", "n", "value", [("a", 1)])
    return path


def test_unknown_format_version_is_refused(tmp_path):
    path = _one(tmp_path)
    data = path.read_bytes()
    at = data.index(b"\xa6format\x02") + len(b"\xa6format")
    path.write_bytes(data[:at] + b"\x07" + data[at + 1:])
    with pytest.raises(SavepointError, match=r"format version 7, which this eddies does not "
                                             r"read \(it reads version 2\)"):
        read_savepoint(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = _one(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(SavepointError, match="truncated or damaged.*take the savepoint again"):
        read_savepoint(path)
    path.write_bytes(b'{"not": "a savepoint"}')
    with pytest.raises(SavepointError, match="is not an eddies savepoint"):
        read_savepoint(path)


# -- upgrades --------------------------------------------------------------------------------------
class ShopV1(ed.KeyedProcessFunction):
    acc = ed.ValueState("acc", default=0)          # total amount, an int
    count = ed.ValueState("count", default=0)      # renamed to "orders" in v2
    last = ed.ValueState("last")                   # dropped in v2
    items = ed.ListState("items")                  # elements become {"a": amount} in v2

    def on_event(self, event, ctx):
        self.acc.set(self.acc.get() + event["amount"])
        self.count.set(self.count.get() + 1)
        self.last.set(event["i"])
        self.items.add(event["amount"])
        yield {"user": ctx.key, "i": event["i"], "acc": self.acc.get()}


class ShopV2(ed.KeyedProcessFunction):
    acc = ed.ValueState("acc", default={"cents": 0}, version=2,
                        migrate=lambda old, version: {"cents": old * 100})
    orders = ed.ValueState("orders", default=0, renamed_from="count")
    big = ed.ValueState("big", default=0)          # new: starts empty
    items = ed.ListState("items", version=2, migrate=lambda old, version: {"a": old})

    def on_event(self, event, ctx):
        acc = self.acc.get()
        self.acc.set({"cents": acc["cents"] + 100 * event["amount"]})
        self.orders.set(self.orders.get() + 1)
        if event["amount"] >= 5:
            self.big.set(self.big.get() + 1)
        self.items.add({"a": event["amount"]})
        yield {"user": ctx.key, "i": event["i"], "cents": self.acc.get()["cents"],
               "orders": self.orders.get(), "big": self.big.get(),
               "items": sum(x["a"] for x in self.items.get())}


def shop_job(src: Path, fn, out: Path) -> ed.Job:
    job = ed.Job("shop")
    (job.source(ed.sources.jsonl(src)).key_by("user").process(fn, name="shop")
     .sink(ed.sinks.jsonl(out), name="out"))
    return job


def shop_events(n: int) -> list[dict]:
    return [{"user": f"u{i % 13}", "i": i, "amount": (i * 7) % 10} for i in range(n)]


def shop_reference(events: list[dict], split: int) -> list[dict]:
    """The changed job's semantics, in plain Python: v1 up to ``split``, then v2 on the
    state v1 left (acc in cents, count as orders, big counted from the restore on)."""
    acc: dict[str, int] = {}
    count: dict[str, int] = {}
    items: dict[str, list[int]] = {}
    big: dict[str, int] = {}
    out = []
    for e in events:
        u, a = e["user"], e["amount"]
        acc[u] = acc.get(u, 0) + a
        count[u] = count.get(u, 0) + 1
        items.setdefault(u, []).append(a)
        if e["i"] < split:
            out.append({"user": u, "i": e["i"], "acc": acc[u]})
        else:
            big[u] = big.get(u, 0) + (a >= 5)
            out.append({"user": u, "i": e["i"], "cents": 100 * acc[u], "orders": count[u],
                        "big": big[u], "items": sum(items[u])})
    return out


def test_upgrade_with_new_removed_renamed_and_migrated_states(tmp_path):
    """The acceptance upgrade: half the input on v1, savepoint, v2 (a new state, one removed
    with --allow-non-restored-state, one renamed, two migrated) on the rest equals a
    plain-Python reference of the changed semantics; the output file goes on from the
    savepoint's length."""
    events = shop_events(400)
    src = write_events(tmp_path / "in.jsonl", events)
    out = tmp_path / "out.jsonl"
    first = run_until(shop_job(src, ShopV1(), out), f"rocksdb:{tmp_path / 'v1'}", 200)
    split = first.result.stats.events_in
    assert 200 <= split < 400
    create_savepoint(tmp_path / "v1", tmp_path / "sp")

    with pytest.raises(SavepointError) as refused:
        ed.run_local(shop_job(src, ShopV2(), out), f"rocksdb:{tmp_path / 'v2'}",
                     from_savepoint=tmp_path / "sp")
    assert ("value state 'last' of operator 'shop': operator 'shop' declares no state "
            "'last'") in str(refused.value)
    assert "--allow-non-restored-state" in str(refused.value)
    assert [json.loads(x) for x in out.read_text().splitlines()] == shop_reference(
        events, split)[:split]  # refused before any sink opened: the output is untouched

    result = ed.run_local(shop_job(src, ShopV2(), out), f"rocksdb:{tmp_path / 'v2b'}",
                          from_savepoint=tmp_path / "sp", allow_non_restored_state=True)
    assert result.stats.this_run("events_in") == 400 - split
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got == shop_reference(events, split)
    # The dir now belongs to v2: a plain rerun has nothing to do.
    again = LocalRunner(shop_job(src, ShopV2(), out), f"rocksdb:{tmp_path / 'v2b'}")
    again.run()
    assert again.nothing_to_do is not None


def _saved_shop(tmp_path) -> tuple[Path, Path]:
    src = write_events(tmp_path / "in.jsonl", shop_events(60))
    run_until(shop_job(src, ShopV1(), tmp_path / "o1.jsonl"), f"rocksdb:{tmp_path / 'v1'}", 30)
    create_savepoint(tmp_path / "v1", tmp_path / "sp")
    return src, tmp_path / "sp"


def _restore(tmp_path, src, fn, **options):
    return ed.run_local(shop_job(src, fn, tmp_path / "o2.jsonl"),
                        f"rocksdb:{tmp_path / 'new'}", from_savepoint=tmp_path / "sp",
                        allow_non_restored_state=True, **options)


def test_changed_kind_missing_migrate_and_downgrade_are_refused(tmp_path):
    src, _ = _saved_shop(tmp_path)

    class KindChanged(ShopV1):
        acc = ed.MapState("acc")

    with pytest.raises(SavepointError, match=r"value state 'acc' of operator 'shop' is "
                                             r"declared as a map state .*cannot change kind"):
        _restore(tmp_path, src, KindChanged())

    class NoMigrate(ShopV1):
        acc = ed.ValueState("acc", default=0, version=3)

    with pytest.raises(SavepointError, match=r"saved at version 1 and is declared version 3 "
                                             r"without migrate=: give migrate=fn"):
        _restore(tmp_path, src, NoMigrate())
    assert not (tmp_path / "o2.jsonl").exists()


def test_a_failing_migrate_names_state_and_key_and_leaves_the_dir_empty(tmp_path):
    src, _ = _saved_shop(tmp_path)

    def bad(old, version):
        if old > 5:
            raise ValueError("too big")
        return old

    class Bad(ShopV1):
        acc = ed.ValueState("acc", default=0, version=2, migrate=bad)

    with pytest.raises(SavepointError, match=r"migrating value state 'acc' of operator 'shop' "
                                             r"from version 1 to 2: migrate raised "
                                             r"ValueError\('too big'\) on the value \d+ of key "
                                             r"'u\d+'"):
        _restore(tmp_path, src, Bad())
    with RocksDbStateBackend(tmp_path / "new", read_only=True) as db:
        assert all(db.is_empty(cf) for cf in db.column_families())


def test_map_entries_migrate_one_by_one_keeping_metadata_and_expiry(tmp_path):
    path = tmp_path / "sp"
    with SavepointWriter(path, job="m") as w:
        w.state("Op", "prices", "map", [
            SavepointEntry("a", "x", 5, expires_at=2**40, metadata={"etag": 1}),
            SavepointEntry("a", "y", 7)])

    class Prices(ed.KeyedProcessFunction):
        prices = ed.MapState("prices", version=2, migrate=lambda v, n: {"p": v, "from": n})

        def on_event(self, event, ctx):
            yield sorted(self.prices.entries(with_metadata=True))

    job = ed.Job("m")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable([{"k": "a"}])).key_by("k").process(Prices(), name="Op")
     .sink(out))
    got = ed.run_local(job, from_savepoint=path).collected(out)
    assert got == [[("x", ed.Entry({"p": 5, "from": 1}, {"etag": 1}, 2**40)),
                    ("y", ed.Entry({"p": 7, "from": 1}, None, None))]]


def test_restore_needs_an_empty_dir_and_the_same_input(tmp_path):
    src, sp = _saved_shop(tmp_path)
    with pytest.raises(SavepointError, match=r"state dir .*v1 is not empty .*a savepoint "
                                             r"restores into a new state dir.*holds job "
                                             r"'shop'.*run without --from-savepoint"):
        ed.run_local(shop_job(src, ShopV1(), tmp_path / "o.jsonl"),
                     f"rocksdb:{tmp_path / 'v1'}", from_savepoint=sp)
    write_events(src, [{"user": "x", "i": 0, "amount": 1}] * 40)  # replaced input
    with pytest.raises(SavepointError, match=r"source 'in.jsonl': .*its saved position means "
                                             r"nothing"):
        _restore(tmp_path, src, ShopV1())


def test_restoring_into_a_generated_operator_name_asks_for_name(tmp_path):
    src = write_events(tmp_path / "in.jsonl", [{"k": "a", "v": 1, "ts": t} for t in range(50)])

    def windows(name=None):
        job = ed.Job("w")
        out = ed.sinks.collect()
        (job.source(ed.sources.jsonl(src), timestamp="ts").key_by("k")
         .window(ed.Tumbling(10)).aggregate(ed.Count(), name=name).sink(out))
        return job, out

    job, first_out = windows()
    before = run_until(job, f"rocksdb:{tmp_path / 'a'}", 20).result
    sp = create_savepoint(tmp_path / "a", tmp_path / "sp")
    generated = sp.operators[0].name
    assert generated.startswith("tumbling-window-")
    job, _ = windows()
    with pytest.raises(SavepointError, match=rf"operator '{generated}' has a name eddies "
                                             rf"generated.*give it name='{generated}'"):
        ed.run_local(job, from_savepoint=tmp_path / "sp")
    job, out = windows(name=generated)
    after = ed.run_local(job, from_savepoint=tmp_path / "sp").collected(out)
    got = before.collected(first_out) + after
    assert [(w["start"], w["value"]) for w in got] == [(t, 10) for t in range(0, 50, 10)]


def test_a_dir_changed_in_version_is_refused_without_a_savepoint(tmp_path):
    src, _ = _saved_shop(tmp_path)

    class V2(ShopV1):
        acc = ed.ValueState("acc", default=0, version=2, migrate=lambda v, n: v)

    with pytest.raises(StateIdentityError, match=r"state 'acc' was version 1 and is now "
                                                 r"version 2 .*eddies savepoint create"):
        ed.run_local(shop_job(src, V2(), tmp_path / "o1.jsonl"), f"rocksdb:{tmp_path / 'v1'}")


# -- State Processor API -------------------------------------------------------------------------
def test_bootstrap_balances_from_plain_data_and_read_them_back(tmp_path):
    csv = tmp_path / "balances.csv"
    csv.write_text("acct,balance\nalice,100\nbob,5\n")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    with SavepointWriter(tmp_path / "sp", job="bank") as w:
        w.state("Bank", "balance", "value", [(acct, int(b)) for acct, b in rows])

    class Bank(ed.KeyedProcessFunction):
        balance = ed.ValueState("balance", default=0)

        def on_event(self, event, ctx):
            self.balance.set(self.balance.get() + event["amount"])
            yield {"acct": ctx.key, "balance": self.balance.get()}

    job = ed.Job("bank")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable([{"acct": "alice", "amount": -30},
                                     {"acct": "carol", "amount": 7}]))
     .key_by("acct").process(Bank()).sink(out))
    runner = LocalRunner(job, f"rocksdb:{tmp_path / 'db'}", from_savepoint=tmp_path / "sp")
    assert runner.run().collected(out) == [{"acct": "alice", "balance": 70},
                                           {"acct": "carol", "balance": 7}]
    sp = create_savepoint(tmp_path / "db", tmp_path / "sp2")
    assert sorted((e.key, e.value) for e in sp.entries("balance")) == [
        ("alice", 70), ("bob", 5), ("carol", 7)]


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_create_inspect_and_run_from_savepoint(tmp_path):
    events = shop_events(100)
    src = write_events(tmp_path / "in.jsonl", events)
    module = tmp_path / "shopjob.py"
    module.write_text(
        "import eddies as ed\n"
        "from tests.runtime.test_savepoint import ShopV1, ShopV2, shop_job\n"
        f"v1 = shop_job({str(src)!r}, ShopV1(), {str(tmp_path / 'out.jsonl')!r})\n"
        f"v2 = shop_job({str(src)!r}, ShopV2(), {str(tmp_path / 'out.jsonl')!r})\n")
    run_until(shop_job(src, ShopV1(), tmp_path / "out.jsonl"), f"rocksdb:{tmp_path / 'a'}", 50)
    cli = CliRunner()
    made = cli.invoke(main, ["savepoint", "create", str(tmp_path / "a"), str(tmp_path / "sp")])
    assert made.exit_code == 0, made.output
    assert "job 'shop', 4 states" in made.output
    shown = cli.invoke(main, ["savepoint", "inspect", str(tmp_path / "sp"), "--json"])
    summary = json.loads(shown.output)
    split = summary["sources"][0]["partitions"][0]["position"][1]  # [offset, line]
    assert 50 <= split < 100
    assert [(s["name"], s["kind"], s["entries"]) for s in summary["operators"][0]["states"]] == [
        ("acc", "value", 13), ("count", "value", 13), ("items", "list", split),
        ("last", "value", 13)]
    text = cli.invoke(main, ["savepoint", "inspect", str(tmp_path / "sp")]).output
    assert "items  list" in text and "source 'in.jsonl'" in text
    args = ["run", f"{module}:v2", "--state", f"rocksdb:{tmp_path / 'b'}", "--quiet",
            "--from-savepoint", str(tmp_path / "sp")]
    refused = cli.invoke(main, args)
    assert refused.exit_code == 1
    assert "error: " in refused.output and "'last'" in refused.output
    done = cli.invoke(main, [*args, "--allow-non-restored-state"])
    assert done.exit_code == 0, done.output
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert got == shop_reference(events, split)


def test_a_transformed_savepoint_keeps_positions_and_untouched_states(tmp_path):
    """State Processor API round trip: read a savepoint, rewrite one state, drop another,
    write it with base=: the job resumes from the saved positions with the new values."""
    events = shop_events(60)
    src = write_events(tmp_path / "in.jsonl", events)
    first = run_until(shop_job(src, ShopV1(), tmp_path / "o.jsonl"),
                      f"rocksdb:{tmp_path / 'v1'}", 30)
    split = first.result.stats.events_in
    sp = create_savepoint(tmp_path / "v1", tmp_path / "sp")
    with SavepointWriter(tmp_path / "sp2", base=sp) as w:
        w.state("shop", "acc", "value", [(e.key, e.value + 1000) for e in sp.entries("acc")])
        w.drop("shop", "last")
    changed = read_savepoint(tmp_path / "sp2")
    assert [s.name for s in changed.states] == ["acc", "count", "items"]
    assert changed.sources == sp.sources and changed.meta == sp.meta
    ed.run_local(shop_job(src, ShopV1(), tmp_path / "o.jsonl"), f"rocksdb:{tmp_path / 'v2'}",
                 from_savepoint=tmp_path / "sp2")
    got = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    want = shop_reference(events, len(events))
    assert got[:split] == want[:split]
    assert got[split:] == [{**w, "acc": w["acc"] + 1000} for w in want[split:]]


def test_an_older_dir_whose_generated_operator_names_shifted_asks_for_name(tmp_path):
    """Adding an operator shifts the generated name of a window: the dir's state is
    refused, and the error says which names were generated and asks for name=."""
    src = write_events(tmp_path / "in.jsonl", [{"k": "a", "v": 1, "ts": t} for t in range(50)])

    def windows(extra: bool) -> ed.Job:
        job = ed.Job("w")
        stream = job.source(ed.sources.jsonl(src), timestamp="ts")
        if extra:
            stream = stream.filter(lambda e: e["v"] > 0)
        (stream.key_by("k").window(ed.Tumbling(10)).aggregate(ed.Count())
         .sink(ed.sinks.collect()))
        return job

    run_until(windows(False), f"rocksdb:{tmp_path / 'a'}", 20)
    with pytest.raises(StateIdentityError, match=r"operator 'tumbling-window-3' has a name "
                                                 r"eddies generated.*give stateful operators "
                                                 r"name="):
        ed.run_local(windows(True), f"rocksdb:{tmp_path / 'a'}")


def test_a_savepoint_of_a_running_job_holds_its_last_checkpoint(tmp_path):
    """The dir is open (and locked) by a running job: the savepoint reads a read-only view
    of it, and restoring it continues from that checkpoint."""
    events = shop_events(200)
    src = write_events(tmp_path / "in.jsonl", events)
    taken: list = []

    def progress(stats):
        if not taken and stats.checkpoints >= 2:
            taken.append(create_savepoint(tmp_path / "live", tmp_path / "sp"))

    runner = LocalRunner(shop_job(src, ShopV1(), tmp_path / "o.jsonl"),
                         f"rocksdb:{tmp_path / 'live'}", batch_size=10, checkpoint_interval=10,
                         on_progress=progress)
    runner.run()
    (sp,) = taken
    split = sp.meta["stats"][0]
    assert 20 <= split < 200
    assert sp.state("items").entries == split
    ed.run_local(shop_job(src, ShopV1(), tmp_path / "o2.jsonl"), f"rocksdb:{tmp_path / 'b'}",
                 from_savepoint=tmp_path / "sp")
    got = [json.loads(x) for x in (tmp_path / "o2.jsonl").read_text().splitlines()]
    assert got == shop_reference(events, len(events))[split:]


class Rules(ed.KeyedBroadcastProcessFunction):
    table = ed.BroadcastState("table", version=2, migrate=lambda v, n: {"limit": v})
    seen = ed.ValueState("seen", default=0)

    def on_broadcast(self, rule, ctx):
        self.table.put(rule["name"], {"limit": rule["value"]})

    def on_event(self, event, ctx):
        self.seen.set(self.seen.get() + 1)
        yield (ctx.key, self.seen.get(), sorted(self.table.entries()))


def test_broadcast_state_keeps_its_place_across_max_parallelism_and_migrates(tmp_path):
    """BroadcastState has no key: it stays one table for every key whatever the target's
    key groups, and migrates per entry; keyed state beside it is regrouped."""
    with SavepointWriter(tmp_path / "sp", job="bc", max_parallelism=3) as w:
        w.state("rules", "table", "broadcast", [("x", 5), ("y", 7)])
        w.state("rules", "seen", "value", [(f"k{i}", 10 * i) for i in range(6)])
    job = ed.Job("bc")
    out = ed.sinks.collect()
    rule_stream = job.source(ed.sources.iterable([]), timestamp="ts", name="rule-feed")
    (job.source(ed.sources.iterable([{"k": f"k{i}", "ts": i} for i in range(6)]),
                timestamp="ts", name="events")
     .key_by("k").connect(rule_stream.broadcast()).process(Rules(), name="rules").sink(out))
    got = ed.run_local(job, f"rocksdb:{tmp_path / 'db'}", from_savepoint=tmp_path / "sp",
                       max_parallelism=50).collected(out)
    table = [("x", {"limit": 5}), ("y", {"limit": 7})]
    assert got == [(f"k{i}", 10 * i + 1, table) for i in range(6)]


def test_cli_errors_are_one_line_that_says_what_to_do(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a savepoint at all")
    shown = CliRunner().invoke(main, ["savepoint", "inspect", str(tmp_path / "junk")])
    assert shown.exit_code == 1
    assert shown.output.startswith("error: savepoint ") and "is not an eddies savepoint" in (
        shown.output)
    made = CliRunner().invoke(main, ["savepoint", "create", str(tmp_path / "nodir"),
                                     str(tmp_path / "sp")])
    assert made.exit_code == 1 and "does not exist; give the dir a job ran on" in made.output
    assert not (tmp_path / "sp").exists()
    usage = CliRunner().invoke(main, ["savepoint", "create", str(tmp_path / "sp")])
    assert usage.exit_code == 1 and "give STATE_DIR and OUT" in usage.output


def test_a_savepoint_that_ended_event_time_is_refused_for_new_input(tmp_path):
    """A run that read its input to the end took event time to +infinity (TTL state expired,
    windows fired): restoring it into a job reading another input would count every event
    late, so it stops and says to take the savepoint before the end."""
    src = write_events(tmp_path / "in.jsonl",
                       [{"k": "a", "v": 1, "ts": t, "i": t} for t in range(20)])
    job, _, _ = profile_job(src)
    ed.run_local(job, f"rocksdb:{tmp_path / 'a'}")
    create_savepoint(tmp_path / "a", tmp_path / "sp")
    other = write_events(tmp_path / "more.jsonl", [{"k": "a", "v": 1, "ts": 30, "i": 20}])
    job, _, _ = profile_job(other)
    with pytest.raises(SavepointError, match=r"operators 'near', 'profile', 'sums' ended event "
                                             r"time in the savepoint .*Take the savepoint "
                                             r"from a run stopped before the end"):
        ed.run_local(job, from_savepoint=tmp_path / "sp", allow_non_restored_state=True)


def test_a_savepoint_is_never_overwritten(tmp_path):
    path = _one(tmp_path)
    before = path.read_bytes()
    w = SavepointWriter(path, job="other")
    w.state("Op", "n", "value", [("b", 2)])
    with pytest.raises(SavepointError, match="exists: a savepoint is never overwritten"):
        w.write()
    assert path.read_bytes() == before and not path.with_name("sp.tmp").exists()


# -- restores cut short ----------------------------------------------------------------------------
_CUT_SHORT = '''
import json, os, sys
import eddies as ed
from eddies.runtime.savepoint import SavepointWriter

where, mode = sys.argv[1], sys.argv[2]
mp = int(os.environ.get("MP", "128"))
calls = 0


def migrate(old, version):  # kill -9 here, half way through the restore, when asked
    global calls
    calls += 1
    if mode == "die-in-migrate" and calls == 20:
        os._exit(9)
    return old


class Bank(ed.KeyedProcessFunction):
    balance = ed.ValueState("balance", default=0, version=2, migrate=migrate)
    age = ed.ValueState("age")

    def on_event(self, event, ctx):
        if mode == "die-at-first-event":
            os._exit(9)
        self.balance.set(self.balance.get() + event["amount"])
        yield {"acct": ctx.key, "balance": self.balance.get()}


if mode == "write":
    with SavepointWriter(f"{where}/sp", job="bank") as w:
        w.state("Bank", "balance", "value", [(f"a{i}", i) for i in range(50)])
        w.state("Bank", "age", "value", [(f"a{i}", 2000 + i) for i in range(50)])
    with open(f"{where}/in.jsonl", "w") as f:
        f.write(json.dumps({"acct": "a30", "amount": 1}) + "\\n")
    sys.exit()
job = ed.Job("bank")
out = ed.sinks.collect()
job.source(ed.sources.jsonl(f"{where}/in.jsonl")).key_by("acct").process(Bank()).sink(out)
restore = ({} if mode == "rerun" else
           {"from_savepoint": f"{where}/other" if mode == "restore-other" else f"{where}/sp"})
try:
    result = ed.run_local(job, f"rocksdb:{where}/db", max_parallelism=mp, **restore)
except ed.EddiesError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    print(json.dumps({"out": result.collected(out)}))
'''


def _cut_short(tmp_path: Path, mode: str, mp: int = 128) -> dict:
    import os
    import subprocess
    import sys

    script = tmp_path / "bank.py"
    script.write_text(_CUT_SHORT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), mode], text=True,
                          capture_output=True, env={**os.environ, "MP": str(mp)}, timeout=120)
    if mode.startswith("die"):
        assert done.returncode == 9, done.stderr
        return {}
    assert done.returncode == 0, done.stderr
    if mode == "write":
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_restore_killed_half_way_is_refused_and_the_same_restore_starts_over(tmp_path):
    """kill -9 in the middle of a restore leaves part of the state and no identity: a run on
    the dir is refused (resuming it would count that state again from the input's start), and
    the same restore run again clears it and restores whole."""
    _cut_short(tmp_path, "write")
    _cut_short(tmp_path, "die-in-migrate")
    with RocksDbStateBackend(tmp_path / "db", read_only=True) as db:
        assert (db.count("balance"), db.count("age")) == (0, 50)  # the kill came half way
    refused = _cut_short(tmp_path, "rerun")
    assert refused["error"] == "StateIdentityError"
    assert "interrupted" in refused["message"] and "--from-savepoint" in refused["message"]
    with pytest.raises(SavepointError, match="interrupted"):
        create_savepoint(tmp_path / "db", tmp_path / "sp-of-partial")
    # A savepoint that does not fit the job is refused with the dir left as it was.
    with SavepointWriter(tmp_path / "other", job="bank") as w:
        w.state("Bank", "balance", "map", [("a1", "k", 1)])
    other = _cut_short(tmp_path, "restore-other")
    assert other["error"] == "SavepointError" and "does not fit" in other["message"]
    assert _cut_short(tmp_path, "rerun")["error"] == "StateIdentityError"
    assert _cut_short(tmp_path, "restore") == {"out": [{"acct": "a30", "balance": 31}]}
    with RocksDbStateBackend(tmp_path / "db", read_only=True) as db:
        assert (db.count("balance"), db.count("age")) == (50, 50)


def test_a_restore_of_a_written_savepoint_keeps_its_key_groups_before_any_checkpoint(tmp_path):
    """A SavepointWriter file has no job checkpoint: a run killed before its first one still
    says which max_parallelism placed the keys, and a run with another is refused rather
    than reading every key as new."""
    _cut_short(tmp_path, "write")
    _cut_short(tmp_path, "die-at-first-event", mp=7)
    refused = _cut_short(tmp_path, "rerun")
    assert refused["error"] == "StateIdentityError"
    assert "max_parallelism 7" in refused["message"]
    assert _cut_short(tmp_path, "rerun", mp=7) == {"out": [{"acct": "a30", "balance": 31}]}


@pytest.mark.parametrize("kind", ["map", "broadcast"])
def test_a_written_none_map_key_is_the_key_none(tmp_path, kind):
    """None is a map key (``m.put(None, v)``): SavepointWriter stores it as a job would."""
    class Keep(ed.KeyedProcessFunction):
        m = ed.MapState("m")

        def on_event(self, event, ctx):
            yield {"get": self.m.get(None), "entries": list(self.m.entries())}

    rows = [("b", None, "v"), ("b", (), "e")] if kind == "map" else [(None, "v"), ((), "e")]
    with SavepointWriter(tmp_path / "sp", job="j") as w:
        w.state("keep", "m", kind, rows)
    if kind == "broadcast":
        assert [(e.key, e.map_key) for e in read_savepoint(tmp_path / "sp").entries("m")] == [
            ((), None), ((), (None,))]
        return
    # A copy written from the entries read back keeps both keys.
    sp = read_savepoint(tmp_path / "sp")
    with SavepointWriter(tmp_path / "copy", base=sp) as w:
        w.state("keep", "m", kind, list(sp.entries("m")))
    job = ed.Job("j")
    out = ed.sinks.collect()
    job.source(ed.sources.iterable([{"k": "b"}])).key_by("k").process(Keep(), name="keep").sink(out)
    assert ed.run_local(job, from_savepoint=tmp_path / "copy").collected(out) == [
        {"get": "v", "entries": [((), "e"), (None, "v")]}]


@pytest.mark.parametrize("max_parallelism", [0, 32_769, 2.5, True])
def test_a_writer_refuses_a_max_parallelism_no_job_can_have(tmp_path, max_parallelism):
    with pytest.raises(SavepointError, match=r"max_parallelism must be an int in 1\.\.32768"):
        SavepointWriter(tmp_path / "sp", job="j", max_parallelism=max_parallelism)
