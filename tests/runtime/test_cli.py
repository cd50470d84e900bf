"""``eddies run``: job targets, options, dead letters, and the one-line summary (non-TTY)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

N = 1_000
N_BAD = 7

JOB = '''
import eddies as ed
from pathlib import Path

HERE = Path(__file__).parent


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        if event.get("boom"):
            raise ValueError("boom requested")
        self.n.set(self.n.get() + 1)
        yield {"user": ctx.key, "n": self.n.get()}


def build():
    job = ed.Job("cli-counts")
    (job.source(ed.sources.jsonl(HERE / "events.jsonl"), timestamp="ts")
        .key_by("user").process(Count()).sink(ed.sinks.jsonl(HERE / "out.jsonl")))
    return job


job = build()
'''

SUMMARY = re.compile(
    r"^cli-counts: (?P<events_in>[\d,]+) events in, (?P<out>[\d,]+) out, "
    r"(?P<dead>[\d,]+) dead letters, (?P<late>[\d,]+) late.*, (?P<checkpoints>[\d,]+) "
    r"checkpoints, watermark (?P<wm>\S+), [\d.]+s \((?P<rate>[\d,]+) events/s\)"
    r"(?P<resumed> \[resumed\] after (?P<before>[\d,]+) events)?$")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    lines = [json.dumps({"user": f"u{i % 13}", "ts": 1_000 + i}) for i in range(N)]
    for j in range(N_BAD):
        lines.insert(j * 100 + 50, '{"user": "u1", "ts": oops')
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "countjob.py").write_text(JOB)
    return tmp_path


def eddies(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eddies.runtime.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    last = proc.stderr.strip().splitlines()[-1]
    match = SUMMARY.match(last)
    assert match, f"not a summary line: {last!r}\n{proc.stderr}"
    return match.groupdict()


def expected_output() -> list[dict]:
    counts: dict[str, int] = {}
    out = []
    for i in range(N):
        user = f"u{i % 13}"
        counts[user] = counts.get(user, 0) + 1
        out.append({"user": user, "n": counts[user]})
    return out


def read_out(project: Path) -> list[dict]:
    return [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("target", ["countjob.py:job", "{dir}/countjob.py:job", "countjob:job",
                                    "countjob.py:build", "countjob:build"])
def test_run_a_file_or_module_target(project: Path, target: str) -> None:
    proc = eddies(project, "run", target.format(dir=project))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # results go to the job's sinks, the summary to stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # no progress lines in a short run
    s = summary(proc)
    assert s["events_in"] == f"{N + N_BAD:,}" and s["out"] == f"{N:,}"
    assert s["dead"] == str(N_BAD) and s["wm"] == "end" and s["resumed"] is None
    assert read_out(project) == expected_output()


def test_default_state_is_memory_and_a_rerun_starts_over(project: Path) -> None:
    first = eddies(project, "run", "countjob.py:job")
    second = eddies(project, "run", "countjob.py:job")
    assert first.returncode == second.returncode == 0
    assert summary(second)["resumed"] is None
    assert read_out(project) == expected_output()


def test_state_checkpoint_interval_and_resume(project: Path) -> None:
    state = f"rocksdb:{project / 'state'}"
    proc = eddies(project, "run", "countjob.py:job", "--state", state,
                  "--checkpoint-interval", "100")
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    # A checkpoint about every 100 events (as read), plus the last one at the end.
    assert int(s["checkpoints"]) >= (N + N_BAD) // 100
    assert (project / "state" / "CURRENT").exists()
    again = eddies(project, "run", "countjob.py:job", "--state", state)
    assert again.returncode == 0, again.stderr
    # The input ended and has not grown: nothing to do, said in one line.
    assert again.stderr.strip().splitlines() == [
        f"cli-counts: state dir {project / 'state'} already read the input of job "
        f"'cli-counts' to its end ({s['events_in']} events) and the input has not grown "
        "since: nothing to do. To process it again, run on a new state dir "
        "(--state rocksdb:NEW_DIR)"]
    assert read_out(project) == expected_output()  # kept, not doubled or replaced
    default = eddies(project, "run", "countjob.py:job", "--state", f"rocksdb:{project / 's2'}")
    assert int(summary(default)["checkpoints"]) == 1  # default interval: 100,000 events


def test_dead_letters_file(project: Path) -> None:
    dead = project / "dead" / "letters.jsonl"
    proc = eddies(project, "run", "countjob.py:job", "--dead-letters", str(dead))
    assert proc.returncode == 0, proc.stderr
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(letters) == N_BAD
    assert all(d["raw"] == '{"user": "u1", "ts": oops' for d in letters)
    assert all(d["reason"].startswith("invalid JSON") for d in letters)
    assert [d["position"]["line"] for d in letters] == [j * 100 + 51 for j in range(N_BAD)]


def test_progress_lines_and_quiet(project: Path) -> None:
    loud = eddies(project, "run", "countjob.py:job", "--progress-every", "0")
    assert loud.returncode == 0, loud.stderr
    progress = [line for line in loud.stderr.splitlines() if line.startswith("progress: ")]
    assert progress and "events in" in progress[0]
    quiet = eddies(project, "run", "countjob.py:job", "--progress-every", "0", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip().splitlines() == [quiet.stderr.strip()]  # the summary only
    summary(quiet)
    assert "\x1b[" not in loud.stderr + quiet.stderr  # no terminal escapes when not a TTY


def test_user_error_exits_non_zero_with_operator_key_and_record(project: Path) -> None:
    events = project / "events.jsonl"
    with events.open("a") as f:
        f.write(json.dumps({"user": "u5", "ts": 99_999, "boom": True}) + "\n")
    proc = eddies(project, "run", "countjob.py:job")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error, *where = proc.stderr.strip().splitlines()
    assert error.startswith("error: operator 'Count' on key 'u5' failed for record")
    assert "'boom': True" in error and "ValueError: boom requested" in error
    # Then where, in the user's own code only: the file and line of on_event.
    line = JOB.splitlines().index('            raise ValueError("boom requested")') + 1
    assert where == [
        "  in user code (most recent call last):",
        f'    File "{project / "countjob.py"}", line {line}, in on_event',
        '      raise ValueError("boom requested")',
        "  (--debug prints the whole traceback)",
    ]


def test_debug_prints_the_whole_traceback(project: Path) -> None:
    with (project / "events.jsonl").open("a") as f:
        f.write(json.dumps({"user": "u5", "ts": 99_999, "boom": True}) + "\n")
    proc = eddies(project, "run", "countjob.py:job", "--debug")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: operator 'Count' on key 'u5' failed for record")
    trace = "\n".join(lines[1:])
    assert "Traceback (most recent call last):" in trace
    assert "eddies/runtime/executor.py" in trace  # the framework's frames too
    assert 'countjob.py", line' in trace and "ValueError: boom requested" in trace
    assert "eddies.errors.UserFunctionError: operator 'Count'" in trace
    assert "--debug prints" not in trace


RUNS_AT_IMPORT = JOB.replace("job = build()", "job = build()\nresult = ed.run_local(job)")
GUARDED = JOB.replace("job = build()", 'job = build()\nif __name__ == "__main__":\n'
                                       "    ed.run_local(job)")


def test_a_module_that_runs_its_job_at_import_is_warned_about(project: Path) -> None:
    (project / "runsjob.py").write_text(RUNS_AT_IMPORT)
    proc = eddies(project, "run", "runsjob.py:job")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == (
        "warning: importing runsjob.py already ran a job (1 run, e.g. a module-level "
        "run_local(...)); put that call under 'if __name__ == \"__main__\":' so the job "
        "runs once")
    assert len(lines) == 2 and summary(proc)["events_in"] == f"{N + N_BAD:,}"
    (project / "guarded.py").write_text(GUARDED)
    quiet = eddies(project, "run", "guarded.py:job")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("target, message", [
    ("countjob.py", "must look like path/to/file.py:job"),
    ("missing.py:job", "does not exist"),
    ("no_such_module:job", "cannot import module 'no_such_module'"),
    ("countjob.py:nope", "has no attribute 'nope'"),
    ("countjob.py:HERE", "not an eddies.Job"),
])
def test_bad_targets_are_clear_errors(project: Path, target: str, message: str) -> None:
    proc = eddies(project, "run", target)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_state_spec(project: Path) -> None:
    proc = eddies(project, "run", "countjob.py:job", "--state", "postgres://x")
    assert proc.returncode == 1
    assert "unknown state backend" in proc.stderr


def test_the_progress_bar_counts_this_run_only_after_a_resume() -> None:
    from eddies.runtime.cli import _Progress
    from eddies.runtime.executor import RunStats

    # A resumed run: the counters carry the previous runs' (``before``), as the checkpoint has
    # them; the bar shows this run's, as the final summary does.
    stats = RunStats(events_in=1_500, late_events=40, dead_letters=7, resumed=True,
                     elapsed_s=1.0, bytes_read=10, bytes_total=10,
                     before={"events_in": 1_000, "late_events": 30, "dead_letters": 5})
    progress = _Progress(quiet=False)
    progress.tty = True  # the bar, as on a terminal
    with progress:
        progress(stats)
        info = progress._bar.tasks[0].fields["info"]
    assert info.startswith("500 events  500/s  ")
    assert info.endswith("  late 10  dead 2")
    assert "500 events in, 0 out, 2 dead letters, 10 late" in stats.summary()
