"""WindowState (tumbling and sliding windows without a timer per key): restores, window marks,
key-group reloads as under Kafka, accumulators out of memory, and older checkpoints."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import pytest

import eddies as ed
from eddies.operators.windows import window_function
from eddies.runtime.timers import EVENT, stored_mark_key, stored_timer_key, timers_cf
from eddies.state import InMemoryStateBackend
from eddies.state.keys import encode_element, encode_key
from eddies.state.values import encode_value
from eddies.state.windows import WindowState
from eddies.testing import Harness

LATE = ed.OutputTag("late")


def fn(assigner=None, lateness=0, agg=None, late=LATE):
    return window_function("w", assigner or ed.Tumbling(1_000), agg or ed.Sum("v"), lateness,
                           late)


def results(outputs):
    return [(r["key"], r["start"], r["end"], r["value"]) for r in outputs]


def stored_counts(h: Harness) -> dict[str, int]:
    raw = h._raw
    return {cf: sum(1 for _ in raw.iterate(cf)) for cf in raw.column_families()
            if cf.endswith(".windows") or cf.startswith("__timers__")}


def test_uses_window_state_and_no_timers():
    h = Harness(fn(), operator="w")
    assert isinstance(h.operator.handles["w.windows"], WindowState)
    for key, ts in [("a", 10), ("b", 20), ("a", 999), ("a", 1_000)]:
        assert h.event({"v": 1}, key=key, timestamp=ts) == []
    assert h.pending_timers() == []
    assert h.state("w.windows", "a") == {(0, 1_000): 2, (1_000, 2_000): 1}
    assert results(h.watermark(998)) == []
    assert results(h.watermark(999)) == [("a", 0, 1_000, 2), ("b", 0, 1_000, 1)]
    assert h.state("w.windows", "a") == {(1_000, 2_000): 1}
    assert results(h.watermark(5_000)) == [("a", 1_000, 2_000, 1)]
    assert stored_counts(h) == {"w.windows": 0}
    h.event({"v": 1}, key="a", timestamp=1_500)  # closed: late
    assert h.side_output(LATE) == [{"v": 1}]


def test_lateness_refires_once_and_survives_a_restore_without_firing_again():
    h = Harness(fn(lateness=1_000), operator="w")
    h.event({"v": 1}, key="a", timestamp=100)
    h.event({"v": 2}, key="b", timestamp=200)
    assert results(h.watermark(999)) == [("a", 0, 1_000, 1), ("b", 0, 1_000, 2)]
    snapshot = h.snapshot()
    counts = stored_counts(h)
    assert counts["w.windows"] == 2
    assert counts["__timers__.w"] >= 1  # the window marks of the key groups of a and b

    again = Harness(fn(lateness=1_000), operator="w")
    again.restore(snapshot)
    assert results(again.watermark(1_500)) == []  # fired before the snapshot: not again
    # within the lateness: an updated result at once, and only then, for a key new to the
    # window too (as Flink's event-time trigger fires on an element behind the watermark)
    assert results(again.event({"v": 5}, key="a", timestamp=900)) == [("a", 0, 1_000, 6)]
    assert results(again.event({"v": 7}, key="c", timestamp=900)) == [("c", 0, 1_000, 7)]
    assert results(again.watermark(1_600)) == []
    assert results(again.watermark(1_998)) == []
    assert again.state("w.windows", "a") == {(0, 1_000): 6}
    assert results(again.watermark(1_999)) == []
    assert again.state("w.windows", "a") is None
    again.event({"v": 1}, key="a", timestamp=900)
    assert again.side_output(LATE) == [{"v": 1}]
    assert stored_counts(again) == {"w.windows": 0, "__timers__.w": 0}


def test_restore_of_windows_that_have_not_fired():
    h = Harness(fn(ed.Sliding(1_000, 500), lateness=300), operator="w")
    for i, ts in enumerate([100, 600, 700, 1_200]):
        h.event({"v": i}, key=f"k{i % 2}", timestamp=ts)
    snapshot = h.snapshot()
    again = Harness(fn(ed.Sliding(1_000, 500), lateness=300), operator="w")
    again.restore(snapshot)
    got = results(again.watermark(10_000))
    assert [r[2] for r in got] == sorted(r[2] for r in got)  # by window end
    assert sorted(got) == [
        ("k0", -500, 500, 0), ("k0", 0, 1_000, 2), ("k0", 500, 1_500, 2),
        ("k1", 0, 1_000, 1), ("k1", 500, 1_500, 4), ("k1", 1_000, 2_000, 3),
    ]
    assert stored_counts(again) == {"w.windows": 0, "__timers__.w": 0}


def _events(seed: int, n: int, keys: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"k": f"k{rng.randrange(keys)}", "ts": i * 7 + rng.randint(-300, 300),
             "v": rng.randint(1, 9)} for i in range(n)]


def _run(events, state, assigner, lateness, **options):
    job = ed.Job("ws")
    out = ed.sinks.collect()
    late = ed.sinks.collect("late")
    windowed = (job.source(ed.sources.iterable(events), timestamp="ts",
                           watermarks=ed.BoundedOutOfOrderness(200))
                .key_by("k").window(assigner, allowed_lateness=lateness, late=LATE)
                .aggregate(ed.Sum("v"), name="sums"))
    windowed.sink(out)
    windowed.side_output(LATE).sink(late)
    result = ed.run_local(job, state, batch_size=40, **options)
    return Counter(results(out.items)), late.items, result


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@pytest.mark.parametrize(("assigner", "lateness"), [(ed.Tumbling(500), 0),
                                                    (ed.Sliding(600, 200), 250)])
def test_accumulators_out_of_memory_give_the_same_results(tmp_path, backend, assigner,
                                                          lateness):
    events = _events(5, 3_000, 300)
    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'a'}"
    reference, late, _ = _run(events, state, assigner, lateness)
    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'b'}"
    small, small_late, _ = _run(events, state, assigner, lateness, cache_entries=7,
                                checkpoint_interval=97)
    assert small == reference and reference
    assert small_late == late


def test_key_group_reloads_as_under_kafka():
    """The worker's rebalance: fresh timer heaps, cleared caches, then one load per key
    group it owns. Windows of other key groups are neither fired nor deleted here."""
    backend = InMemoryStateBackend()
    h = Harness(fn(lateness=500), backend, operator="w", max_parallelism=8)
    keys = [f"u{i}" for i in range(40)]
    for i, key in enumerate(keys):
        h.event({"v": i}, key=key, timestamp=100 + i)
    assert len(results(h.watermark(999))) == 40  # fired, waiting for their lateness
    for i, key in enumerate(keys):
        h.event({"v": 1}, key=key, timestamp=1_100 + i)  # next window: not fired
    h.checkpoint()

    op = h.operator
    groups = {key: op.store.prefix((key,))[:2] for key in keys}
    owned = sorted(set(groups.values()))[:3]
    op.timers.event = type(op.timers.event)()
    op.timers.processing = type(op.timers.processing)()
    op.store.clear_cache()
    for g in owned:
        op.timers.load(h._raw, g, (int.from_bytes(g, "big") + 1).to_bytes(2, "big"))
    mine = {key for key in keys if groups[key] in owned}
    assert mine and len(mine) < len(keys)

    got = results(h.watermark(10_000))
    assert sorted(got) == sorted((k, 1_000, 2_000, 1) for k in mine)  # window 0 not again
    stored = [k for k, _ in h._raw.iterate("w.windows")]
    assert len(stored) == 2 * (len(keys) - len(mine))  # the other groups' windows are kept
    assert all(s[:2] not in owned for s in stored)


def test_a_checkpoint_from_per_key_timers_fires_once():
    """State written when every (key, window) had timers of its own: the entries are
    indexed, fire once, and the old timers fire as no-ops and are deleted."""
    prefix = (0).to_bytes(2, "big") + encode_element(("a",))
    window = encode_key((0, 1_000))
    blob = msgpack.packb({"version": 1, "processing_time": 0, "cfs": {
        "w.windows": [[prefix + window, encode_value(3)]],
        timers_cf("w"): [[stored_timer_key(prefix, EVENT, 999), b""],
                         [stored_timer_key(prefix, EVENT, 1_499), b""]],
    }}, use_bin_type=True)
    h = Harness(fn(lateness=500), operator="w", max_parallelism=1)
    h.restore(blob)
    assert results(h.watermark(999)) == [("a", 0, 1_000, 3)]
    assert results(h.watermark(5_000)) == []
    assert stored_counts(h) == {"w.windows": 0, "__timers__.w": 0}


def test_an_unstorable_accumulator_is_a_dead_letter_not_a_failed_checkpoint():
    events = [{"k": "a", "ts": 10, "v": 1}, {"k": "b", "ts": 20, "v": "bad"},
              {"k": "a", "ts": 30, "v": 2}]
    job = ed.Job("w")
    out = ed.sinks.collect()

    def merge(a, b):
        return {"v": {a["v"], b["v"]} if b["v"] == "bad" else a["v"] + b["v"]}

    (job.source(ed.sources.iterable(events + [dict(events[1], ts=40)]), timestamp="ts")
        .key_by("k").window(ed.Tumbling(1_000)).reduce(merge).sink(out))
    result = ed.run_local(job)
    assert results(out.items) == [("a", 0, 1_000, {"v": 3}), ("b", 0, 1_000, events[1])]
    assert len(result.dead_letters) == 1
    assert "for key 'b', map key (0, 1000): cannot serialize" in result.dead_letters[0]["reason"]


def test_window_mark_golden_bytes():
    """key group | w | time + 2**63 (8 B, BE) | encoded (start, end); value empty."""
    stored = stored_mark_key(b"\x00\x05", 999, encode_key((0, 1_000)))
    assert stored.hex(" ") == "00 05 77 80 00 00 00 00 00 03 e7 14 16 03 e8"
