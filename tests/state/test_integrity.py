"""RocksDB integrity: damaged or incomplete state is never read as empty state.

Faults are injected into real RocksDB dirs: bytes flipped in a table file (range, reverse,
key, point and multi-key reads), a truncated table file, a missing CURRENT or MANIFEST, a WAL
deleted after a crash, a dir of another key layout. Each read raises StateCorruptionError (or
StateIOError for refused I/O) naming the dir, the state and the operation, and a refused open
leaves every file of the dir as it was. Read-only views create and change no file (checked
on a plain dir, a chmod'ed dir, a read-only bind mount and a dir another process holds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from eddies.errors import BackendError, StateCorruptionError, StateIOError
from eddies.state import Batch, KeyedStateStore, MapState, RocksDbStateBackend
from eddies.state.keys import KEY_LAYOUT_VERSION
from eddies.state.rocksdb import MARKER, read_marker

USERS = 3_000
PER_USER = 10


def listing(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path``: name -> (size, mtime in ns)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), path)] = (st.st_size, st.st_mtime_ns)
    return out


def table_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.glob("*.sst")}


def biggest_table(path: Path) -> Path:
    return max(path.glob("*.sst"), key=lambda p: p.stat().st_size)


def flip(path: Path, at: float = 1 / 3) -> None:
    """Overwrite 16 bytes inside a data block of the biggest table file."""
    table = biggest_table(path)
    with open(table, "r+b") as f:
        f.seek(int(table.stat().st_size * at))
        f.write(b"\xff" * 16)


def fill(path: Path) -> None:
    """A MapState 'visits' of USERS keys x PER_USER entries, checkpointed and closed, so it
    lives in table files."""
    with RocksDbStateBackend(path) as db:
        store = KeyedStateStore(db)
        visits = store.bind(MapState("visits"))
        for u in range(USERS):
            store.set_key(("user", u))
            for n in range(PER_USER):
                visits.put(n, {"n": n, "pad": "x" * 20})
        store.flush()


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "good"
    fill(path)
    assert table_files(path)
    return path


@pytest.fixture
def damaged(good: Path, tmp_path: Path) -> Path:
    path = tmp_path / "damaged"
    shutil.copytree(good, path)
    flip(path)
    return path


def _assert_names(exc: BaseException, path: Path, op: str) -> None:
    text = str(exc)
    assert str(path) in text and "'visits'" in text and op in text
    assert "not read as empty" in text and "eddies state verify" in text
    assert "\n" not in text


# -- every read path -----------------------------------------------------------------------------
def test_range_read_of_a_damaged_table_raises_instead_of_ending_early(damaged: Path) -> None:
    with RocksDbStateBackend(damaged) as db:
        seen = 0
        with pytest.raises(StateCorruptionError) as info:
            for _ in db.iterate("visits"):
                seen += 1
        assert 0 < seen < USERS * PER_USER  # it stopped at the damage, loudly
        _assert_names(info.value, damaged, "range read")
        with pytest.raises(StateCorruptionError):
            db.count("visits")
        with pytest.raises(StateCorruptionError):
            list(db.iterate("visits", reverse=True))
        with pytest.raises(StateCorruptionError, match="key range read"):
            db.keys("visits", None, None, 10**9)


def test_every_map_load_through_the_store_raises_or_is_exact(damaged: Path) -> None:
    """MapState reads (one range scan per key) never come back short: a key either loads all
    its entries or raises."""
    with RocksDbStateBackend(damaged) as db:
        store = KeyedStateStore(db)
        visits = store.bind(MapState("visits"))
        failed = 0
        for u in range(USERS):
            store.set_key(("user", u))
            try:
                assert len(list(visits.keys())) == PER_USER
            except StateCorruptionError:
                failed += 1
        assert failed > 0


def test_point_and_multi_key_reads_raise_named_errors(damaged: Path, good: Path) -> None:
    with RocksDbStateBackend(good, read_only=True) as view:
        keys = [k for k, _ in view.iterate("visits")]
    with RocksDbStateBackend(damaged) as db:
        errors = []
        for key in keys:
            try:
                db.get("visits", key)
            except StateCorruptionError as exc:
                errors.append(exc)
        assert errors
        _assert_names(errors[0], damaged, "point read")
        with pytest.raises(StateCorruptionError, match="multi-key read"):
            db.multi_get("visits", keys)


def test_verify_finds_the_damage_and_passes_a_good_dir(damaged: Path, good: Path) -> None:
    with RocksDbStateBackend(good, read_only=True) as view:
        assert view.verify()["visits"] == USERS * PER_USER
    with (RocksDbStateBackend(damaged, read_only=True) as view,
          pytest.raises(StateCorruptionError, match="checksum verification")):
        view.verify()


def test_after_a_failure_nothing_more_is_written(damaged: Path) -> None:
    tables = table_files(damaged)
    db = RocksDbStateBackend(damaged)
    with pytest.raises(StateCorruptionError):
        db.count("visits")
    batch = Batch()
    batch.put("visits", b"\x00\x00new", b"v" * 8)
    with pytest.raises(StateCorruptionError, match="had failed before this write"):
        db.write(batch)
    db.close()  # no flush, no compaction: the table files are the ones the damage is in
    assert table_files(damaged) == tables
    assert read_marker(damaged)["closed_cleanly"] is False
    # and the next run finds the same damage
    with pytest.raises(StateCorruptionError), RocksDbStateBackend(damaged) as again:
        again.count("visits")
    assert table_files(damaged) == tables


def test_a_truncated_table_file_is_refused_at_open(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated"
    shutil.copytree(good, path)
    table = biggest_table(path)
    os.truncate(table, table.stat().st_size // 2)
    tables = table_files(path)
    for _ in range(2):
        with pytest.raises(StateCorruptionError, match="open failed.*size mismatch"):
            RocksDbStateBackend(path)
        assert table_files(path) == tables
    with pytest.raises(StateCorruptionError):
        RocksDbStateBackend(path, read_only=True)


class _Failing:
    """A column family whose reads fail with ``text``, as rocksdict reports RocksDB errors."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get(self, key: Any) -> Any:
        raise Exception(self.text)


@pytest.mark.parametrize(("text", "kind", "hint"), [
    ("IO error: No space left on device: While appending to file: 000012.log",
     StateIOError, "free space on the disk"),
    ("IO error: While open a file for random read: 000009.sst: Too many open files",
     StateIOError, "ulimit -n"),
    ("IO error: While opening a file for sequentially reading: CURRENT: Permission denied",
     StateIOError, "write access"),
    ("IO error: Input/output error", StateIOError, "fix the cause"),
    ("Corruption: block checksum mismatch: stored = 1, computed = 2", StateCorruptionError,
     "not read as empty"),
    ("Incomplete: something", StateCorruptionError, "not read as empty"),
])
def test_rocksdb_errors_map_to_named_errors(good: Path, tmp_path: Path, text: str,
                                            kind: type[BackendError], hint: str) -> None:
    path = tmp_path / "copy"
    shutil.copytree(good, path)
    with (RocksDbStateBackend(path) as db,
          mock.patch.dict(db._cfs, {"visits": _Failing(text)})):  # noqa: SLF001
        with pytest.raises(kind) as info:
            db.get("visits", b"k")
        with pytest.raises(kind):
            db.multi_get("visits", [b"k"])
    message = str(info.value)
    assert hint in message and str(path) in message and "'visits'" in message
    if kind is StateIOError:
        assert "The last checkpoint is intact" in message and "resumes" in message


# -- no silent fresh start -----------------------------------------------------------------------
def _no_current(path: Path) -> None:
    (path / "CURRENT").unlink()


def _no_manifest(path: Path) -> None:
    for p in path.glob("MANIFEST-*"):
        p.unlink()


def _bad_current(path: Path) -> None:
    (path / "CURRENT").write_bytes(b"\x00garbage")


def _no_marker(path: Path) -> None:  # a dir written by an eddies before the marker
    (path / MARKER).unlink()


def _old_layout(path: Path) -> None:
    marker = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({**marker, "key_layout": 1}))


def _bad_marker(path: Path) -> None:
    (path / MARKER).write_text("{not json")


def _rocksdb_files_only(path: Path) -> None:
    _no_current(path)
    _no_marker(path)


@pytest.mark.parametrize(("fault", "says"), [
    (_no_current, "no CURRENT file"),
    (_no_manifest, "the MANIFEST that CURRENT names"),
    (_bad_current, "CURRENT is damaged"),
    (_no_marker, "older eddies \\(key layout 1\\)"),
    (_old_layout, f"key layout 1 .*layout {KEY_LAYOUT_VERSION}: the state must be rebuilt"),
    (_bad_marker, "not a valid eddies marker"),
    (_rocksdb_files_only, "neither CURRENT nor the eddies marker"),
])
def test_an_incomplete_dir_is_refused_and_left_as_it_is(good: Path, tmp_path: Path,
                                                        fault: Any, says: str) -> None:
    path = tmp_path / "dir"
    shutil.copytree(good, path)
    fault(path)
    before = listing(path)
    for read_only in (False, False, True):  # twice in a row, then a read-only view
        with pytest.raises(StateCorruptionError, match=says) as info:
            RocksDbStateBackend(path, read_only=read_only)
        assert listing(path) == before  # nothing created, changed or deleted
    assert str(path) in str(info.value)


def test_a_dir_of_other_files_is_not_a_state_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BackendError, match="not empty .*notes.txt"):
        RocksDbStateBackend(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_new_and_empty_dirs_are_created_with_the_marker(tmp_path: Path) -> None:
    for path in (tmp_path / "new" / "nested", tmp_path / "empty"):
        if path.name == "empty":
            path.mkdir()
        RocksDbStateBackend(path).close()
        assert (path / "CURRENT").is_file()
        assert (path / MARKER).read_bytes() == (
            b'{"closed_cleanly": true, "eddies_state": 1, "key_layout": %d, "opened": true}\n'
            % KEY_LAYOUT_VERSION)
    # A creation stopped after the marker and before RocksDB wrote anything is still new.
    only_marker = tmp_path / "marker-only"
    only_marker.mkdir()
    (only_marker / MARKER).write_bytes(
        b'{"closed_cleanly": false, "eddies_state": 1, "key_layout": %d}\n' % KEY_LAYOUT_VERSION)
    RocksDbStateBackend(only_marker).close()
    assert (only_marker / "CURRENT").is_file()


def test_a_marker_left_alone_by_a_dir_that_held_state_is_refused(tmp_path: Path) -> None:
    """Every RocksDB file gone, the marker left: RocksDB had opened there, so this is lost
    state, not a new dir; the open is refused and the marker is left as it was."""
    with RocksDbStateBackend(tmp_path) as db:
        batch = Batch()
        batch.put("s", b"k", b"v")
        db.write(batch)
    for name in os.listdir(tmp_path):
        if name != MARKER:
            os.remove(tmp_path / name)
    before = listing(tmp_path)
    for _ in range(2):
        with pytest.raises(StateCorruptionError, match="no CURRENT file"):
            RocksDbStateBackend(tmp_path)
        assert listing(tmp_path) == before


_CRASH = """
import os, sys
from eddies.state import Batch, RocksDbStateBackend
db = RocksDbStateBackend(sys.argv[1])
for i in range(50):
    b = Batch(); b.put("s", b"k%03d" % i, b"v" * 100); db.write(b)
os._exit(0)  # a crash: no close, so the checkpoints live only in the WAL
"""


def test_a_deleted_wal_after_a_crash_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crashed"
    subprocess.run([sys.executable, "-c", _CRASH, str(path)], check=True)
    assert read_marker(path)["closed_cleanly"] is False
    assert not list(path.glob("*.sst"))
    kept = tmp_path / "kept"
    shutil.copytree(path, kept)
    for wal in path.glob("*.log"):
        wal.unlink()
    before = listing(path)
    for read_only in (False, False, True):
        with pytest.raises(StateCorruptionError, match="write-ahead log .* is missing"):
            RocksDbStateBackend(path, read_only=read_only)
        assert listing(path) == before
    with RocksDbStateBackend(kept) as db:  # with its WAL the crashed dir resumes exactly
        assert db.count("s") == 50
    assert read_marker(kept)["closed_cleanly"] is True


# -- read-only views write nothing ---------------------------------------------------------------
def _read_everything(path: Path) -> int:
    with RocksDbStateBackend(path, read_only=True) as view:
        total = view.count("visits")
        assert view.get("visits", next(iter(view.iterate("visits")))[0]) is not None
    return total


def test_a_read_only_view_creates_and_changes_no_file(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain"
    shutil.copytree(good, path)
    before = listing(path)
    assert _read_everything(path) == USERS * PER_USER
    assert listing(path) == before


def test_a_read_only_view_of_a_chmodded_dir(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "chmod"
    shutil.copytree(good, path)
    subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
    try:
        before = listing(path)
        assert _read_everything(path) == USERS * PER_USER
        assert listing(path) == before  # as root chmod stops nothing: the listing proves it
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)


@pytest.fixture
def read_only_mount(good: Path, tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    source, target = tmp_path / "source", tmp_path / "mounted"
    shutil.copytree(good, source)
    target.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount --bind failed (no CAP_SYS_ADMIN?): {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_a_read_only_view_on_a_read_only_mount(read_only_mount: Path) -> None:
    with pytest.raises(OSError):
        (read_only_mount / "probe").write_text("x")  # the mount really is read-only
    before = listing(read_only_mount)
    assert _read_everything(read_only_mount) == USERS * PER_USER
    assert listing(read_only_mount) == before


_HOLD = """
import sys
from eddies.state import Batch, RocksDbStateBackend
db = RocksDbStateBackend(sys.argv[1])
b = Batch(); b.put("visits", b"\\x00\\x00held", b"v" * 16); db.write(b)
print("ready", flush=True)
sys.stdin.readline()
db.close()
"""


def test_a_read_only_view_while_another_process_holds_the_dir(good: Path,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "held"
    shutil.copytree(good, path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        before = listing(path)
        assert _read_everything(path) == USERS * PER_USER + 1  # the holder's write, from its WAL
        assert listing(path) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    assert holder.returncode == 0


def test_a_failed_marker_write_at_open_releases_the_dir(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "full"
    shutil.copytree(good, path)
    refused = StateIOError(f"RocksDB state dir {path}: writing the marker file EDDIES failed: "
                           "[Errno 28] No space left on device")
    with (mock.patch("eddies.state.rocksdb._write_marker", side_effect=refused),
          pytest.raises(StateIOError, match="No space left")):
        RocksDbStateBackend(path)
    with RocksDbStateBackend(path) as db:  # not left locked, and nothing was lost
        assert db.count("visits") == USERS * PER_USER


def test_the_marker_keeps_fields_it_does_not_know(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "later"
    shutil.copytree(good, path)
    marker = json.loads((path / MARKER).read_text())
    (path / MARKER).write_text(json.dumps({**marker, "job": {"name": "visits"}}))
    db = RocksDbStateBackend(path)
    assert read_marker(path) == {**marker, "job": {"name": "visits"}, "closed_cleanly": False}
    db.close()
    assert read_marker(path) == {**marker, "job": {"name": "visits"}, "closed_cleanly": True}
