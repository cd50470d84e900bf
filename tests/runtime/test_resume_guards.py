"""Resuming a state dir or a savepoint never loses state silently: a dir resumed with another
max_parallelism is refused (the savepoint route moves it), a transformed savepoint keeps the
key groups of its base, and restored entries with an expiry are swept as in one
uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eddies as ed
from eddies.errors import SavepointError, StateIdentityError
from eddies.runtime.local import LocalRunner
from eddies.runtime.savepoint import (
    SavepointWriter,
    create_savepoint,
    read_savepoint,
    write_savepoint_file,
)
from eddies.state.rocksdb import RocksDbStateBackend


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)
    tag = ed.ValueState("tag", default="none")

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)
        self.tag.set("t")
        yield {"k": ctx.key, "n": self.n.get(), "tag": self.tag.get()}


def _input(tmp_path: Path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"k": f"k{i % 3}"}) + "\n" for i in range(60)))
    return src


def _job(src: Path, out) -> ed.Job:
    job = ed.Job("counts")
    job.source(ed.sources.jsonl(src)).key_by("k").process(Count(), name="Count").sink(out)
    return job


def _run_half(src: Path, state: str, **options) -> None:
    runner: LocalRunner | None = None

    def progress(stats):
        if stats.events_in >= 30:
            runner.request_stop()

    runner = LocalRunner(_job(src, ed.sinks.collect()), state, batch_size=10,
                         checkpoint_interval=10, on_progress=progress, **options)
    runner.run()


def _finals(result, out) -> dict[str, int]:
    return {v["k"]: v["n"] for v in result.collected(out)}


# -- max_parallelism of a dir -----------------------------------------------------------------------
def test_a_dir_resumed_with_another_max_parallelism_is_refused(tmp_path):
    src = _input(tmp_path)
    _run_half(src, f"rocksdb:{tmp_path / 'st'}")
    out = ed.sinks.collect()
    with pytest.raises(StateIdentityError, match=(
            r"key groups of max_parallelism 128, and this run has max_parallelism 7.*"
            r"Resume it with max_parallelism=128.*eddies savepoint create DIR SP.*"
            r"from_savepoint=SP, max_parallelism=7")):
        ed.run_local(_job(src, out), f"rocksdb:{tmp_path / 'st'}", max_parallelism=7)
    assert out.items == []  # refused before the first event
    # the same max_parallelism resumes it
    res = ed.run_local(_job(src, out), f"rocksdb:{tmp_path / 'st'}")
    assert _finals(res, out) == {"k0": 20, "k1": 20, "k2": 20}


def test_the_savepoint_route_moves_a_dir_to_another_max_parallelism(tmp_path):
    src = _input(tmp_path)
    _run_half(src, f"rocksdb:{tmp_path / 'st'}")
    create_savepoint(tmp_path / "st", tmp_path / "sp")
    out = ed.sinks.collect()
    res = ed.run_local(_job(src, out), f"rocksdb:{tmp_path / 'new'}",
                       from_savepoint=tmp_path / "sp", max_parallelism=7)
    assert _finals(res, out) == {"k0": 20, "k1": 20, "k2": 20}
    # the restored dir records its own key groups: it resumes with 7, and refuses 128
    with pytest.raises(StateIdentityError, match="max_parallelism 7, and this run has "
                                                 "max_parallelism 128"):
        ed.run_local(_job(src, ed.sinks.collect()), f"rocksdb:{tmp_path / 'new'}")
    res = ed.run_local(_job(src, ed.sinks.collect()), f"rocksdb:{tmp_path / 'new'}",
                       max_parallelism=7)
    assert res.stats.this_run("events_in") == 0  # all of the input was read already


# -- SavepointWriter(base=) keeps the base's key groups ----------------------------------------------
def test_a_transformed_copy_keeps_the_key_groups_of_its_base(tmp_path):
    src = _input(tmp_path)
    _run_half(src, f"rocksdb:{tmp_path / 'st'}", max_parallelism=7)
    sp = create_savepoint(tmp_path / "st", tmp_path / "sp")
    assert sp.max_parallelism == 7
    with SavepointWriter(tmp_path / "sp2", base=sp) as w:  # "tag" replaced, "n" untouched
        w.state("Count", "tag", "value", [(e.key, "T") for e in sp.entries("tag")])
        w.state("Count", "extra", "value", [("k1", 5)])
    copy = read_savepoint(tmp_path / "sp2")
    assert copy.max_parallelism == 7
    assert ({k[:2] for k, _ in copy.raw_entries("n")} == {k[:2] for k, _ in copy.raw_entries("tag")}
            == {k[:2] for k, _ in sp.raw_entries("n")})
    out = ed.sinks.collect()
    res = ed.run_local(_job(src, out), f"rocksdb:{tmp_path / 'new'}",
                       from_savepoint=tmp_path / "sp2", allow_non_restored_state=True)
    assert _finals(res, out) == {"k0": 20, "k1": 20, "k2": 20}


def test_a_copy_with_another_max_parallelism_is_refused(tmp_path):
    with SavepointWriter(tmp_path / "sp", job="j", max_parallelism=7) as w:
        w.state("Op", "n", "value", [("a", 1)])
    sp = read_savepoint(tmp_path / "sp")
    with pytest.raises(SavepointError, match=r"groups its keys by max_parallelism 7.*"
                                             r"leave max_parallelism out"):
        SavepointWriter(tmp_path / "sp2", base=sp, max_parallelism=128)
    assert not (tmp_path / "sp2").exists()


def test_a_copy_of_a_kafka_savepoint_keeps_its_partition_groups(tmp_path):
    """A Kafka job's savepoint groups keys by partition (max_parallelism None): a copy keeps
    them, and the restore recomputes every group, also of the keys the copy added."""
    base = SavepointWriter(tmp_path / "local", job="counts", max_parallelism=128)
    base.state("Count", "n", "value", [("k0", 14), ("k1", 13), ("k2", 13)])
    local = base.write()
    header = {**local.header, "max_parallelism": None}
    # as a Kafka savepoint stores them: key group = the partition (here 5), same user keys
    kafka = write_savepoint_file(
        tmp_path / "kafka", header,
        [("state", "Count", "n", "value", 1,
          [(b"\x00\x05" + k[2:], v) for k, v in local.raw_entries("n")]),
         ("timers", "Count", None, None, 0, [])])
    with SavepointWriter(tmp_path / "copy", base=kafka) as w:
        w.state("Count", "tag", "value", [("k0", "T")])
    copy = read_savepoint(tmp_path / "copy")
    assert copy.max_parallelism is None
    assert {k[:2] for k, _ in copy.raw_entries("n")} == {b"\x00\x05"}
    out = ed.sinks.collect()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"k": f"k{i % 3}"}) + "\n" for i in range(3)))
    res = ed.run_local(_job(src, out), f"rocksdb:{tmp_path / 'new'}",
                       from_savepoint=tmp_path / "copy")
    assert {v["k"]: v["n"] for v in res.collected(out)} == {"k0": 15, "k1": 14, "k2": 14}


# -- expiring entries restored into a state without a TTL clock -------------------------------------
class Sessions(ed.KeyedProcessFunction):
    m = ed.MapState("m")

    def on_event(self, event, ctx):
        self.m.put(event["i"], event["i"], expire_at=ctx.timestamp + 3000)
        yield None


def _sessions(src: Path) -> ed.Job:
    job = ed.Job("sessions")
    (job.source(ed.sources.jsonl(src), timestamp="ts", watermarks=ed.BoundedOutOfOrderness(0))
     .key_by("k").process(Sessions(), name="s").sink(ed.sinks.collect()))
    return job


def _stop_at(job: ed.Job, state: str, n: int, **options) -> None:
    runner: LocalRunner | None = None

    def progress(stats):
        if stats.events_in >= n:
            runner.request_stop()

    runner = LocalRunner(job, state, batch_size=50, checkpoint_interval=100,
                         on_progress=progress, **options)
    runner.run()


def _stored(path: Path) -> list[tuple[bytes, bytes]]:
    with RocksDbStateBackend(path, read_only=True) as db:
        return list(db.iterate("m"))


def test_restored_entries_with_an_expiry_are_swept_without_a_ttl_clock(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"k": f"k{i % 5}", "i": i, "ts": i * 10}) + "\n"
                           for i in range(2000)))
    _stop_at(_sessions(src), f"rocksdb:{tmp_path / 'a'}", 1500)  # uninterrupted
    _stop_at(_sessions(src), f"rocksdb:{tmp_path / 'b'}", 500)
    create_savepoint(tmp_path / "b", tmp_path / "sp")
    _stop_at(_sessions(src), f"rocksdb:{tmp_path / 'c'}", 1500, from_savepoint=tmp_path / "sp")
    reference = _stored(tmp_path / "a")
    assert 0 < len(reference) < 1500  # entries expired and were swept
    assert _stored(tmp_path / "c") == reference
