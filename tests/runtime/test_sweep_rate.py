"""The TTL sweep keeps up with a job that writes more TTL entries per checkpoint than one
sweep step takes (10,000): expired entries must not pile up."""

from __future__ import annotations

from pathlib import Path

import eddies as ed
from eddies.runtime.local import LocalRunner
from eddies.state import RocksDbStateBackend


class Short(ed.KeyedProcessFunction):
    seen = ed.ValueState("seen", ttl=ed.Ttl(ms=1_000))

    def on_event(self, event, ctx):
        self.seen.set(event["n"])


def test_expired_entries_are_all_swept_at_each_checkpoint(tmp_path: Path) -> None:
    # 30k distinct keys per checkpoint, one per ms, each expiring 1 s after its write: by each
    # checkpoint nearly all of the previous interval's 30k entries have expired.
    n = 90_000
    events = [{"k": f"k{i}", "n": i, "ts": i} for i in range(n)]
    job = ed.Job("sweep-rate")
    (job.source(ed.sources.iterable(events), timestamp="ts")
        .key_by("k").process(Short()).sink(ed.sinks.collect()))
    state = tmp_path / "state"
    runner = LocalRunner(job, f"rocksdb:{state}", checkpoint_interval=30_000,
                            batch_size=2_000)
    live_at_checkpoint: list[int] = []
    checkpoint = runner.checkpoint

    def counting_checkpoint() -> None:
        checkpoint()
        live_at_checkpoint.append(runner.backend.count("seen"))

    runner.checkpoint = counting_checkpoint  # type: ignore[method-assign]
    runner.run()
    # After each mid-run checkpoint only what has not expired yet is left: at most the last
    # second of keys plus one batch (the watermark trails by a batch), never a backlog.
    assert live_at_checkpoint[:2] and all(c <= 3_000 for c in live_at_checkpoint[:2]), (
        live_at_checkpoint)
    with RocksDbStateBackend(state, read_only=True) as view:
        assert view.count("seen") == 0  # the end of input expires everything
