"""A state dir belongs to one job and one input: a run of another job (name, operators,
states) or over replaced input stops before the first event with a message that says what
differs and what to do; input grown after a run that ended its event time is refused with
the follow mode offered; the same ended input has nothing to do. The identity's stored bytes
are pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eddies as ed
from eddies.errors import StateIdentityError
from eddies.runtime.identity import (
    IDENTITY_KEY,
    decode_identity,
    encode_identity,
    job_identity,
)
from eddies.runtime.keyed import META_CF
from eddies.runtime.local import LocalRunner, RunStats
from eddies.state.backend import Batch
from eddies.state.keys import encode_key
from eddies.state.rocksdb import RocksDbStateBackend
from eddies.state.values import pack, unpack

N = 2_000
USERS = 20


class Totals(ed.KeyedProcessFunction):
    total = ed.ValueState("total", default=0)

    def on_event(self, event, ctx):
        total = self.total.get() + event["amount"]
        self.total.set(total)
        yield {"user": ctx.key, "i": event["i"], "total": total}


class TotalsAndSeen(Totals):
    seen = ed.MapState("seen")


class TotalsAsList(ed.KeyedProcessFunction):
    total = ed.ListState("total")

    def on_event(self, event, ctx):
        self.total.add(event["amount"])
        yield {"user": ctx.key, "i": event["i"], "total": sum(self.total.get())}


def events(start: int, stop: int) -> str:
    return "".join(json.dumps({"user": f"u{i % USERS}", "ts": 1_000 + i, "i": i,
                               "amount": i % 7}) + "\n" for i in range(start, stop))


def reference(n: int) -> list[dict]:
    totals: dict[str, int] = {}
    out = []
    for i in range(n):
        user = f"u{i % USERS}"
        totals[user] = totals.get(user, 0) + i % 7
        out.append({"user": user, "i": i, "total": totals[user]})
    return out


def build(tmp: Path, name: str = "totals", fn: ed.KeyedProcessFunction | None = None,
          op: str = "totals", source: ed.operators.sources.Source | None = None,
          follow: bool = False) -> ed.Job:
    job = ed.Job(name)
    src = source or ed.sources.jsonl(tmp / "events.jsonl", name="events", follow=follow)
    (job.source(src, timestamp="ts")
        .key_by("user").process(fn or Totals(), name=op)
        .sink(ed.sinks.jsonl(tmp / "out.jsonl"), name="out"))
    return job


def read_out(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]


@pytest.fixture
def ended(tmp_path: Path) -> Path:
    """A dir whose run read events.jsonl (N events) to its end."""
    (tmp_path / "events.jsonl").write_text(events(0, N))
    result = ed.run_local(build(tmp_path), f"rocksdb:{tmp_path / 'state'}",
                          checkpoint_interval=500)
    assert result.stats.events_in == N
    assert read_out(tmp_path) == reference(N)
    return tmp_path


@pytest.fixture
def stopped(tmp_path: Path) -> Path:
    """A dir whose run stopped (as on a signal) after 1,000 of N events."""
    (tmp_path / "events.jsonl").write_text(events(0, N))
    runner = LocalRunner(build(tmp_path), f"rocksdb:{tmp_path / 'state'}",
                         checkpoint_interval=500, batch_size=500)
    runner.on_progress = lambda stats: runner.request_stop()  # seen after the next round
    result = runner.run()
    assert result.stats.stopped and result.stats.events_in == 1_000
    return tmp_path


def run(tmp: Path, job: ed.Job, **options) -> ed.RunResult:
    return ed.run_local(job, f"rocksdb:{tmp / 'state'}", checkpoint_interval=500, **options)


def refused(tmp: Path, job: ed.Job, **options) -> str:
    """The message of the refused run, checking that it left the outputs as they were."""
    before = (tmp / "out.jsonl").read_bytes()
    with pytest.raises(StateIdentityError) as info:
        run(tmp, job, **options)
    assert (tmp / "out.jsonl").read_bytes() == before  # no sink was opened
    return str(info.value)


# -- the stored identity ---------------------------------------------------------------------------
class Fraud(ed.KeyedProcessFunction):
    small = ed.ValueState("small", default=None)
    recent = ed.ListState("recent")
    devices = ed.MapState("devices")
    biggest = ed.ReducingState("biggest", max)

    def on_event(self, event, ctx):
        pass


def golden_job() -> ed.Job:
    job = ed.Job("fraud")
    keyed = job.source(ed.sources.iterable([], name="payments"), timestamp="ts").key_by("card")
    keyed.process(Fraud()).sink(ed.sinks.collect())
    keyed.window(ed.Tumbling(1_000)).aggregate(ed.Count(), name="per-second").sink(
        ed.sinks.collect())
    return job


def test_the_identity_of_a_job() -> None:
    identity = job_identity(golden_job(), {"payments": [None]})
    assert identity == {
        "version": 1,
        "job": "fraud",
        "operators": [
            {"name": "Fraud", "states": [["biggest", "reducing"], ["devices", "map"],
                                         ["recent", "list"], ["small", "value"]]},
            {"name": "per-second", "states": [["per-second.windows", "map"]]},
        ],
        "sources": [{"name": "payments", "kind": "iterable", "partitions": [None]}],
    }
    data = encode_identity(identity)
    assert decode_identity(data, "dir") == identity


def test_identity_golden_bytes() -> None:
    # msgpack, map order as drawn in identity.py; a file partition's fingerprint included.
    fingerprint = {"path": "/data/payments.jsonl", "offset": 9, "size": 18,
                   "digest": bytes(range(16))}
    job = ed.Job("j")
    job.source(ed.sources.jsonl("payments.jsonl", name="p")).key_by("k").process(
        Totals(), name="t").sink(ed.sinks.collect())
    data = encode_identity(job_identity(job, {"p": [fingerprint]}))
    assert data.hex(" ") == (
        "84 a7 76 65 72 73 69 6f 6e 01 a3 6a 6f 62 a1 6a a9 6f 70 65 72 61 74 6f 72 73 91 82 "
        "a4 6e 61 6d 65 a1 74 a6 73 74 61 74 65 73 91 92 a5 74 6f 74 61 6c a5 76 61 6c 75 65 "
        "a7 73 6f 75 72 63 65 73 91 83 a4 6e 61 6d 65 a1 70 a4 6b 69 6e 64 a5 6a 73 6f 6e 6c "
        "aa 70 61 72 74 69 74 69 6f 6e 73 91 84 a4 70 61 74 68 b4 2f 64 61 74 61 2f 70 61 79 "
        "6d 65 6e 74 73 2e 6a 73 6f 6e 6c a6 6f 66 66 73 65 74 09 a4 73 69 7a 65 12 a6 64 69 "
        "67 65 73 74 c4 10 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f")


def test_an_unknown_identity_version_is_refused() -> None:
    with pytest.raises(StateIdentityError, match=r"state dir d records its job in identity "
                                                 r"format version 2, which this eddies does "
                                                 r"not read \(it reads version 1\)"):
        decode_identity(pack({"version": 2, "job": "x"}), "state dir d")


def test_each_checkpoint_stores_the_identity_with_the_file_fingerprint(stopped: Path) -> None:
    with RocksDbStateBackend(stopped / "state", read_only=True) as db:
        meta = dict(db.iterate(META_CF))
    identity = decode_identity(meta[IDENTITY_KEY], "dir")
    assert identity["job"] == "totals"
    assert identity["operators"] == [{"name": "totals", "states": [["total", "value"]]}]
    [source] = identity["sources"]
    assert (source["name"], source["kind"]) == ("events", "jsonl")
    [fp] = source["partitions"]
    data = (stopped / "events.jsonl").read_bytes()
    offset = len(events(0, 1_000).encode())
    assert unpack(meta[encode_key(("source", "events", 0))]) == [offset, 1_000]
    assert fp["path"] == str(stopped / "events.jsonl")
    assert (fp["offset"], fp["size"]) == (offset, len(data))
    import hashlib
    assert fp["digest"] == hashlib.blake2b(data[:4096] + data[offset - 4096:offset],
                                           digest_size=16).digest()


# -- refusals --------------------------------------------------------------------------------------
def test_a_renamed_job_is_refused_naming_both(ended: Path) -> None:
    message = refused(ended, build(ended, name="totals-v2"))
    assert message == (
        f"state dir {ended / 'state'} belongs to job 'totals', not to job 'totals-v2': a "
        "state dir holds one job's state, timers and input positions, and this job would "
        "start its input over on the other job's state. Run 'totals-v2' on a new state dir "
        "(--state rocksdb:NEW_DIR), or keep the name (ed.Job('totals')) to resume it")


def test_the_way_out_of_a_rename_is_a_new_dir(ended: Path) -> None:
    result = ed.run_local(build(ended, name="totals-v2"), f"rocksdb:{ended / 'new'}")
    assert result.stats.late_events == 0
    assert read_out(ended) == reference(N)


@pytest.mark.parametrize(("fn", "op", "diff"), [
    (TotalsAndSeen(), "totals", "operator 'totals': state 'seen' (map) is new"),
    (TotalsAsList(), "totals", "operator 'totals': state 'total' was a value state and is now "
                               "a list state"),
    (Totals(), "sums", "operator 'totals' is gone (it had 'total' (value)); operator 'sums' "
                       "is new"),
], ids=["state-added", "state-kind-changed", "operator-renamed"])
def test_other_operators_or_states_are_refused(stopped: Path, fn: ed.KeyedProcessFunction,
                                               op: str, diff: str) -> None:
    message = refused(stopped, build(stopped, fn=fn, op=op))
    assert message == (
        f"state dir {stopped / 'state'} holds job 'totals' with other operators, states or "
        f"sources than this one: {diff}. Its state and input positions do not fit the job as "
        "it is now: run it on a new state dir (--state rocksdb:NEW_DIR), which reads the "
        "input from the start, or run the job as it was on this dir")


def test_a_state_gone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(events(0, 100))
    runner = LocalRunner(build(tmp_path, fn=TotalsAndSeen()), f"rocksdb:{tmp_path / 'state'}")
    runner.on_progress = lambda stats: runner.request_stop()
    runner.run()
    message = refused(tmp_path, build(tmp_path))
    assert "operator 'totals': state 'seen' (map) is gone." in message


def test_a_renamed_source_is_refused(stopped: Path) -> None:
    source = ed.sources.jsonl(stopped / "events.jsonl", name="payments")
    message = refused(stopped, build(stopped, source=source))
    assert "sources than this one: source 'events' is gone; source 'payments' is new." in message


def test_a_source_read_by_another_reader_is_refused(stopped: Path) -> None:
    source = ed.sources.csv(stopped / "events.jsonl", name="events")
    message = refused(stopped, build(stopped, source=source))
    assert "sources than this one: source 'events' was read as jsonl and is now read as csv." \
        in message


def test_a_replaced_input_file_is_refused(stopped: Path) -> None:
    # Same size, other content: the positions would land in other records.
    (stopped / "events.jsonl").write_text(events(0, N).replace('"amount": 3', '"amount": 4'))
    message = refused(stopped, build(stopped))
    assert message == (
        f"state dir {stopped / 'state'}: the input of job 'totals' changed since its last "
        f"checkpoint: source 'events': the first {len(events(0, 1_000)):,} bytes of file "
        f"{stopped / 'events.jsonl'} are not those the checkpoint read (its start, or the "
        "bytes before its position, differ): it was replaced or rewritten since. The positions "
        "the job would resume from mean nothing in the input as it is now: put the input back "
        "as it was, or run the job on a new state dir (--state rocksdb:NEW_DIR) to read it "
        "from the start")


def test_a_cut_input_file_is_refused(stopped: Path) -> None:
    (stopped / "events.jsonl").write_text(events(0, 500))
    message = refused(stopped, build(stopped))
    assert (f"source 'events': file {stopped / 'events.jsonl'} is {len(events(0, 500)):,} "
            f"bytes, shorter than the {len(events(0, 1_000)):,} bytes the checkpoint read: it "
            "was replaced, rewritten or cut since.") in message


def test_a_moved_input_file_resumes(stopped: Path) -> None:
    """The fingerprint is the bytes read, not the path: the same file elsewhere fits."""
    (stopped / "moved").mkdir()
    (stopped / "events.jsonl").rename(stopped / "moved" / "events.jsonl")
    job = build(stopped, source=ed.sources.jsonl(stopped / "moved" / "events.jsonl",
                                                 name="events"))
    result = run(stopped, job)
    assert result.stats.this_run("events_in") == N - 1_000
    assert read_out(stopped) == reference(N)


def test_a_grown_input_after_a_run_that_ended_it_is_refused_offering_follow(
        ended: Path) -> None:
    with open(ended / "events.jsonl", "a") as f:
        f.write(events(N, N + 300))
    message = refused(ended, build(ended))
    assert message == (
        f"state dir {ended / 'state'}: job 'totals' already read its input to the end and "
        "ended its event time there (the watermark went to the end of time: every timer and "
        "window fired and TTL state expired), and the input has grown since: source 'events' "
        f"({len(events(N, N + 300)):,} bytes appended). Its new records would all count as "
        "late. To keep reading a growing input, run with --follow (run_local(..., "
        "follow=True)), which never ends event time, on a new state dir (--state "
        "rocksdb:NEW_DIR --follow): it reads the input from the start and keeps following it")


def test_following_a_dir_whose_run_ended_its_input_is_refused(ended: Path) -> None:
    message = refused(ended, build(ended), follow=True)
    assert ("and this run follows it (source 'events'): every line appended would count as "
            "late. To keep reading a growing input, run with --follow") in message


def test_the_same_input_after_a_run_that_ended_it_has_nothing_to_do(ended: Path) -> None:
    before = (ended / "out.jsonl").read_bytes()
    runner = LocalRunner(build(ended), f"rocksdb:{ended / 'state'}")
    result = runner.run()
    assert runner.nothing_to_do == (
        f"state dir {ended / 'state'} already read the input of job 'totals' to its end "
        f"({N:,} events) and the input has not grown since: nothing to do. To process it "
        "again, run on a new state dir (--state rocksdb:NEW_DIR)")
    assert result.stats.resumed and result.stats.this_run("events_in") == 0
    assert result.stats.this_run("checkpoints") == 0  # nothing written
    assert (ended / "out.jsonl").read_bytes() == before


def test_a_grown_input_without_event_time_goes_on(tmp_path: Path) -> None:
    """Without timestamps, ending the input ended no event time: more lines are read on."""
    def job() -> ed.Job:
        j = ed.Job("totals")
        (j.source(ed.sources.jsonl(tmp_path / "events.jsonl", name="events"))
            .key_by("user").process(Totals(), name="totals")
            .sink(ed.sinks.jsonl(tmp_path / "out.jsonl"), name="out"))
        return j

    (tmp_path / "events.jsonl").write_text(events(0, 1_000))
    run(tmp_path, job())
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write(events(1_000, N))
    result = run(tmp_path, job())
    assert result.stats.this_run("events_in") == N - 1_000
    assert read_out(tmp_path) == reference(N)


def test_a_grown_iterable_after_a_run_that_ended_it_is_refused(tmp_path: Path) -> None:
    items = [json.loads(line) for line in events(0, 100).splitlines()]
    (tmp_path / "out.jsonl").touch()
    job = build(tmp_path, source=ed.sources.iterable(items, name="events"))
    run(tmp_path, job)
    items.extend(json.loads(line) for line in events(100, 150).splitlines())
    message = refused(tmp_path, build(tmp_path, source=ed.sources.iterable(items,
                                                                           name="events")))
    assert ("the input has grown since: source 'events' (50 records appended). Its new "
            "records would all count as late. Run the job on a new state dir") in message


# -- dirs written before identities ----------------------------------------------------------------
def _drop_identity(tmp: Path) -> None:
    with RocksDbStateBackend(tmp / "state") as db:
        batch = Batch()
        batch.delete(META_CF, IDENTITY_KEY)
        db.write(batch)


def test_a_dir_without_identity_resumes_and_gets_one(stopped: Path) -> None:
    _drop_identity(stopped)
    result = run(stopped, build(stopped))
    assert result.stats.this_run("events_in") == N - 1_000
    assert read_out(stopped) == reference(N)
    with RocksDbStateBackend(stopped / "state", read_only=True) as db:
        assert decode_identity(db.get(META_CF, IDENTITY_KEY), "dir")["job"] == "totals"


def test_a_dir_without_identity_still_refuses_another_job_name(stopped: Path) -> None:
    _drop_identity(stopped)
    message = refused(stopped, build(stopped, name="other"))
    assert message.startswith(f"state dir {stopped / 'state'} belongs to job 'totals', not "
                              "to job 'other'")


def test_the_way_out_of_a_grown_input_is_following_on_a_new_dir(ended: Path) -> None:
    with open(ended / "events.jsonl", "a") as f:
        f.write(events(N, N + 300))
    refused(ended, build(ended))
    runner = LocalRunner(build(ended), f"rocksdb:{ended / 'new'}", follow=True)

    def caught_up(stats: RunStats) -> None:
        if stats.events_in == N + 300:
            runner.request_stop()

    runner.on_progress = caught_up
    result = runner.run()
    assert result.stats.stopped and result.stats.late_events == 0
    assert read_out(ended) == reference(N + 300)
    with open(ended / "events.jsonl", "a") as f:  # and it goes on as the file grows
        f.write(events(N + 300, N + 400))
    result = ed.run_local(build(ended), f"rocksdb:{ended / 'new'}")
    assert result.stats.this_run("events_in") == 100 and result.stats.late_events == 0
    assert read_out(ended) == reference(N + 400)
