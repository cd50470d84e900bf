"""``on_expire`` across restarts and savepoints, for a value written already expired (a
record later than the TTL) that has not fired when the job stops: after a resume, a
savepoint restore or a Harness restore, it reads as absent and fires once, as in the
uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.runtime.local import LocalRunner
from eddies.runtime.savepoint import create_savepoint
from eddies.testing import Harness


class LateReads(ed.KeyedProcessFunction):
    acc = ed.ValueState("acc", ttl=ed.Ttl(ms=1_000), on_expire=True)

    def on_event(self, event, ctx):
        seen = self.acc.get()
        self.acc.set(event["i"])
        yield ("read", ctx.key, event["i"], seen, self.acc.get())

    def on_expire(self, state, value, ctx):
        yield ("expired", ctx.key, value, ctx.timestamp)


EVENTS = [{"k": "a", "ts": 10_000, "i": 0},
          {"k": "b", "ts": 100, "i": 1},  # late: stamp 1,100, at or below the watermark 9,999
          {"k": "b", "ts": 200, "i": 2},  # late
          {"k": "b", "ts": 300, "i": 3},  # late
          {"k": "a", "ts": 20_000, "i": 4}]
WHOLE = [("read", "a", 0, None, 0),
         ("read", "b", 1, None, None),
         ("read", "b", 2, None, None),
         ("read", "b", 3, None, None),
         ("read", "a", 4, 0, 4),
         ("expired", "b", 3, 1_300),
         ("expired", "a", 4, 21_000)]


def job(src: Path) -> tuple[ed.Job, Any]:
    j = ed.Job("late")
    out = ed.sinks.collect()
    (j.source(ed.sources.jsonl(src), timestamp="ts", watermarks=ed.BoundedOutOfOrderness(0))
     .key_by("k").process(LateReads(), name="f").sink(out))
    return j, out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return path


def run_until(src: Path, state: str, events: int) -> list[Any]:
    """Run to ``events`` records, checkpointing after each, and stop."""
    j, out = job(src)
    runner: LocalRunner | None = None

    def progress(stats: Any) -> None:
        if stats.events_in >= events:
            assert runner is not None
            runner.request_stop()

    runner = LocalRunner(j, state, batch_size=1, checkpoint_interval=1, on_progress=progress)
    return runner.run().collected(out)


@pytest.mark.parametrize("stop_after", [2, 3])
def test_a_resumed_run_reads_the_late_value_as_absent(src: Path, tmp_path: Path,
                                                      stop_after: int) -> None:
    j, out = job(src)
    assert ed.run_local(j, "memory", batch_size=1).collected(out) == WHOLE
    state = f"rocksdb:{tmp_path / 'db'}"
    first = run_until(src, state, stop_after)
    j, out = job(src)
    assert first + ed.run_local(j, state, batch_size=1).collected(out) == WHOLE


@pytest.mark.parametrize("target", ["memory", "rocksdb"])
def test_a_savepoint_restore_reads_the_late_value_as_absent_and_fires_it(
        src: Path, tmp_path: Path, target: str) -> None:
    first = run_until(src, f"rocksdb:{tmp_path / 'db'}", 2)
    create_savepoint(tmp_path / "db", tmp_path / "sp")
    state = "memory" if target == "memory" else f"rocksdb:{tmp_path / 'restored'}"
    j, out = job(src)
    # A checkpoint (and its sweep) after every record, with no sweep lag: the restored
    # value must not be swept before it fires.
    rest = ed.run_local(j, state, batch_size=1, checkpoint_interval=1, cache_entries=1,
                        ttl_config=ed.TtlConfig(sweep_lag_ms=0),
                        from_savepoint=tmp_path / "sp").collected(out)
    assert first + rest == WHOLE


def test_a_harness_restore_reads_the_late_value_as_absent() -> None:
    def steps(restore_after: int) -> list[Any]:
        h = Harness(LateReads())
        out = h.watermark(9_999)
        for i, ts in enumerate([100, 200, 300], 1):
            out += h.event({"i": i}, key="b", timestamp=ts)
            if i == restore_after:
                snap = h.snapshot()
                h = Harness(LateReads())
                h.restore(snap)
        return out + h.watermark(20_000)

    whole = steps(0)
    assert whole == [("read", "b", 1, None, None), ("read", "b", 2, None, None),
                     ("read", "b", 3, None, None), ("expired", "b", 3, 1_300)]
    assert steps(1) == steps(2) == whole
