"""Follow mode: ``eddies run --follow`` and ``run_local(..., follow=True)`` read growing files
as ``tail -f``, without an end-of-input watermark jump, with idleness as any input has it; a
signal stops at a final checkpoint and later runs go on from there, exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.identity import IDENTITY_KEY, decode_identity
from eddies.runtime.keyed import META_CF
from eddies.runtime.local import LocalRunner, RunStats
from eddies.state.keys import encode_key
from eddies.state.rocksdb import RocksDbStateBackend
from eddies.state.values import unpack

USERS = 5
DEADLINE_S = 60.0

JOB = '''
from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class Totals(ed.KeyedProcessFunction):
    total = ed.ValueState("total", default=0)

    def on_event(self, event, ctx):
        total = self.total.get() + event["amount"]
        self.total.set(total)
        yield {"user": ctx.key, "i": event["i"], "total": total}


job = ed.Job("follow")
events = job.source(ed.sources.jsonl(HERE / "events.jsonl", name="events"), timestamp="ts")
(events.key_by("user").process(Totals(), name="totals")
    .sink(ed.sinks.jsonl(HERE / "out.jsonl"), name="out"))
(events.key_by("user").window(ed.Tumbling(1_000)).aggregate(ed.Count(), name="per-second")
    .sink(ed.sinks.jsonl(HERE / "windows.jsonl"), name="windows"))
'''


def line(i: int) -> str:
    return json.dumps({"user": f"u{i % USERS}", "ts": i * 10, "i": i, "amount": i % 7}) + "\n"


def lines(start: int, stop: int) -> str:
    return "".join(map(line, range(start, stop)))


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def reference_totals(n: int) -> list[dict[str, Any]]:
    totals: dict[str, int] = {}
    out = []
    for i in range(n):
        user = f"u{i % USERS}"
        totals[user] = totals.get(user, 0) + i % 7
        out.append({"user": user, "i": i, "total": totals[user]})
    return out


def reference_windows(n: int) -> list[dict[str, Any]]:
    counts = Counter((f"u{i % USERS}", i * 10 // 1_000) for i in range(n))
    return sorted(({"key": user, "start": s * 1_000, "end": (s + 1) * 1_000, "value": c}
                   for (user, s), c in counts.items()), key=_window_order)


def _window_order(w: dict[str, Any]) -> tuple[int, str]:
    return w["end"], w["key"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(text) for text in path.read_text().splitlines()]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``path`` until it holds ``n`` lines (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    have = path.read_text().count("\n") if path.exists() else 0
    raise AssertionError(f"{path.name}: {have} lines, waited for {n}")


class Follow:
    """``eddies run followjob.py:job --follow`` in a subprocess, stderr to a file."""

    def __init__(self, project: Path) -> None:
        self.stderr_path = project / "stderr.txt"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eddies.runtime.cli", "run", "followjob.py:job",
                 "--state", "rocksdb:state", "--follow", "--quiet"],
                cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(DEADLINE_S)
        return code, self.stderr_path.read_text()


def checkpoint(project: Path) -> dict[str, Any]:
    """The source's checkpointed position and watermark, the job's counters and identity."""
    with RocksDbStateBackend(project / "state", read_only=True) as db:
        meta = dict(db.iterate(META_CF))
    return {
        "position": unpack(meta[encode_key(("source", "events", 0))]),
        "watermark": unpack(meta[encode_key(("source-wm", "events", 0))]),
        "events_in": unpack(meta[encode_key(("job", "follow"))])["stats"][0],
        "identity": decode_identity(meta[IDENTITY_KEY], "dir"),
    }


def test_follow_sigterm_resume_and_a_final_run_equal_one_run_over_the_whole_file(
        tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    (tmp_path / "followjob.py").write_text(JOB)
    events.write_text(lines(0, 1_000))
    out, windows = tmp_path / "out.jsonl", tmp_path / "windows.jsonl"

    run = Follow(tmp_path)
    wait_for_lines(out, 1_000, run.proc)
    append(events, lines(1_000, 2_000) + line(2_000)[:20])  # the last line half written
    wait_for_lines(out, 2_000, run.proc)
    # No end-of-input jump: event time is at the last timestamp read (19,990 ms), so the
    # window [19,000, 20,000) is still open while every earlier one has fired. The sinks'
    # files are written one after the other, so the windows file is waited for too.
    expected = [w for w in reference_windows(2_000) if w["end"] <= 19_000]
    wait_for_lines(windows, len(expected), run.proc)
    assert read_jsonl(windows) == expected
    code, stderr = run.stop()
    assert code == 128 + signal.SIGTERM, stderr
    assert "follow: stopped by SIGTERM at a final checkpoint" in stderr
    assert "2,000 events in" in stderr
    # The final checkpoint: up to the end of the last whole line, event time not ended.
    cp = checkpoint(tmp_path)
    assert cp["position"] == [len(lines(0, 2_000)), 2_000]
    assert cp["watermark"] == 19_990 - 1
    assert cp["events_in"] == 2_000
    assert cp["identity"]["job"] == "follow"
    assert [s["name"] for s in cp["identity"]["sources"]] == ["events"]

    # Resume following: the half line is completed, more lines come.
    run = Follow(tmp_path)
    append(events, line(2_000)[20:] + lines(2_001, 3_000))
    wait_for_lines(out, 3_000, run.proc)
    code, stderr = run.stop()
    assert code == 128 + signal.SIGTERM, stderr
    assert "1,000 events in" in stderr and "[resumed] after 2,000 events" in stderr
    assert checkpoint(tmp_path)["events_in"] == 3_000

    # A run without --follow goes on to the end of the file and ends event time there.
    append(events, lines(3_000, 3_500))
    done = subprocess.run([sys.executable, "-m", "eddies.runtime.cli", "run",
                           "followjob.py:job", "--state", "rocksdb:state", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out) == reference_totals(3_500)  # each event once, in order
    assert sorted(read_jsonl(windows), key=_window_order) == reference_windows(3_500)
    assert checkpoint(tmp_path)["watermark"] == 2**63 - 1


def two_source_job(tmp: Path, out: ed.operators.sinks.Sink,
                   idle_timeout: int | None) -> ed.Job:
    job = ed.Job("two")
    marks = ed.BoundedOutOfOrderness(0, idle_timeout=idle_timeout)
    a = job.source(ed.sources.jsonl(tmp / "a.jsonl"), timestamp="ts", watermarks=marks)
    b = job.source(ed.sources.jsonl(tmp / "b.jsonl"), timestamp="ts", watermarks=marks)
    (a.union(b).key_by("user").window(ed.Tumbling(1_000))
        .aggregate(ed.Count(), name="per-second").sink(out))
    return job


def test_idle_files_leave_event_time_to_the_others_while_following(tmp_path: Path) -> None:
    """b.jsonl gets nothing: after idle_timeout it no longer holds event time back, so a.jsonl's
    windows fire while both are followed (and without the end-of-input jump, the last one
    stays open)."""
    (tmp_path / "a.jsonl").touch()
    (tmp_path / "b.jsonl").touch()
    out = ed.sinks.jsonl(tmp_path / "windows.jsonl")
    runner = LocalRunner(two_source_job(tmp_path, out, idle_timeout=200), "memory",
                         follow=True)
    results: list[ed.RunResult] = []
    thread = threading.Thread(target=lambda: results.append(runner.run()))
    thread.start()
    try:
        # b.jsonl idles 200 ms after the start; a.jsonl's lines come after that (and a.jsonl
        # goes idle 200 ms after them: with every input idle, event time waits, as in Flink).
        time.sleep(0.5)
        append(tmp_path / "a.jsonl", lines(0, 300))  # ts 0 .. 2,990
        wait_for_lines(tmp_path / "windows.jsonl", 2 * USERS)
    finally:
        runner.request_stop()
        thread.join(DEADLINE_S)
    assert not thread.is_alive()
    [result] = results
    assert result.stats.stopped and result.stats.events_in == 300
    assert read_jsonl(tmp_path / "windows.jsonl") == [
        w for w in reference_windows(300) if w["end"] <= 2_000]


def test_without_idleness_a_quiet_followed_file_holds_event_time(tmp_path: Path) -> None:
    """The same job with no idle_timeout: b.jsonl holds the watermark at its minimum, so no
    window fires, however long a.jsonl is read."""
    (tmp_path / "a.jsonl").write_text(lines(0, 300))
    (tmp_path / "b.jsonl").touch()
    out = ed.sinks.collect()
    runner = LocalRunner(two_source_job(tmp_path, out, idle_timeout=None), "memory",
                         follow=True)
    rounds = []

    def progress(stats: RunStats) -> None:
        rounds.append(1)
        if len(rounds) >= 5:  # a few polls after a.jsonl was read
            runner.request_stop()

    runner.on_progress = progress
    result = runner.run()
    assert result.stats.stopped and result.stats.events_in == 300
    assert out.items == []


def test_follow_needs_a_file_source() -> None:
    job = ed.Job("j")
    job.source(ed.sources.iterable([{"k": 1}])).sink(ed.sinks.collect())
    with pytest.raises(ConfigError, match=r"follow: job 'j' has no file source to follow "
                                          r"\(sources: .*\); follow reads growing files"):
        ed.run_local(job, follow=True)


def test_a_source_given_follow_true_follows_without_the_run_option(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(lines(0, 10))
    out = ed.sinks.collect()
    job = ed.Job("j")
    (job.source(ed.sources.jsonl(path, follow=True), timestamp="ts")
        .key_by("user").window(ed.Tumbling(1_000)).aggregate(ed.Count()).sink(out))
    runner = LocalRunner(job, "memory")
    runner.on_progress = lambda stats: runner.request_stop()
    result = runner.run()
    assert result.stats.stopped and result.stats.events_in == 10
    assert out.items == []  # ts 0..90: the window is open, event time did not jump
