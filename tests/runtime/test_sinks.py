"""File sinks: a fresh run replaces the file; a resumed run keeps it and never leaves a torn line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import UserFunctionError
from eddies.state import RocksDbStateBackend
from eddies.state.keys import encode_key
from eddies.state.values import unpack

N = 3_000
FAIL_AT = 2_400  # mid-round 10: round 9 was flushed to the sink but not checkpointed


class Running(ed.KeyedProcessFunction):
    count = ed.ValueState("count", default=0)
    fail_at: int | None = None

    def on_event(self, event, ctx):
        if event["id"] == self.fail_at:
            raise RuntimeError("simulated crash")
        self.count.set(self.count.get() + 1)
        yield {"id": event["id"], "key": ctx.key, "n": self.count.get()}


def write_input(path: Path) -> list[dict[str, Any]]:
    lines = [{"id": i, "k": f"k{i % 7}", "ts": i * 10} for i in range(N)]
    lines.insert(100, "garbage")  # one dead letter, so the dead-letter file is resumed too
    path.write_text("".join((json.dumps(e) if isinstance(e, dict) else e) + "\n"
                            for e in lines))
    return [e for e in lines if isinstance(e, dict)]


def expected_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    out = []
    for e in events:
        counts[e["k"]] = counts.get(e["k"], 0) + 1
        out.append({"id": e["id"], "key": e["k"], "n": counts[e["k"]]})
    return out


def build(source: Path, output: Path, fail_at: int | None = None,
          extra: ed.sinks.Sink | None = None) -> ed.Job:
    fn = Running()
    fn.fail_at = fail_at
    job = ed.Job("sinks")
    stream = job.source(ed.sources.jsonl(source), timestamp="ts").key_by("k").process(fn)
    stream.sink(ed.sinks.jsonl(output))
    if extra is not None:
        stream.sink(extra)
    return job


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"torn last line: {data[-60:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def checkpointed_length(state_dir: Path, sink: str) -> int:
    with RocksDbStateBackend(state_dir) as db:
        meta = unpack(db.get("__meta__", encode_key(("job", "sinks"))))
    return meta["sinks"][sink]


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_a_fresh_run_replaces_the_file(tmp_path: Path, state: str) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    events = write_input(source)
    output.write_text('{"old": 1}\n{"old": 2}\n{"half a li')
    dead = tmp_path / "dead.jsonl"
    dead.write_text("stale\n")
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'fresh-state'}"
    ed.run_local(build(source, output), spec, dead_letters=dead)
    assert read_lines(output) == expected_lines(events)
    assert [d["raw"] for d in read_lines(dead)] == ["garbage"]
    # Memory state never resumes: running again replaces the output again.
    if state == "memory":
        ed.run_local(build(source, output), spec)
        assert read_lines(output) == expected_lines(events)


def test_a_resumed_run_keeps_the_file_and_cuts_a_torn_line(tmp_path: Path) -> None:
    source, output, dead = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dead.jsonl"
    events = write_input(source)
    state_dir = tmp_path / "state"
    spec = f"rocksdb:{state_dir}"
    with pytest.raises(UserFunctionError):
        ed.run_local(build(source, output, fail_at=FAIL_AT), spec, checkpoint_interval=500,
                     batch_size=250, dead_letters=dead)
    kept = checkpointed_length(state_dir, "out.jsonl")
    before = output.read_bytes()
    assert 0 < kept < len(before)  # output went past the checkpoint before the crash
    # A crash mid-write leaves half a line; so does this.
    with output.open("ab") as f:
        f.write(b'{"id": 99999, "key": "k1", "n"')
    with dead.open("ab") as f:
        f.write(b'{"source": "in.js')

    this_run = ed.sinks.collect()
    result = ed.run_local(build(source, output, extra=this_run), spec, checkpoint_interval=500,
                          batch_size=250, dead_letters=dead)
    assert result.stats.resumed
    after = output.read_bytes()
    assert after[:kept] == before[:kept]  # what the checkpoint covers is kept as it was
    assert read_lines(output) == expected_lines(events)  # nothing doubled, nothing torn
    # Only what came after the checkpoint was written again.
    assert len(result.collected(this_run)) == len(read_lines(output)[kept_lines(before, kept):])
    assert len(result.collected(this_run)) < N
    assert [d["raw"] for d in read_lines(dead)] == ["garbage"]

    # A run on a finished checkpoint has nothing left to do: the file stays as it is.
    ed.run_local(build(source, output), spec)
    assert output.read_bytes() == after


def kept_lines(data: bytes, length: int) -> int:
    return data[:length].count(b"\n")


def test_a_file_shorter_than_its_checkpoint_is_cut_to_its_last_complete_line(
        tmp_path: Path) -> None:
    """If the tail of the file was lost (page cache gone with the machine), the resumed run
    cannot restore it, but it must not leave half a line behind."""
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source)
    state_dir = tmp_path / "state"
    with pytest.raises(UserFunctionError):
        ed.run_local(build(source, output, fail_at=FAIL_AT), f"rocksdb:{state_dir}",
                     checkpoint_interval=500, batch_size=250)
    kept = checkpointed_length(state_dir, "out.jsonl")
    with output.open("r+b") as f:
        f.truncate(kept - 7)  # mid-line, short of the checkpointed length
    ed.run_local(build(source, output), f"rocksdb:{state_dir}", checkpoint_interval=500)
    lines = read_lines(output)  # no torn line
    ids = [o["id"] for o in lines]
    assert ids[-1] == N - 1
    assert len(ids) == len(set(ids))  # the lost line is lost, but nothing is doubled


def test_a_value_the_sink_cannot_write_is_a_dead_letter_and_the_rest_are_written(
        tmp_path: Path) -> None:
    """JSON has no tuple dict keys and no lone surrogates: such a value goes to dead letters
    naming the sink and the reason, and the values around it are written in order."""
    bad = [{(1, 2): 3}, {"a": "\ud800"}]
    job = ed.Job("sink-refuses")
    out = tmp_path / "out.jsonl"
    (job.source(ed.sources.iterable(range(6))).map(lambda x: bad[x // 3] if x in (1, 4)
                                                   else {"x": x})
     .sink(ed.sinks.jsonl(out, name="out")))
    result = ed.run_local(job, dead_letters=tmp_path / "dead.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"x": 0}, {"x": 2}, {"x": 3}, {"x": 5}]
    assert result.stats.events_out == 4
    assert result.stats.dead_letters == 2
    reasons = [d["reason"] for d in result.dead_letters]
    assert all(r.startswith("sink 'out' (jsonl(") for r in reasons)
    assert "Dict key" in reasons[0] and "surrogates" in reasons[1]
    assert [d["raw"] for d in result.dead_letters] == [repr(bad[0]), repr(bad[1])]
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 2


def test_big_ints_are_exact_in_dict_subclasses_and_dataclasses() -> None:
    import collections
    import dataclasses

    from eddies.operators.sinks import to_json_line

    @dataclasses.dataclass
    class Ids:
        a: int

    assert to_json_line(collections.Counter(ids=2**70)) == b'{"ids":1180591620717411303424}\n'
    assert to_json_line(collections.OrderedDict(a=[-(2**70)])) == (
        b'{"a":[-1180591620717411303424]}\n')
    assert to_json_line(Ids(2**70)) == b'{"a":1180591620717411303424}\n'
