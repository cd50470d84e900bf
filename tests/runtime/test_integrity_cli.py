"""Fault injection on the RocksDB dir of real ``eddies run`` jobs, and read-only inspection.

Each fault (bytes flipped in the table file of a MapState read by range or of a ValueState
read by key, a truncated table file, a missing CURRENT, a missing MANIFEST, a WAL deleted
after a crash) is followed by two resumed runs: both stop with the named error on one
``error:`` line and exit code 1, and every original table file is still there. ``eddies state
ls/get/verify`` leave the dir's file listing (names, sizes, mtimes) as it was, while a job
holds the dir and on a dir made read-only; ``--key null`` is the key ``(None,)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import StateCorruptionError
from eddies.runtime.cli import main
from eddies.runtime.loader import load_job

USERS = 3_000
FIRST = 8  # events per user in the first run; the resumed runs get two more each

JOB = '''
import os
import sys
from pathlib import Path

import eddies as ed

HERE = Path(__file__).parent


class Visits(ed.KeyedProcessFunction):
    visits = ed.MapState("visits")

    def on_event(self, event, ctx):
        if event.get("crash"):
            os._exit(3)  # after some checkpoints, before any close: they live in the WAL
        if event.get("hold"):  # hold the dir, as a long job does, until told to go on
            print("holding", flush=True)
            sys.stdin.readline()
            return
        self.visits.put(event["n"], {"n": event["n"], "pad": "x" * 20})
        yield {"user": ctx.key, "entries": len(list(self.visits.keys()))}


class Totals(ed.KeyedProcessFunction):
    total = ed.ValueState("total", default=0)

    def on_event(self, event, ctx):
        self.total.set(self.total.get() + event["n"])
        yield {"user": ctx.key, "total": self.total.get()}


def build(name, fn):
    job = ed.Job(name)
    (job.source(ed.sources.jsonl(HERE / "events.jsonl"))
        .key_by("user").process(fn).sink(ed.sinks.jsonl(HERE / f"{name}.jsonl")))
    return job


scan = build("scan", Visits())
point = build("point", Totals())
'''


def events(first: int, last: int) -> str:
    return "".join(json.dumps({"user": f"u{u:05d}", "n": n}) + "\n"
                   for n in range(first, last) for u in range(USERS))


def run(project: Path, job: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eddies.runtime.cli", "run", f"job.py:{job}", "--quiet",
         "--state", f"rocksdb:{project / 'state'}", *args],
        cwd=project, capture_output=True, text=True, **kwargs)


def table_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.glob("*.sst")}


def listing(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Projects after a first run: 'scan' and 'point' closed cleanly (their state is in table
    files), 'crashed' killed after checkpoints that live only in its WAL."""
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for name, job in (("scan", "scan"), ("point", "point"), ("crashed", "scan")):
        project = root / name
        project.mkdir()
        (project / "job.py").write_text(JOB)
        text = events(0, FIRST)
        if name == "crashed":
            text += json.dumps({"user": "u00001", "n": 0, "crash": True}) + "\n"
        (project / "events.jsonl").write_text(text)
        done = run(project, job, "--checkpoint-interval", "5000")
        assert done.returncode == (3 if name == "crashed" else 0), done.stderr
        out[name] = project
    assert table_files(out["scan"] / "state") and table_files(out["point"] / "state")
    assert not table_files(out["crashed"] / "state")
    return out


def _flip(state: Path) -> None:
    table = max(state.glob("*.sst"), key=lambda p: p.stat().st_size)
    with open(table, "r+b") as f:
        f.seek(table.stat().st_size // 3)
        f.write(b"\xff" * 16)


def _truncate(state: Path) -> None:
    table = max(state.glob("*.sst"), key=lambda p: p.stat().st_size)
    os.truncate(table, table.stat().st_size // 2)


def _no_current(state: Path) -> None:
    (state / "CURRENT").unlink()


def _no_manifest(state: Path) -> None:
    for p in state.glob("MANIFEST-*"):
        p.unlink()


def _no_wal(state: Path) -> None:
    for p in state.glob("*.log"):
        p.unlink()


FAULTS: dict[str, tuple[str, str, Callable[[Path], None], str]] = {
    "flipped-scan": ("scan", "scan", _flip,
                     r"state 'visits': range read failed: the stored state is damaged"),
    "flipped-point": ("point", "point", _flip,
                      r"state 'total': (point|multi-key) read failed: the stored state is "
                      r"damaged"),
    "truncated": ("scan", "scan", _truncate,
                  r"open failed: the stored state is damaged or incomplete \(Corruption: Sst "
                  r"file size mismatch"),
    "no-current": ("scan", "scan", _no_current, r"has no CURRENT file"),
    "no-manifest": ("scan", "scan", _no_manifest, r"MANIFEST-\d+, the MANIFEST that CURRENT "
                                                  r"names .* is missing"),
    "deleted-wal": ("crashed", "scan", _no_wal, r"the write-ahead log .* is missing"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_dir_stops_the_job_twice_with_the_named_error(
    bases: dict[str, Path], tmp_path: Path, fault: str
) -> None:
    base, job, inject, says = FAULTS[fault]
    project = tmp_path / fault
    shutil.copytree(bases[base], project)
    state = project / "state"
    inject(state)
    with open(project / "events.jsonl", "a") as f:
        f.write(events(FIRST, FIRST + 2))  # the resumed run reads every key's state
    tables = table_files(state)
    for _ in range(2):
        done = run(project, job)
        assert done.returncode == 1, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr
        assert re.search(says, errors[0]), errors[0]
        assert str(state) in errors[0] and "Traceback" not in done.stderr
        assert "Restore the dir from a copy, or rebuild the state" in errors[0]
        after = table_files(state)
        assert {n: after.get(n) for n in tables} == tables  # every table file, same size


def test_the_local_runner_raises_state_corruption_error_both_times(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    project = tmp_path / "inproc"
    shutil.copytree(bases["scan"], project)
    _flip(project / "state")
    with open(project / "events.jsonl", "a") as f:
        f.write(events(FIRST, FIRST + 1))
    for _ in range(2):  # the first failed run must leave the dir unlocked for the second
        with pytest.raises(StateCorruptionError, match="range read failed"):
            ed.run_local(load_job(f"{project / 'job.py'}:scan"),
                         state=f"rocksdb:{project / 'state'}")


# -- read-only inspection ------------------------------------------------------------------------
def cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["state", *args])


def _inspect_everything(state: Path) -> None:
    """ls, get and verify on ``state``, each leaving its file listing as it was."""
    before = listing(state)
    assert cli("ls", str(state)).exit_code == 0
    page = cli("ls", str(state), "--state", "visits", "--key", "u00007", "--json")
    assert page.exit_code == 0, page.output
    assert len(json.loads(page.stdout)["entries"]) >= FIRST
    got = cli("get", str(state), "--state", "visits", "--key", "u00007", "--map-key", "1")
    assert got.exit_code == 0 and "'pad'" in got.output
    assert listing(state) == before
    verified = cli("verify", str(state))
    assert verified.exit_code == 0, verified.output
    assert listing(state) == before


def test_state_commands_change_no_file_while_a_job_holds_the_dir(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    project = tmp_path / "held"
    shutil.copytree(bases["scan"], project)
    with open(project / "events.jsonl", "a") as f:
        f.write(events(FIRST, FIRST + 1) + json.dumps({"user": "u00001", "hold": True}) + "\n")
    job = subprocess.Popen(
        [sys.executable, "-m", "eddies.runtime.cli", "run", "job.py:scan", "--quiet",
         "--state", f"rocksdb:{project / 'state'}", "--checkpoint-interval", "1000"],
        cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "holding"
        _inspect_everything(project / "state")
    finally:
        assert job.stdin is not None
        job.stdin.write("\n")
        job.stdin.flush()
        _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err


def test_state_commands_change_no_file_in_a_read_only_dir(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(bases["scan"] / "state", state)
    subprocess.run(["chmod", "-R", "a-w", str(state)], check=True)
    try:
        _inspect_everything(state)  # as root chmod stops nothing: the listings prove it
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(state)], check=True)


def test_state_verify_exit_codes(bases: dict[str, Path], tmp_path: Path) -> None:
    good = cli("verify", str(bases["scan"] / "state"))
    assert good.exit_code == 0
    assert good.output.startswith(f"ok: {bases['scan'] / 'state'}: ")
    assert "checksums verified" in good.output
    assert re.search(rf"visits  {USERS * FIRST:,}", good.output)
    state = tmp_path / "state"
    shutil.copytree(bases["scan"] / "state", state)
    _flip(state)
    bad = cli("verify", str(state))
    assert bad.exit_code == 1
    lines = bad.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "checksum verification failed" in lines[0] and str(state) in lines[0]


# -- --key null ----------------------------------------------------------------------------------
def test_key_null_is_the_key_none(bases: dict[str, Path], tmp_path: Path) -> None:
    # No entry for (None,): an error, not another key's entry.
    absent = cli("get", str(bases["point"] / "state"), "--state", "total", "--key", "null")
    assert absent.exit_code == 1
    assert "no entry for key None" in absent.output
    listed = cli("ls", str(bases["point"] / "state"), "--state", "total", "--key", "null",
                 "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["entries"] == []

    class Totals(ed.KeyedProcessFunction):
        total = ed.ValueState("total", default=0)

        def on_event(self, event: dict[str, Any], ctx: Any) -> None:
            self.total.set(self.total.get() + event["n"])

    job = ed.Job("nulls")
    (job.source(ed.sources.iterable([{"user": None, "n": 1}, {"user": "a", "n": 2}]))
        .key_by("user").process(Totals()).sink(ed.sinks.collect()))
    ed.run_local(job, state=f"rocksdb:{tmp_path / 'nulls'}")
    got = cli("get", str(tmp_path / "nulls"), "--state", "total", "--key", "null", "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["key"] == [None] and json.loads(got.stdout)["value"] == 1
    listed = cli("ls", str(tmp_path / "nulls"), "--state", "total", "--key", "null", "--json")
    assert [(e["key"], e["value"]) for e in json.loads(listed.stdout)["entries"]] == [([None], 1)]


# -- refused I/O ---------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs for a full disk needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed (no CAP_SYS_ADMIN?): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_ends_with_one_line_and_resumes_exactly(
    bases: dict[str, Path], tmp_path: Path, small_tmpfs: Path
) -> None:
    project = tmp_path / "full"
    project.mkdir()
    (project / "job.py").write_text(JOB)
    (project / "events.jsonl").write_text(events(0, FIRST + 2))
    state = small_tmpfs / "state"
    cmd = [sys.executable, "-m", "eddies.runtime.cli", "run", "job.py:scan", "--quiet",
           "--state", f"rocksdb:{state}", "--checkpoint-interval", "3000"]
    full = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert full.returncode == 1, full.stderr
    lines = full.stderr.splitlines()
    assert len([x for x in lines if x.startswith("error:")]) == 1, full.stderr
    assert "Traceback" not in full.stderr
    assert re.search(rf"^error: RocksDB state dir {state}: checkpoint write failed: IO error: "
                     r"No space left on device.* The last checkpoint is intact: free space on "
                     r"the disk that holds", full.stderr), full.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "[resumed" in resumed.stderr
    got = (project / "scan.jsonl").read_text()
    reference = subprocess.run([*cmd[:-4], "--state", "memory"], cwd=project,
                               capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    assert got == (project / "scan.jsonl").read_text()  # the resumed run's output is exact
