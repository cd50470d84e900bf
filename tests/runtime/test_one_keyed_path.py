"""The harness and the runners run one keyed path (``KeyedOperator.compile``): the same
function and inputs give the same key validation and the same outputs through both."""

from __future__ import annotations

from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError, KeyEncodingError
from eddies.testing import Harness

KEYS: list[Any] = [
    "a", "é", 7, 7.0, ("u", 1), "a", ("u", 1.0), b"raw", None,
    [1, 2], {"x": 1}, float("nan"), 2 ** 2100, "\ud800", ("u", [1]), "é", 7,
]


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)
        yield (event["id"], ctx.key, self.n.get(), ctx.watermark)


def _events() -> list[dict[str, Any]]:
    # Timestamps rise by 10 with one late record (id 5) in the middle.
    return [{"id": i, "k": k, "ts": 1_000 + 10 * i - (100 if i == 5 else 0)}
            for i, k in enumerate(KEYS)]


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_harness_and_run_local_agree_on_keys_outputs_and_late_events(state, tmp_path) -> None:
    events = _events()
    job = ed.Job("one-path")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts").key_by("k")
     .process(Count(), name="count").sink(out))
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'run'}"
    result = ed.run_local(job, spec, batch_size=1)

    h = Harness(Count(), "memory" if state == "memory" else f"rocksdb:{tmp_path / 'h'}",
                operator="count")
    outputs: list[Any] = []
    refused: list[str] = []
    top = None
    for e in events:
        if top is not None:
            h.watermark(top - 1)  # BoundedOutOfOrderness(0): the max so far minus one
        try:
            outputs += h.event(e, key=e["k"], timestamp=e["ts"])
        except KeyEncodingError as exc:
            refused.append(str(exc))
        top = e["ts"] if top is None else max(top, e["ts"])
    h.close()

    assert len(refused) == 6  # the list, the dict, nan, the huge int, the surrogate, ...
    assert [d["reason"] for d in result.dead_letters] == refused
    assert out.items == outputs
    # 7 and 7.0 are one key; "é" counts twice.
    assert [o[2] for o in outputs if o[1] in (7, 7.0)] == [1, 2, 3]
    assert result.stats.late_events == h.stats.late_events == 1


class Stamp(ed.KeyedProcessFunction):
    def on_event(self, event, ctx):
        yield (event["id"], ctx.timestamp, type(ctx.timestamp).__name__)


STAMPS: list[Any] = [1_000, 1_500.9, -2.5, "2000", float("inf"), float("nan"), True, 2**62,
                     2**62 + 1, -(2**62) - 1]


def test_harness_takes_timestamps_as_the_runner_does() -> None:
    """A float is cut to its int ms through both; what the runner dead-letters (not a number,
    not finite, a bool, beyond +-2**62) the harness refuses with the same reason."""
    events = [{"id": i, "k": "a", "ts": ts} for i, ts in enumerate(STAMPS)]
    job = ed.Job("stamps")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(events), timestamp="ts").key_by("k")
     .process(Stamp(), name="stamp").sink(out))
    result = ed.run_local(job, "memory", batch_size=1)

    h = Harness(Stamp(), operator="stamp")
    outputs: list[Any] = []
    refused: list[str] = []
    for e in events:
        try:
            outputs += h.event(e, key="a", timestamp=e["ts"])
        except ConfigError as exc:
            refused.append(str(exc))
    assert outputs == out.items == [(0, 1_000, "int"), (1, 1_500, "int"), (2, -2, "int"),
                                    (7, 2**62, "int")]
    reasons = [d["reason"] for d in result.dead_letters]
    assert len(reasons) == 6
    assert refused == [f"{r}; a runner sends such a record to dead letters" for r in reasons]
    assert "bad timestamp '2000': expected int ms since epoch" in refused[0]
    assert "out of range" in refused[-1]
