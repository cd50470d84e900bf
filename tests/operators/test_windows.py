"""Windows against plain-Python batch computations, under random disorder and lateness."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eddies as ed
from eddies.operators.windows import Window

DELAY = 2_000


def gen_events(seed: int, n: int, keys: int, disorder: int, step: int = 100) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"k": f"k{rng.randrange(keys)}", "ts": i * step + rng.randint(-disorder, disorder),
         "v": rng.randint(1, 9)}
        for i in range(n)
    ]


def run(events, assigner, *, agg=None, reduce=None, process=None, lateness=0, late=None,
        batch_size=50, delay=DELAY, state="memory"):
    job = ed.Job("w")
    out = ed.sinks.collect()
    windowed = (job.source(ed.sources.iterable(events), timestamp="ts",
                           watermarks=ed.BoundedOutOfOrderness(delay))
                .key_by("k").window(assigner, allowed_lateness=lateness, late=late))
    if agg is not None:
        results = windowed.aggregate(agg)
    elif reduce is not None:
        results = windowed.reduce(reduce)
    else:
        results = windowed.process(process)
    results.sink(out)
    late_out = ed.sinks.collect("late")
    if late is not None:
        results.side_output(late).sink(late_out)
    result = ed.run_local(job, state, batch_size=batch_size)
    return result.collected(out), late_out.items, result


def simulate(events, assign, lateness, delay):
    """Which events each window accepts, and which are late, as the runtime decides it.

    The operator's watermark moves after every event, whatever the runner's batch size: an
    event sees the watermark computed after the one before it (max timestamp so far - delay
    - 1).
    """
    accepted: dict[tuple[str, int, int], list[dict]] = defaultdict(list)
    refires: dict[tuple[str, int, int], int] = defaultdict(int)
    late = []
    wm = -(2**63)
    max_ts = -(2**63)
    for e in events:
        windows = [w for w in assign(e["ts"]) if w.end - 1 + lateness > wm]
        if not windows:
            late.append(e)
        for w in windows:
            accepted[(e["k"], w.start, w.end)].append(e)
            if w.end - 1 <= wm:
                refires[(e["k"], w.start, w.end)] += 1
        max_ts = max(max_ts, e["ts"])
        wm = max(wm, max_ts - delay - 1)
    return accepted, refires, late


def final_values(results: list[dict]) -> dict[tuple, Any]:
    final = {}
    for r in results:
        final[(r["key"], r["start"], r["end"])] = r["value"]
    return final


@pytest.mark.parametrize("assigner", [ed.Tumbling(1_000), ed.Tumbling(1_000, offset_ms=300),
                                      ed.Sliding(2_000, 500)])
def test_fixed_windows_match_batch_reference(assigner):
    events = gen_events(1, 3_000, 7, disorder=3_000)
    results, late, _ = run(events, assigner, agg=ed.Sum("v"), lateness=500,
                           late=ed.OutputTag("late"))
    accepted, refires, expected_late = simulate(events, assigner.assign, 500, DELAY)
    expected = {w: sum(e["v"] for e in evs) for w, evs in accepted.items()}
    assert final_values(results) == expected
    # One firing per window that had an on-time event, plus one re-firing per accepted event
    # behind the watermark; a window that only late events reached fires with each of them
    # and never at its end (as Flink's event-time trigger).
    counts = defaultdict(int)
    for r in results:
        counts[(r["key"], r["start"], r["end"])] += 1
    on_time = {w: len(evs) > refires.get(w, 0) for w, evs in accepted.items()}
    assert counts == {w: on_time[w] + refires.get(w, 0) for w in expected}
    assert not all(on_time.values()), "this input is meant to open windows with late events"
    assert late == expected_late
    assert late, "this input is meant to have late events"


def test_reduce_and_process_agree_with_aggregate():
    events = gen_events(2, 2_000, 5, disorder=800)
    by_agg, _, _ = run(events, ed.Tumbling(1_000), agg=ed.Sum("v"))
    by_reduce, _, _ = run(events, ed.Tumbling(1_000),
                          reduce=lambda a, b: {"k": a["k"], "ts": b["ts"], "v": a["v"] + b["v"]})
    by_process, _, _ = run(events, ed.Tumbling(1_000),
                           process=lambda key, window, items: (key, window.start,
                                                               sum(i["v"] for i in items)))
    agg = final_values(by_agg)
    assert {w: r["v"] for w, r in final_values(by_reduce).items()} == agg
    assert {w: v[2] for w, v in final_values(by_process).items()} == agg
    assert all(v[0] == w[0] and v[1] == w[1] for w, v in final_values(by_process).items())


def sessions_reference(events, gap):
    by_key = defaultdict(list)
    for e in events:
        by_key[e["k"]].append(e["ts"])
    out = {}
    for k, stamps in by_key.items():
        stamps.sort()
        start = prev = stamps[0]
        count = 1
        for t in stamps[1:]:
            if t - prev > gap:  # [prev, prev+gap) and [t, t+gap) neither overlap nor touch
                out[(k, start, prev + gap)] = count
                start, count = t, 0
            count += 1
            prev = t
        out[(k, start, prev + gap)] = count
    return out


def test_sessions_match_batch_reference_and_merge_when_touching():
    events = gen_events(3, 2_000, 6, disorder=1_000, step=300)
    results, _, _ = run(events, ed.Session(1_500), agg=ed.Count(), delay=5_000)
    assert final_values(results) == sessions_reference(events, 1_500)
    touching = [{"k": "a", "ts": 0, "v": 1}, {"k": "a", "ts": 1_000, "v": 1},
                {"k": "a", "ts": 2_001, "v": 1}]
    results, _, _ = run(touching, ed.Session(1_000), agg=ed.Count())
    assert final_values(results) == {("a", 0, 2_000): 2, ("a", 2_001, 3_001): 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    size=st.sampled_from([300, 1_000, 2_500]),
    slide_div=st.sampled_from([1, 2, 5]),
    disorder=st.integers(0, 3_000),
    lateness=st.sampled_from([0, 200, 1_000]),
    batch=st.sampled_from([7, 50, 400]),
)
def test_property_fixed_windows(seed, size, slide_div, disorder, lateness, batch):
    events = gen_events(seed, 400, 4, disorder=disorder)
    assigner = ed.Tumbling(size) if slide_div == 1 else ed.Sliding(size, size // slide_div)
    tag = ed.OutputTag("late")
    results, late, _ = run(events, assigner, agg=ed.Count(), lateness=lateness, late=tag,
                           batch_size=batch, delay=500)
    accepted, _, expected_late = simulate(events, assigner.assign, lateness, 500)
    assert final_values(results) == {w: len(v) for w, v in accepted.items()}
    assert late == expected_late


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), gap=st.integers(50, 3_000), disorder=st.integers(0, 2_000),
       batch=st.sampled_from([5, 60, 500]))
def test_property_sessions_without_late_data(seed, gap, disorder, batch):
    events = gen_events(seed, 300, 3, disorder=disorder)
    results, _, _ = run(events, ed.Session(gap), agg=ed.Count(), batch_size=batch,
                        delay=2 * disorder + 1)
    assert final_values(results) == sessions_reference(events, gap)


def test_late_events_are_counted_exactly_when_no_tag():
    events = [{"k": "a", "ts": t, "v": 1} for t in (10_000, 20_000, 30_000)]
    events += [{"k": "a", "ts": 1_000, "v": 1}, {"k": "b", "ts": 2_000, "v": 1}]
    job = ed.Job("w")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(0))
        .key_by("k").window(ed.Tumbling(5_000)).aggregate(ed.Count()).sink(out))
    result = ed.run_local(job, batch_size=3)
    assert result.stats.late_dropped == 2
    assert final_values(out.items) == {("a", 10_000, 15_000): 1, ("a", 20_000, 25_000): 1,
                                       ("a", 30_000, 35_000): 1}


def test_late_dropped_count_survives_a_resume(tmp_path):
    """A run that fails after a checkpoint and resumes counts the late events of both parts,
    each once: the count is part of the checkpoint."""
    events = [{"k": "a", "ts": t, "v": 1} for t in (10_000, 20_000, 30_000)]
    events += [{"k": "a", "ts": 1_000, "v": 1}, {"k": "b", "ts": 2_000, "v": 1}]  # late
    events += [{"k": "a", "ts": 40_000, "v": 1}, {"k": "c", "ts": 3_000, "v": 1}]  # late
    events += [{"k": "boom", "ts": 50_000, "v": 1}, {"k": "a", "ts": 4_000, "v": 1}]  # late

    def build(fail: bool) -> ed.Job:
        def check(e):
            if fail and e["k"] == "boom":
                raise RuntimeError("bug")
            return e

        job = ed.Job("w")
        (job.source(ed.sources.iterable(events), timestamp="ts",
                    watermarks=ed.BoundedOutOfOrderness(0))
            .map(check).key_by("k").window(ed.Tumbling(5_000)).aggregate(ed.Count())
            .sink(ed.sinks.collect()))
        return job

    state = f"rocksdb:{tmp_path / 'state'}"
    with pytest.raises(ed.errors.UserFunctionError):
        ed.run_local(build(fail=True), state, batch_size=1, checkpoint_interval=6)
    resumed = ed.run_local(build(fail=False), state, batch_size=1, checkpoint_interval=6)
    assert resumed.stats.resumed
    assert resumed.stats.late_dropped == 4
    whole = ed.run_local(build(fail=False), batch_size=1, checkpoint_interval=6)
    assert whole.stats.late_dropped == 4


@pytest.mark.parametrize("assigner", [ed.Tumbling(1_000), ed.Sliding(2_000, 500),
                                      ed.Session(700)])
def test_window_state_is_empty_after_the_watermark_passes(tmp_path, assigner):
    events = gen_events(4, 2_000, 9, disorder=900)
    results, _, result = run(events, assigner, agg=ed.Count(), lateness=300,
                             state=f"rocksdb:{tmp_path / 'db'}")
    assert results
    with ed.RocksDbStateBackend(tmp_path / "db") as db:
        window_cfs = [cf for cf in db.column_families() if cf.endswith(".windows")]
        assert window_cfs
        assert sum(db.count(cf) for cf in window_cfs) == 0
        timer_cfs = [cf for cf in db.column_families() if cf.startswith("__timers__")]
        assert sum(db.count(cf) for cf in timer_cfs) == 0


def test_window_helpers():
    assert Window(0, 10).max_timestamp == 9
    assert ed.Sliding(10, 3).assign(10) == [Window(9, 19), Window(6, 16), Window(3, 13)]
    with pytest.raises(ed.errors.ConfigError):
        ed.Tumbling(0)


@pytest.mark.parametrize(("lateness", "is_late"), [(0, True), (1, False)])
def test_lateness_boundary_is_exact(lateness, is_late):
    # After the first batch the watermark is 10_000 - 0 - 1 = 9_999, the last ms of [5s, 10s).
    events = [{"k": "a", "ts": 10_000, "v": 1}, {"k": "a", "ts": 9_000, "v": 1}]
    tag = ed.OutputTag("late")
    results, late, _ = run(events, ed.Tumbling(5_000), agg=ed.Count(), lateness=lateness,
                           late=tag, batch_size=1, delay=0)
    if is_late:
        assert late == [events[1]]
        assert ("a", 5_000, 10_000) not in final_values(results)
    else:
        assert late == []
        # accepted behind the watermark: fired at once with the updated value
        assert {"key": "a", "start": 5_000, "end": 10_000, "value": 1} in results



def _counts(results: list[dict]) -> list[tuple]:
    return sorted((r["key"], r["start"], r["end"], r["value"]) for r in results)


@pytest.mark.parametrize("batch", [1, 50])
def test_a_session_merge_keeps_the_times_other_windows_of_the_key_fire_or_end_at(batch) -> None:
    """A key's timers are one per time: a session's end plus lateness can be another
    session's end. Merging a window away must not take the other's firing (A) or cleanup
    (B) with it."""
    def sessions(events: list[dict], delay: int) -> list[tuple]:
        return _counts(run(events, ed.Session(5), agg=ed.Count(), lateness=10,
                           batch_size=batch, delay=delay)[0])

    # A: [0,5) cleans up at 14, [10,15) fires at 14; the event at 3 merges [0,5) into [0,8).
    events = [{"k": "x", "ts": 0}, {"k": "x", "ts": 10}, {"k": "x", "ts": 3}]
    assert sessions(events, 100) == [("x", 0, 8, 2), ("x", 10, 15, 1)]
    # B: [10,15) grows to [10,18), a merge that took [0,5)'s cleanup at 14 with it; the
    # watermark passes 14, so the late event at 3 opens [3,8) alone, not joining [0,5).
    events = [{"k": "x", "ts": 0}, {"k": "x", "ts": 10}, {"k": "x", "ts": 13},
              {"k": "y", "ts": 16}, {"k": "x", "ts": 3}]
    assert [r for r in sessions(events, 0) if r[0] == "x"] == [
        ("x", 0, 5, 1), ("x", 3, 8, 1), ("x", 10, 18, 2)]


def test_an_event_between_sliding_windows_is_in_none_and_not_late() -> None:
    """A slide above the size leaves gaps (sampling windows): an event in one is on time,
    neither late output nor counted as dropped, as in Flink."""
    events = [{"k": "a", "ts": 1}, {"k": "a", "ts": 7}, {"k": "a", "ts": 12}]
    results, late, result = run(events, ed.Sliding(5, 10), agg=ed.Count(), delay=0,
                                late=ed.OutputTag("late"))
    assert _counts(results) == [("a", 0, 5, 1), ("a", 10, 15, 1)]
    assert late == []
    _, _, result = run(events, ed.Sliding(5, 10), agg=ed.Count(), delay=0)
    assert result.stats.late_dropped == 0


def test_a_session_lateness_beyond_a_timers_range_ends_with_the_input() -> None:
    events = [{"k": "a", "ts": 1}, {"k": "a", "ts": 20}]
    results = run(events, ed.Session(5), agg=ed.Count(), lateness=2**63, delay=0)[0]
    assert _counts(results) == [("a", 1, 6, 1), ("a", 20, 25, 1)]
