"""``eddies run`` stopped by SIGTERM or Ctrl-C: a final checkpoint, a one-line message, and a
resume equal to an uninterrupted run; a second signal exits at once."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

N = 300_000
USERS = 1_000

JOB = '''
import time
from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class Totals(ed.KeyedProcessFunction):
    total = ed.ValueState("total", default=0)

    def on_event(self, event, ctx):
        if event["i"] % 2_000 == 0:
            time.sleep(0.01)  # slow enough that a signal lands mid-run
        stall = HERE / "stall"
        if event["i"] == 150_000 and stall.exists():
            (HERE / "stalled").touch()
            while stall.exists():  # a round that never ends until the test says so
                time.sleep(0.05)
        total = self.total.get() + event["amount"]
        self.total.set(total)
        yield {"user": ctx.key, "i": event["i"], "total": total}


job = ed.Job("sig")
(job.source(ed.sources.jsonl(HERE / "events.jsonl"), timestamp="ts")
    .key_by("user").process(Totals()).sink(ed.sinks.jsonl(HERE / "out.jsonl")))
'''

EVENTS_IN = re.compile(r"(?:progress|sig): (?:stopped by \w+ at a final checkpoint \([^)]*\): )?"
                       r"(?P<n>[\d,]+) events in")


@pytest.fixture(scope="module")
def expected() -> list[dict]:
    totals: dict[str, int] = {}
    out = []
    for i in range(N):
        user = f"u{i % USERS}"
        totals[user] = totals.get(user, 0) + i % 7
        out.append({"user": user, "i": i, "total": totals[user]})
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    with open(tmp_path / "events.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"user": f"u{i % USERS}", "ts": 1_000 + i, "i": i,
                                "amount": i % 7}) + "\n")
    (tmp_path / "sigjob.py").write_text(JOB)
    return tmp_path


class Run:
    """``eddies run`` in a subprocess, its stderr collected line by line as it comes."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eddies.runtime.cli", "run", "sigjob.py:job", *args],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


def events_in(line: str) -> int:
    match = EVENTS_IN.match(line)
    assert match, line
    return int(match["n"].replace(",", ""))


def read_out(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_a_final_checkpoint_and_the_resume_is_exact(
    project: Path, expected: list[dict], sig: signal.Signals
) -> None:
    state = f"rocksdb:{project / 'state'}"
    # No checkpoint falls due during the run: only the final one can hold its progress.
    run = Run(project, "--state", state, "--checkpoint-interval", "1000000",
              "--progress-every", "0")
    progress = run.wait_for(r"^progress: [1-9][\d,]* events in")
    assert events_in(progress) < N
    run.proc.send_signal(sig)
    code = run.wait(timeout=10)
    assert code == 128 + sig, "\n".join(run.lines)
    name = sig.name
    assert (f"{name}: stopping after the current round, with a final checkpoint ({name} "
            "again to exit at once)") in run.lines
    last = run.lines[-1]
    assert last.startswith(f"sig: stopped by {name} at a final checkpoint (run the same "
                           "command again to resume): ")
    assert "Traceback" not in "\n".join(run.lines) and "Aborted" not in last
    stopped_at = events_in(last)
    assert 0 < stopped_at < N

    resumed = subprocess.run([sys.executable, "-m", "eddies.runtime.cli", "run", "sigjob.py:job",
                              "--state", state], cwd=project, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = resumed.stderr.strip().splitlines()[-1]
    # The dir held the stop's checkpoint: the resume starts exactly there and reads the rest.
    assert summary.endswith(f"[resumed] after {stopped_at:,} events"), summary
    assert events_in(summary) == N - stopped_at
    assert read_out(project) == expected


def test_a_second_signal_exits_at_once(project: Path, expected: list[dict]) -> None:
    state = f"rocksdb:{project / 'state'}"
    (project / "stall").touch()  # the round with event 150,000 does not end by itself
    run = Run(project, "--state", state, "--checkpoint-interval", "20000", "--quiet")
    deadline = time.monotonic() + 60
    while not (project / "stalled").exists():
        assert run.proc.poll() is None and time.monotonic() < deadline, "\n".join(run.lines)
        time.sleep(0.02)
    run.proc.send_signal(signal.SIGTERM)
    run.wait_for(r"^SIGTERM: stopping after the current round")
    run.proc.send_signal(signal.SIGTERM)  # the round never ends: only this can stop the run
    code = run.wait(timeout=10)
    assert code == 128 + signal.SIGTERM
    assert run.lines[-1] == ("error: second signal (SIGTERM): exiting at once, without a final "
                             "checkpoint; the last checkpoint is intact and a new run resumes "
                             "from it")
    assert not any("stopped by" in line for line in run.lines)

    (project / "stall").unlink()
    resumed = subprocess.run([sys.executable, "-m", "eddies.runtime.cli", "run", "sigjob.py:job",
                              "--state", state], cwd=project, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = resumed.stderr.strip().splitlines()[-1]
    # From the last interval's checkpoint before the stall (150,000 is a multiple of 20,000
    # rounded down to a checkpoint at 140,000).
    assert summary.endswith("[resumed] after 140,000 events"), summary
    assert read_out(project) == expected
