"""Dead letters in memory are bounded in bytes: the run keeps a prefix, the sink gets all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import eddies as ed
from eddies.operators.sinks import Sink

LINE = 4_096  # bytes per bad line
BAD = 5_000  # 20 MB of bad lines: over the 16 MiB kept in memory
BOUND = 16 * 2**20


class Recording(Sink):
    """A dead-letter sink that keeps what it is given and the largest single write."""

    def __init__(self) -> None:
        self.name = "dead"
        self.items: list[dict[str, Any]] = []
        self.largest_write = 0

    def open(self, position: Any | None) -> None:
        pass

    def write(self, values: list[Any]) -> None:
        self.largest_write = max(self.largest_write, sum(len(v["raw"]) for v in values))
        self.items.extend(values)


class Count(ed.KeyedProcessFunction):
    count = ed.ValueState("count", default=0)

    def on_event(self, event, ctx):
        self.count.set(self.count.get() + 1)
        yield (ctx.key, self.count.get())


def write_input(path: Path) -> list[tuple[str, int]]:
    """Valid lines interleaved with bad ones of LINE bytes; returns the expected outputs."""
    lines = []
    expected = []
    counts: dict[str, int] = {}
    for i in range(BAD):
        lines.append(("x" * (LINE - 12) + f"{i:>12}").encode())  # not JSON
        if i % 10 == 0:
            key = f"u{i % 7}"
            counts[key] = counts.get(key, 0) + 1
            expected.append((key, counts[key]))
            lines.append(json.dumps({"user": key, "ts": 1_000 + i}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return expected


def job(source: Path) -> tuple[ed.Job, ed.sinks.CollectSink]:
    j = ed.Job("bad-lines")
    out = ed.sinks.collect()
    (j.source(ed.sources.jsonl(source), timestamp="ts").key_by("user").process(Count())
        .sink(out))
    return j, out


def test_dead_letters_in_memory_are_bounded_in_bytes_and_all_reach_the_sink(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.jsonl"
    expected = write_input(source)
    sink = Recording()
    j, out = job(source)
    # One round reads the whole input: every dead letter of the run in one batch.
    result = ed.run_local(j, dead_letters=sink, batch_size=20_000)
    assert result.collected(out) == expected
    assert result.stats.dead_letters == BAD
    kept = result.dead_letters
    assert sum(len(d["raw"]) + len(d["reason"]) for d in kept) <= BOUND
    assert 0 < len(kept) < BAD
    # Every letter reached the sink, in input order, the kept ones being its first.
    assert len(sink.items) == BAD
    assert [int(d["raw"][-12:]) for d in sink.items] == list(range(BAD))
    assert kept == sink.items[:len(kept)]
    # Spilled in parts: no buffer of a whole batch's letters.
    assert sink.largest_write <= BOUND + LINE


def test_a_dead_letter_file_gets_every_line_past_the_bound(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    expected = write_input(source)
    dead_file = tmp_path / "dead.jsonl"
    j, out = job(source)
    result = ed.run_local(j, dead_letters=dead_file, batch_size=20_000)
    assert result.collected(out) == expected
    letters = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert [int(d["raw"][-12:]) for d in letters] == list(range(BAD))
    assert all("invalid JSON" in d["reason"] for d in letters)
    assert len(result.dead_letters) < BAD == result.stats.dead_letters
