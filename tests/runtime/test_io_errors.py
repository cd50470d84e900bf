"""I/O refused by the OS (disk full, out of descriptors, permission) ends ``eddies run`` with one
``error:`` line and exit code 1, never a traceback (nor a second one from cleanup), and a run
after the cause is gone resumes exactly."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import eddies as ed
from eddies.state.memory import InMemoryStateBackend

N = 120_000
KEYS = 100_000

JOB = '''
from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class Last(ed.KeyedProcessFunction):
    """A large value per key: state writes fill RocksDB memtables, which flush to new files."""

    last = ed.ValueState("last")

    def on_event(self, event, ctx):
        previous = self.last.get()
        self.last.set(event["pad"] + str(event["i"]))
        yield {"user": ctx.key, "i": event["i"], "had": previous is not None}


def build(out):
    job = ed.Job("io")
    (job.source(ed.sources.jsonl(HERE / "events.jsonl"), timestamp="ts")
        .key_by("user").process(Last()).sink(ed.sinks.jsonl(out)))
    return job


job = build(HERE / "out" / "out.jsonl")
'''

FLAKY = '''
import errno
import os

import eddies as ed
from eddies.operators.sinks import Sink

from iojob import HERE, Last


class Flaky(Sink):
    """A sink the OS refuses: its third write, and then its close, fail."""

    name = "flaky"

    def open(self, position):
        self.writes = 0

    def write(self, values):
        self.writes += 1
        if self.writes == 3:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/flaky.jsonl")

    def close(self):
        raise OSError(errno.EIO, "flush failed again while closing")


job = ed.Job("flaky")
(job.source(ed.sources.jsonl(HERE / "events.jsonl"), timestamp="ts")
    .key_by("user").process(Last()).sink(Flaky()))
'''


@pytest.fixture(scope="module")
def expected() -> list[dict]:
    seen: set[str] = set()
    out = []
    for i in range(N):
        user = f"u{i * 7919 % KEYS}"
        out.append({"user": user, "i": i, "had": user in seen})
        seen.add(user)
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    with open(tmp_path / "events.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"user": f"u{i * 7919 % KEYS}", "ts": 1_000 + i, "i": i,
                                "pad": "x" * 150}) + "\n")
    (tmp_path / "iojob.py").write_text(JOB)
    return tmp_path


def eddies_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eddies.runtime.cli", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_error_line(stderr: str, cause: str) -> str:
    """One line: ``error:``, the OS's words for the cause, that the last checkpoint is intact
    and that running again resumes (whether the backend or the CLI worded it)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # no traceback, none from cleanup either
    line = lines[0]
    assert line.startswith("error: ") and cause in line, line
    assert re.search(r"the last checkpoint is intact", line, re.I), line
    assert re.search(r"\brun (the same command|the job) again", line), line
    return line


def resume_and_check(project: Path, state: str, out: Path, expected: list[dict]) -> None:
    again = eddies_run(project, "iojob.py:job", "--state", state, "--checkpoint-interval",
                       "10000")
    assert again.returncode == 0, again.stderr
    assert re.search(r"\[resumed\] after [\d,]+ events$", again.stderr.strip()), again.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("disk full is simulated with a small tmpfs, which needs root to mount")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path) -> None:
    """The cause goes away: the filesystem gets room."""
    subprocess.run(["mount", "-o", "remount,size=256m", str(path)], check=True)


def test_disk_full_on_the_output(project: Path, expected: list[dict]) -> None:
    state = f"rocksdb:{project / 'state'}"
    with tmpfs(project / "out", "2m") as full:
        proc = eddies_run(project, "iojob.py:job", "--state", state,
                          "--checkpoint-interval", "10000")
        assert proc.returncode == 1
        line = assert_one_error_line(proc.stderr, "No space left on device")
        assert line.startswith("error: disk full writing sink 'out.jsonl'"), line
        assert str(full / "out.jsonl") in line and "free space" in line
        grow(full)
        resume_and_check(project, state, full / "out.jsonl", expected)


def test_disk_full_on_the_state_dir(project: Path, expected: list[dict]) -> None:
    with tmpfs(project / "full", "4m") as full:
        state = f"rocksdb:{full / 'state'}"
        proc = eddies_run(project, "iojob.py:job", "--state", state,
                          "--checkpoint-interval", "10000")
        assert proc.returncode == 1
        line = assert_one_error_line(proc.stderr, "No space left on device")
        assert str(full / "state") in line and "free space" in line
        grow(full)
        resume_and_check(project, state, project / "out" / "out.jsonl", expected)


def test_descriptor_exhaustion(project: Path, expected: list[dict]) -> None:
    state = f"rocksdb:{project / 'state'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "eddies.runtime.cli", "run", "iojob.py:job", "--state", state,
         "--checkpoint-interval", "10000", "--progress-every", "0"],
        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if re.match(r"progress: .*, [1-9][\d,]* checkpoints,", line):
                started.set()  # a checkpoint to resume from

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(60), "\n".join(lines)
    # Out of descriptors from here on: every file the job (RocksDB) opens next is refused.
    hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (3, hard))
    assert proc.wait(120) == 1
    reader.join(10)
    errors = [line for line in lines if not line.startswith("progress: ")]
    line = assert_one_error_line("\n".join(errors), "Too many open files")
    assert str(project / "state") in line and "ulimit -n" in line
    resume_and_check(project, state, project / "out" / "out.jsonl", expected)


def test_a_refused_write_and_a_failing_close_give_one_line(project: Path) -> None:
    (project / "flakyjob.py").write_text(FLAKY)
    proc = eddies_run(project, "flakyjob.py:job", "--state", f"rocksdb:{project / 'state'}")
    assert proc.returncode == 1
    line = assert_one_error_line(proc.stderr, "Permission denied")
    assert line.startswith("error: permission denied writing sink 'flaky'"), line
    assert "/data/flaky.jsonl" in line and "give this user access" in line
    assert "closing" not in proc.stderr  # the close's own failure went to the debug log


class _CloseFails(InMemoryStateBackend):
    """A backend whose close fails too, as a full disk's flush does."""

    def close(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_close_does_not_hide_the_error_that_ended_the_run(tmp_path: Path) -> None:
    job = ed.Job("missing")
    (job.source(ed.sources.iterable([{"k": "a"}])).key_by("k")
        .map(lambda e: 1 // 0).sink(ed.sinks.collect()))
    with pytest.raises(ed.errors.UserFunctionError, match="ZeroDivisionError"):
        ed.run_local(job, _CloseFails())
    # At start too: the source cannot be opened, and cleaning up fails again.
    job = ed.Job("missing")
    job.source(ed.sources.jsonl(tmp_path / "nope.jsonl")).sink(ed.sinks.collect())
    with pytest.raises(ed.errors.ConfigError, match="nope.jsonl"):
        ed.run_local(job, _CloseFails())
    # With nothing to hide, the close's own failure is the error, naming what failed.
    job = ed.Job("fine")
    job.source(ed.sources.iterable([1])).sink(ed.sinks.collect())
    with pytest.raises(ed.errors.StateIOError, match="disk full closing the state backend"):
        ed.run_local(job, _CloseFails())
