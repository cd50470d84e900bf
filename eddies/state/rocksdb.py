"""RocksDbStateBackend: column families in a RocksDB dir through rocksdict.

One column family per state name. ``durability=True`` makes every batch write sync the WAL;
``close()`` flushes the WAL and the memtables, so a clean close leaves nothing to replay.
A dir can be open in one place at a time: a second open gets :class:`StateDirLockedError`.

``read_only=True`` opens a read-only snapshot view instead, which takes no lock: it works while
a running job holds the dir, and sees what that job had written when the view was opened
(memtables are rebuilt from its WAL), nothing written after. It creates or changes no file in
the dir (it also works on a read-only filesystem): RocksDB is opened on a private directory of
links to the dir's files, so what rocksdict and RocksDB write on open (``rocksdict-config.json``,
``LOG``) lands there. Writes to a view raise :class:`BackendError`. ``eddies state ls/get/verify``
open dirs this way.

Integrity. Every read path checks RocksDB's status: checksums are verified on every read and
the DB is opened with ``paranoid_checks``. A failed read raises
:class:`~eddies.errors.StateCorruptionError` (a checksum mismatch, a truncated or missing file)
or :class:`~eddies.errors.StateIOError` (disk full, out of descriptors, permission), naming the
dir, the state and the operation; a range read never ends early as if the data ended there.
After such an error the backend writes nothing more (close() does not flush), so the dir keeps
what the last checkpoint left.

A dir is created only when it does not exist or is empty, together with the marker file
``EDDIES`` (JSON: ``{"eddies_state": 1, "key_layout": 2, "closed_cleanly": ..., "opened":
...}``), written atomically; ``opened`` turns true once RocksDB has written its files, so a dir
left with only its marker is new only if RocksDB never opened there. Any other dir is opened only if its marker has this eddies' key layout and its
RocksDB files are all there (``CURRENT``, the ``MANIFEST`` it names, the WAL when the last
run did not close cleanly); otherwise the open is refused with what is missing and how to
recover, and nothing in the dir is created, changed or deleted. ``closed_cleanly`` is false
while a backend has the dir open for writing: a WAL missing then would silently take the
state back to an older checkpoint, so that is refused too.

Machine profiles. By default a dir opens with the options above (``WRITE_BUFFER_BYTES``
memtables, a bloom filter, RocksDB's own small block cache per column family, background
threads for every core). ``profile="small"|"medium"|"large"`` or ``memory_budget_mb=N`` sizes
RocksDB for a machine class instead: one block cache shared by every column family, the
memtables of all column families charged to that cache (a RocksDB write buffer manager), so
RocksDB's memory stays near one number, as Flink's managed memory does. A profile is a memory
budget plus the options derived from it (:meth:`RocksDbProfile.from_memory_budget`)::

    profile   machine class               budget  block cache  memtable/CF  memtables  all memtables  bg jobs
    small     1-2 cores, up to 4 GB RAM    64 MB     64 MB         2 MB        2          32 MB         2
    medium    4-8 cores, 8-32 GB RAM      512 MB    512 MB         8 MB        3         256 MB         4
    large     16+ cores, 64 GB+ RAM      4096 MB   4096 MB        16 MB        4        2048 MB         8

Every profile keeps a 10-bit bloom filter per table file (about 1% false positives on point
reads of absent keys) and caches index and filter blocks in the block cache (pinned for
level 0), so they count against the budget too. The options are per open: a dir written
under one profile opens under any other. RocksDB writes what it applied to an ``OPTIONS-NNNNNN``
file in the dir (:func:`read_options_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count, groupby, islice, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar, cast

import rocksdict

from eddies.errors import (
    BackendError,
    ConfigError,
    StateCorruptionError,
    StateDirLockedError,
    StateIOError,
)
from eddies.state.backend import DELETE, DELETE_MANY, PUT, PUT_MANY, Batch, StateBackend
from eddies.state.keys import KEY_LAYOUT_VERSION

__all__ = [
    "MARKER",
    "MARKER_FORMAT",
    "PROFILES",
    "RocksDbProfile",
    "RocksDbStateBackend",
    "read_marker",
    "read_options_file",
]

_kind_and_cf = itemgetter(0, 1)
_key_and_value = itemgetter(2, 3)
_key = itemgetter(2)


WRITE_BUFFER_BYTES = 2 << 20
"""Memtable size per column family. A checkpoint rewrites every dirty key, so memtables fill
with versions of the same keys; a small one keeps each insert's skiplist search short and in
cache (a 64 MB memtable made inserts about 2x slower in the 1M-event benchmark, and 8 MB made
jobs 1 and 3 about 6% slower than 2 MB; 1 MB was no faster)."""

MARKER = "EDDIES"
"""The marker file that makes a dir an eddies state dir (JSON, see the module docstring)."""

MARKER_FORMAT = 1
"""The marker's own format (its ``eddies_state`` field)."""

_STEPS = 8
"""Entries a forward range read takes one by one before it hands over to rocksdict's items():
short scans (a key's map entries) are cheapest on a raw iterator, long ones in Rust."""
_STEP_RANGE = range(_STEPS)
_T = TypeVar("_T")
_NOT_AHEAD = object()  # a get of a key not read ahead

# Names RocksDB, rocksdict and eddies put in a state dir.
_STATE_FILE = re.compile(
    r"(CURRENT|IDENTITY|LOCK|LOG(\..*)?|MANIFEST-\d+|OPTIONS-\d+(\.dbtmp)?|\d+\.(sst|log|blob|dbtmp)"
    r"|rocksdict-config\.json|EDDIES(\.tmp)?)"
)
_MANIFEST = re.compile(r"MANIFEST-\d+")


_MIN_BUDGET_MB = 16


@dataclass(frozen=True)
class RocksDbProfile:
    """RocksDB options sized for a machine class (see the module docstring's table).

    - ``block_cache_mb``: one LRU cache for the data, index and filter blocks of every column
      family; memtables are charged to it too, so it is the budget of the whole DB.
    - ``write_buffer_mb``: the size of one memtable of one column family (one per state).
    - ``max_write_buffers``: memtables per column family, the active one included: room to
      keep writing while full ones flush.
    - ``total_write_buffer_mb``: the cap on the memtables of all column families together;
      past it RocksDB flushes the largest.
    - ``background_jobs``: flushes and compactions that run at once (threads).
    - ``bloom_bits_per_key``: bloom filter bits per key in each table file.

    >>> PROFILES["medium"].block_cache_mb, PROFILES["medium"].background_jobs
    (512, 4)
    >>> RocksDbProfile.from_memory_budget(1024).write_buffer_mb
    16
    """

    name: str
    block_cache_mb: int
    write_buffer_mb: int
    max_write_buffers: int
    total_write_buffer_mb: int
    background_jobs: int
    bloom_bits_per_key: int = 10

    @classmethod
    def from_memory_budget(cls, mb: int, name: str | None = None) -> RocksDbProfile:
        """Options derived from one number, the MB RocksDB may use: all of it as the shared
        block cache, half of it at most in memtables (charged to that cache), a memtable of
        1/64 of it per column family (2 to 16 MB: larger ones make each insert's skiplist
        search slower, see ``WRITE_BUFFER_BYTES``), and more memtables and background jobs
        from 256 MB and from 2 GB up."""
        if type(mb) is not int or mb < _MIN_BUDGET_MB:
            raise ConfigError(
                f"memory_budget_mb must be an int of at least {_MIN_BUDGET_MB} (MB RocksDB may "
                f"use for its block cache and memtables), got {mb!r}"
            )
        tier = 0 if mb < 256 else 1 if mb < 2048 else 2
        return cls(
            name=name or f"{mb}mb",
            block_cache_mb=mb,
            write_buffer_mb=min(16, max(2, mb // 64)),
            max_write_buffers=(2, 3, 4)[tier],
            total_write_buffer_mb=mb // 2,
            background_jobs=(2, 4, 8)[tier],
        )


PROFILES: dict[str, RocksDbProfile] = {
    "small": RocksDbProfile.from_memory_budget(64, "small"),
    "medium": RocksDbProfile.from_memory_budget(512, "medium"),
    "large": RocksDbProfile.from_memory_budget(4096, "large"),
}
"""The machine profiles ``RocksDbStateBackend(path, profile=NAME)`` takes."""


def _profile(profile: str | RocksDbProfile | None, budget: int | None) -> RocksDbProfile | None:
    if profile is not None and budget is not None:
        raise ConfigError("give profile= or memory_budget_mb=, not both: a profile is a budget")
    if budget is not None:
        return RocksDbProfile.from_memory_budget(budget)
    if profile is None or isinstance(profile, RocksDbProfile):
        return profile
    found = PROFILES.get(profile)
    if found is None:
        raise ConfigError(
            f"unknown RocksDB profile {profile!r}: use one of {', '.join(PROFILES)}, or "
            "memory_budget_mb=N"
        )
    return found


class _Sizing:
    """A profile's shared objects: they must outlive the DB that uses them."""

    def __init__(self, profile: RocksDbProfile) -> None:
        self.profile = profile
        self.cache = rocksdict.Cache(profile.block_cache_mb << 20)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            profile.total_write_buffer_mb << 20, False, self.cache)


def _cf_options(sizing: _Sizing | None = None) -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    if sizing is None:
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
        table.set_bloom_filter(10, False)
    else:
        profile = sizing.profile
        opts.set_write_buffer_size(profile.write_buffer_mb << 20)
        opts.set_max_write_buffer_number(profile.max_write_buffers)
        table.set_bloom_filter(profile.bloom_bits_per_key, False)
        table.set_block_cache(sizing.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


def _options(create: bool, sizing: _Sizing | None = None) -> rocksdict.Options:
    opts = _cf_options(sizing)
    opts.create_if_missing(create)  # only a new or empty dir: never a fresh start over old files
    opts.create_missing_column_families(True)
    opts.set_paranoid_checks(True)
    if sizing is None:
        opts.increase_parallelism(max(2, os.cpu_count() or 2))
    else:
        opts.increase_parallelism(sizing.profile.background_jobs)
        opts.set_max_background_jobs(sizing.profile.background_jobs)
        opts.set_write_buffer_manager(sizing.write_buffers)
    return opts


def read_options_file(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """The options RocksDB applied to the dir at ``path``, from its newest ``OPTIONS`` file:
    ``{section: {option: value}}``, sections named as in the file (``DBOptions``,
    ``CFOptions "NAME"``, ``TableOptions/BlockBasedTable "NAME"``).

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> RocksDbStateBackend(path, profile="small").close()
    >>> read_options_file(path)["DBOptions"]["max_background_jobs"]
    '2'
    """
    files = sorted(Path(path).glob("OPTIONS-*"),
                   key=lambda f: int(re.sub(r"\D", "", f.name) or 0))
    files = [f for f in files if not f.name.endswith(".dbtmp")]
    if not files:
        raise BackendError(f"{path} has no OPTIONS file: it is not a RocksDB dir that was opened")
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in files[-1].read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            option, _, value = line.partition("=")
            current[option.strip()] = value.strip()
    return sections


def _read_options(upper: bytes | None = None) -> rocksdict.ReadOptions:
    ro = rocksdict.ReadOptions()
    ro.set_verify_checksums(True)  # RocksDB's default, made explicit: no read skips it
    if upper is not None:
        ro.set_iterate_upper_bound(upper)
    return ro


# -- the marker and the checks before an open ----------------------------------------------------
def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``EDDIES`` marker of state dir ``path``, or None if it has none.

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> read_marker(path) is None
    True
    >>> RocksDbStateBackend(path).close()
    >>> marker = read_marker(path)
    >>> marker["eddies_state"], marker["key_layout"], marker["closed_cleanly"]
    (1, 2, True)
    """
    file = Path(path) / MARKER
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error(Path(path), "reading the marker file EDDIES", exc) from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("eddies_state"), int):
            raise ValueError("not an object with an int eddies_state")
    except ValueError as exc:
        raise StateCorruptionError(
            f"{file} is not a valid eddies marker ({exc}): the state dir is damaged. Nothing "
            "was changed; restore the dir from a copy, or rebuild the state by running the job "
            "again on a new dir"
        ) from exc
    return data


def _write_marker(path: Path, data: dict[str, Any]) -> None:
    """Replace the marker atomically: a temp file, fsync, rename, fsync of the dir."""
    tmp = path / (MARKER + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(json.dumps(data, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / MARKER)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _os_error(path, "writing the marker file EDDIES", exc) from exc


def _os_error(path: Path, op: str, exc: OSError) -> StateIOError:
    return StateIOError(
        f"RocksDB state dir {path}: {op} failed: {exc}. {_io_hint(str(exc), path)}"
    )


def _io_hint(text: str, path: Path) -> str:
    low = text.lower()
    if "no space" in low or "quota" in low:
        fix = f"free space on the disk that holds {path}"
    elif "too many open files" in low:
        fix = "raise the open-file limit (ulimit -n) or lower what else the process holds open"
    elif "permission" in low or "read-only file system" in low or "not permitted" in low:
        fix = f"give the job's user write access to {path}"
    else:
        fix = "fix the cause"
    return (f"The last checkpoint is intact: {fix}, then run the job again on the same dir "
            "and it resumes from that checkpoint.")


def _recovery(path: Path, opened: bool = False) -> str:
    done = (f"It was not read as empty state, and no table file in {path} was changed or "
            "deleted." if opened else f"Nothing in {path} was changed.")
    return (f"{done} Restore the dir from a copy, or rebuild the state by running the job "
            "again on a new, empty dir (state='rocksdb:NEWDIR'); `eddies state verify "
            f"{path}` checks every table file.")


def _current_manifest(path: Path) -> str:
    """The MANIFEST file name CURRENT names, checked to exist."""
    try:
        text = (path / "CURRENT").read_text(errors="replace")
    except OSError as exc:
        raise _os_error(path, "reading CURRENT", exc) from exc
    name = text.strip()
    if not text.endswith("\n") or not _MANIFEST.fullmatch(name):
        raise StateCorruptionError(
            f"RocksDB state dir {path}: CURRENT is damaged (it holds {text[:40]!r}, not the "
            f"name of a MANIFEST file). {_recovery(path)}"
        )
    if not (path / name).is_file():
        raise StateCorruptionError(
            f"RocksDB state dir {path}: {name}, the MANIFEST that CURRENT names (the list of "
            "table files that make up the state), is missing, so the state cannot be read and "
            f"would be lost if opened. {_recovery(path)}"
        )
    return name


def _check_dir(path: Path, read_only: bool) -> bool:
    """Whether ``path`` is a new state dir (missing or empty); raises if it cannot be opened."""
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        if read_only:
            raise BackendError(
                f"{path} is not a RocksDB state dir (it does not exist); give the dir a job "
                "ran with state='rocksdb:DIR'"
            ) from None
        return True
    except NotADirectoryError:
        raise BackendError(
            f"cannot use {path} as a RocksDB state dir: it is a file, not a directory"
        ) from None
    except OSError as exc:
        raise _os_error(path, "listing the dir", exc) from exc
    marker = read_marker(path) if MARKER in names else None
    others = [n for n in names if n not in (MARKER, MARKER + ".tmp")]
    # A marker alone is a new dir unless RocksDB once opened there (``opened``, or a clean
    # close): then its files are gone, and opening would start from empty state.
    if not others and (marker is None or (
            marker.get("key_layout") == KEY_LAYOUT_VERSION and not marker.get("opened")
            and marker.get("closed_cleanly") is not True)):
        if read_only:
            raise BackendError(
                f"{path} is not a RocksDB state dir (no CURRENT file: it is empty); give the "
                "dir a job ran with state='rocksdb:DIR'"
            )
        return True  # empty, or a creation stopped before RocksDB wrote anything
    ours = [n for n in others if _STATE_FILE.fullmatch(n)]
    if marker is None:
        if not ours:
            what = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise BackendError(
                f"{path} is not a RocksDB state dir (no CURRENT file) and not empty (it holds "
                f"{what}); give a new or empty dir for state='rocksdb:DIR', or the dir a job "
                "ran with"
            )
        if "CURRENT" in names:
            raise StateCorruptionError(
                f"{path} holds RocksDB state without the eddies marker file EDDIES: it was "
                "written by an older eddies (key layout 1) or by another program, and this "
                f"eddies stores keys in layout {KEY_LAYOUT_VERSION}, so it cannot read it. "
                "Rebuild the state: run the job again on a new, empty dir "
                f"(state='rocksdb:NEWDIR'). Nothing in {path} was changed."
            )
        raise StateCorruptionError(
            f"{path} holds RocksDB files ({', '.join(ours[:5])}) but neither CURRENT nor the "
            f"eddies marker file EDDIES: it is not a complete state dir. {_recovery(path)}"
        )
    layout = marker.get("key_layout")
    if layout != KEY_LAYOUT_VERSION:
        raise StateCorruptionError(
            f"{path} holds state written with key layout {layout!r} (its EDDIES marker says "
            f"so), and this eddies stores keys in layout {KEY_LAYOUT_VERSION}: the state must be "
            "rebuilt. Run the job again on a new, empty dir (state='rocksdb:NEWDIR'). Nothing "
            f"in {path} was changed."
        )
    if "CURRENT" not in names:
        manifests = [n for n in names if _MANIFEST.fullmatch(n)]
        hint = (f" If {manifests[0]} is the only MANIFEST and the dir is otherwise intact, "
                f"`printf '{manifests[0]}\\n' > {path / 'CURRENT'}` restores it."
                if len(manifests) == 1 else "")
        raise StateCorruptionError(
            f"RocksDB state dir {path} has no CURRENT file (the pointer to its MANIFEST, the "
            "list of table files that make up the state), so the state cannot be read, and "
            f"opening it would start from empty state.{hint} {_recovery(path)}"
        )
    _current_manifest(path)
    if marker.get("closed_cleanly") is False and not any(n.endswith(".log") for n in names):
        raise StateCorruptionError(
            f"RocksDB state dir {path}: the write-ahead log (a NNNNNN.log file) is missing, "
            "and the last run on this dir did not close cleanly, so the newest checkpoints "
            "lived only in that log; opening without it would silently go back to an older "
            f"checkpoint. Put the .log file back if you have it. {_recovery(path)}"
        )
    return False


def _shadow_dir(path: Path) -> Path:
    """A private dir of links to ``path``'s RocksDB files, for a read-only open that writes
    nothing into ``path``; CURRENT is copied, so the MANIFEST it names is in the listing."""
    real = path.resolve()
    manifest = _current_manifest(real)
    shadow = Path(tempfile.mkdtemp(prefix="eddies-view-"))
    try:
        (shadow / "CURRENT").write_text(manifest + "\n")
        for name in os.listdir(real):
            if name == "CURRENT" or name == "LOCK" or name.startswith(("LOG", MARKER)) or (
                name == "rocksdict-config.json"
            ):
                continue
            os.symlink(real / name, shadow / name)
    except BaseException:
        shutil.rmtree(shadow, ignore_errors=True)
        raise
    return shadow


class RocksDbStateBackend(StateBackend):
    """State in a RocksDB directory.

    >>> import tempfile
    >>> path = tempfile.mkdtemp()
    >>> with RocksDbStateBackend(path) as db:
    ...     batch = Batch(); batch.put("s", b"k", b"v"); db.write(batch)
    ...     with RocksDbStateBackend(path, read_only=True) as view:  # no lock taken
    ...         view.get("s", b"k")
    b'v'
    >>> with RocksDbStateBackend(path, profile="medium") as db:  # sized for a machine class
    ...     db.profile.block_cache_mb, db.get("s", b"k")
    (512, b'v')
    """

    takes_put_many = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: bool = False,
        *,
        read_only: bool = False,
        recovery: str | None = None,
        profile: str | RocksDbProfile | None = None,
        memory_budget_mb: int | None = None,
    ) -> None:
        """``recovery``, if given, is a better way to recover from damaged state than
        restoring a copy (a Kafka worker rebuilds its state from the changelog): it is added
        as a note to every StateCorruptionError.

        ``profile`` (``"small"``, ``"medium"``, ``"large"`` or a :class:`RocksDbProfile`) or
        ``memory_budget_mb`` sizes RocksDB's caches, memtables and background jobs (see the
        module docstring); neither keeps the default options."""
        super().__init__()
        self.profile = _profile(profile, memory_budget_mb)
        """The :class:`RocksDbProfile` in force, or None for the default options."""
        self._sizing = None if self.profile is None else _Sizing(self.profile)
        self.path = Path(path)
        self.durability = durability
        self.read_only = read_only
        self.recovery = recovery
        self._closed = True  # until the DB is open: close() has nothing to do
        self._failure: BackendError | None = None
        self._shadow: Path | None = None
        try:
            new = _check_dir(self.path, read_only)
        except StateCorruptionError as exc:
            if recovery is not None:
                exc.add_note(recovery)
            raise
        if new:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _os_error(self.path, "creating the state dir", exc) from exc
            _write_marker(self.path, self._marker(closed_cleanly=False))
        self._cfs: dict[str, rocksdict.Rdict] = {}
        self._handles: dict[str, rocksdict.ColumnFamily] = {}
        # What a startup preload read ahead (see read_together): values by (state, stored
        # key) and emptiness by state, answered without a read until the next write.
        self._ahead: dict[tuple[str, bytes], object] = {}
        self._empty_ahead: dict[str, bool] = {}
        self._group: threading.local | None = None
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = durability
        self._sync_opts = rocksdict.WriteOptions()
        self._sync_opts.sync = True
        self._db = self._open(new)
        self._closed = False
        try:
            read_opts = _read_options()
            self._db.set_read_options(read_opts)
            for name in self._existing:
                if name != "default":
                    table = self._cfs[name] = self._db.get_column_family(name)
                    table.set_read_options(read_opts)
                    self._handles[name] = self._db.get_column_family_handle(name)
            if new:  # RocksDB's files exist from here on: a marker alone is no new dir
                _write_marker(self.path, {**self._marker(False), "opened": True})
            elif not read_only:
                marker = read_marker(self.path) or {}
                if marker.get("closed_cleanly") is not False or not marker.get("opened"):
                    _write_marker(self.path, {**marker, "closed_cleanly": False,
                                              "opened": True})
        except BaseException as exc:  # release the dir: nothing more is written to it
            self._failure = exc if isinstance(exc, BackendError) else BackendError(str(exc))
            self.close()
            raise

    @staticmethod
    def _marker(closed_cleanly: bool) -> dict[str, Any]:
        """A new dir's marker. Fields other eddies versions add (a job identity, say) are
        kept when this one rewrites closed_cleanly."""
        return {"eddies_state": MARKER_FORMAT, "key_layout": KEY_LAYOUT_VERSION,
                "closed_cleanly": closed_cleanly}

    def _open(self, new: bool) -> rocksdict.Rdict:
        if self.read_only:
            # A job holding the dir may replace its MANIFEST or compact table files away
            # between the listing and the open: a fresh listing is the fix.
            for attempt in range(3):
                self._shadow = _shadow_dir(self.path)
                weakref.finalize(self, shutil.rmtree, self._shadow, True)
                try:
                    return self._open_at(self._shadow, new)
                except BackendError as exc:
                    shutil.rmtree(self._shadow, ignore_errors=True)
                    if attempt == 2 or not isinstance(exc.__cause__, Exception) or (
                        "no such file" not in str(exc.__cause__).lower()
                    ):
                        raise
            raise AssertionError("unreachable")
        return self._open_at(self.path, new)

    def _open_at(self, where: Path, new: bool) -> rocksdict.Rdict:
        self._existing: list[str] = []
        try:
            if not new:
                self._existing = rocksdict.Rdict.list_cf(str(where))
            return rocksdict.Rdict(
                str(where),
                options=_options(create=new, sizing=self._sizing),
                column_families={n: _cf_options(self._sizing)
                                 for n in self._existing if n != "default"},
                access_type=(
                    rocksdict.AccessType.read_only() if self.read_only
                    else rocksdict.AccessType.read_write()
                ),
            )
        except Exception as exc:
            text = str(exc)
            if not self.read_only and "lock" in text.lower():
                raise StateDirLockedError(
                    f"RocksDB state dir {self.path} is in use by another process or backend "
                    "(a running job?). Stop it first, or read it without a lock: "
                    "RocksDbStateBackend(path, read_only=True), as `eddies state ls` does."
                ) from exc
            error = self._error(exc, None, "open" + (" (read-only)" if self.read_only else ""))
            if self.read_only and type(error) is BackendError:
                error = BackendError(f"{error} (if a job is compacting it right now, try again)")
            raise error from exc

    # -- errors --------------------------------------------------------------------------------
    def _error(self, exc: Exception, cf: str | None, op: str) -> BackendError:
        """The eddies error for a RocksDB error ``exc`` during ``op`` on state ``cf``."""
        text = " ".join(str(exc).split())  # RocksDB's messages may span lines: one line
        if self._shadow is not None:  # a read-only view: name the dir, not its private links
            text = text.replace(str(self._shadow), str(self.path))
        low = text.lower()
        where = f"RocksDB state dir {self.path}" + ("" if cf is None else f", state {cf!r}")
        if (low.startswith(("corruption", "incomplete")) or "checksum" in low
                or "no such file" in low or "size mismatch" in low):
            error: BackendError = StateCorruptionError(
                f"{where}: {op} failed: the stored state is damaged or incomplete ({text}). "
                + _recovery(self.path, opened=True)
            )
        elif low.startswith("io error") or "too many open files" in low or "no space" in low:
            error = StateIOError(f"{where}: {op} failed: {text}. {_io_hint(text, self.path)}")
        else:
            error = BackendError(f"{where}: {op} failed: {text}")
        if not isinstance(exc, BackendError):
            self._failure = error
        if self.recovery is not None and isinstance(error, StateCorruptionError):
            error.add_note(self.recovery)
        return error

    def _raise_failed(self) -> None:
        failure = cast(BackendError, self._failure)
        raise type(failure)(
            f"RocksDB state dir {self.path} had failed before this write, which was refused so "
            f"that nothing is written over the last checkpoint; the first failure was: {failure}"
        )

    # -- reads ---------------------------------------------------------------------------------
    def _trip(self) -> None:
        """Count one read that waits for storage: a round trip, or one step of the calling
        thread's chain inside :meth:`read_together`."""
        group = self._group
        if group is None:
            self.round_trips += 1
        else:
            group.calls = getattr(group, "calls", 0) + 1

    def read_together(self, reads: Sequence[Callable[[], _T]]) -> list[_T]:
        """Run ``reads`` all at once, one thread each, and return their results in order.

        Each read is a callable making backend reads (a range scan, a multi-get) and
        consuming them before it returns. They are issued together, so they cost the round
        trips of the longest chain of reads one thread made in sequence: one when each makes
        a single read (startup's preload: timers, broadcast tables, emptiness probes and the
        first keys' values). The first error raised is raised here.

        >>> import tempfile
        >>> with RocksDbStateBackend(tempfile.mkdtemp()) as db:
        ...     before = db.round_trips
        ...     got = db.read_together([lambda: db.is_empty("a"), lambda: db.get("b", b"k")])
        ...     (got, db.round_trips - before)
        ([True, None], 1)
        """
        if not reads:
            return []
        group = threading.local()
        chains: list[int] = [0] * len(reads)
        results: list[Any] = [None] * len(reads)
        errors: list[BaseException | None] = [None] * len(reads)

        def run(i: int) -> None:
            group.calls = 0
            try:
                results[i] = reads[i]()
            except BaseException as exc:  # noqa: BLE001 - raised in the calling thread
                errors[i] = exc
            finally:
                chains[i] = group.calls

        threads = [threading.Thread(target=run, args=(i,), name=f"eddies-preload-{i}",
                                    daemon=True) for i in range(len(reads))]
        self._group = group
        try:
            for thread in threads:  # all started before any is waited for
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self._group = None
            self.round_trips += max(chains, default=0)
        for error in errors:
            if error is not None:
                raise error
        return results

    def read_ahead(self, cf: str, keys: list[bytes]) -> None:
        """Read ``keys`` of state ``cf`` in one multi-get and keep them: the next
        :meth:`get` of each is answered from here (once), until the next write."""
        if keys:
            self._ahead.update(zip(((cf, k) for k in keys), self.multi_get(cf, keys),
                                   strict=True))

    def probe_empty(self, cf: str) -> bool:
        """Whether ``cf`` is empty (one step of a range read), kept for :meth:`is_empty`
        until the next write."""
        self._empty_ahead.pop(cf, None)
        empty = self._empty_ahead[cf] = self.is_empty(cf)
        return empty

    def is_empty(self, cf: str) -> bool:
        ahead = self._empty_ahead.get(cf)
        if ahead is not None:
            return ahead
        return super().is_empty(cf)

    def load(self, cf: str, runs: Iterable[tuple[list[bytes], list[bytes]]]) -> None:
        """Put each run's ``values[i]`` at its ``keys[i]`` in ``cf``, bypassing the WAL, then
        flush ``cf``: filling a new dir (a savepoint restore, whose dir is used only once
        the restore has written its identity after this). Write listeners are not told.

        >>> import tempfile
        >>> with RocksDbStateBackend(tempfile.mkdtemp()) as db:
        ...     db.load("s", [([b"a", b"b"], [b"1", b"2"])])
        ...     list(db.iterate("s"))
        [(b'a', b'1'), (b'b', b'2')]
        """
        self._apply(Batch(), False)  # an empty write: its checks (read-only, failed) and resets
        handle: Any = self._handles.get(cf) or self._create(cf)
        no_wal: Any = rocksdict.WriteOptions()
        no_wal.disable_wal = True
        wb: Any = None
        try:
            for keys, values in runs:
                if wb is None:
                    wb = rocksdict.WriteBatch(raw_mode=True)
                    wb.set_default_column_family(handle)
                deque(map(wb.put, keys, values), 0)
                if len(wb) >= 50_000:
                    self.round_trips += 1
                    self._db.write(wb, no_wal)
                    wb = None
            if wb is not None:
                self.round_trips += 1
                self._db.write(wb, no_wal)
            wb = handle = None
            self._cfs[cf].flush(True)
        except Exception as exc:
            wb = handle = None  # they name column families, which keep the DB open
            raise self._error(exc, cf, "bulk load") from exc

    def _cf(self, cf: str) -> rocksdict.Rdict | None:
        return self._cfs.get(cf)

    def _create(self, cf: str) -> rocksdict.ColumnFamily:
        handle = self._handles.get(cf)
        if handle is None:
            try:
                self._cfs[cf] = self._db.create_column_family(cf, _cf_options(self._sizing))
            except Exception as exc:
                raise self._error(exc, cf, "creating the column family") from exc
            handle = self._handles[cf] = self._db.get_column_family_handle(cf)
        return handle

    def get(self, cf: str, key: bytes) -> bytes | None:
        if self._ahead:
            ahead = self._ahead.pop((cf, key), _NOT_AHEAD)
            if ahead is not _NOT_AHEAD:
                return cast("bytes | None", ahead)
        self._trip()
        table: Any = self._cfs.get(cf)
        if table is None:
            return None
        try:
            return table.get(key)
        except Exception as exc:
            table = None  # the traceback keeps this frame: it must not keep the DB open
            raise self._error(exc, cf, "point read") from exc

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        self._trip()
        table: Any = self._cfs.get(cf)
        if table is None:
            return [None] * len(keys)
        try:  # rocksdict raises on the first failed key rather than returning errors in the list
            return cast("list[bytes | None]", table.get(cast("list[Any]", keys)))
        except Exception as exc:
            table = None
            raise self._error(exc, cf, "multi-key read") from exc

    def keys(self, cf: str, lower: bytes | None, upper: bytes | None, limit: int) -> list[bytes]:
        self._trip()
        table: Any = self._cfs.get(cf)
        if table is None:
            return []
        ro = _read_options(upper)
        probe = None
        try:
            keys: list[bytes] = list(islice(table.keys(from_key=lower, read_opt=ro), limit))
            if len(keys) < limit:  # ended: at the range's end, or at an error keys() hides
                probe = table.iter(ro)
                probe.seek(keys[-1] + b"\x00" if keys else lower or b"")
                if not probe.valid():
                    probe.status()
            return keys
        except Exception as exc:
            table = probe = None
            raise self._error(exc, cf, "key range read") from exc

    def iterate(
        self,
        cf: str,
        lower: bytes | None = None,
        upper: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        self._trip()
        table = self._cfs.get(cf)
        if table is None:
            return iter(())
        return self._scan(cf, table, lower, upper, reverse)

    def _scan(
        self,
        cf: str,
        table: Any,
        lower: bytes | None,
        upper: bytes | None,
        reverse: bool,
    ) -> Iterator[tuple[bytes, bytes]]:
        # Only the upper bound goes into ReadOptions: rocksdict's set_iterate_lower_bound
        # stores its argument as the *upper* bound (seen in 0.3.29), which silently widens
        # every range read. The lower bound is a seek going forward and a check going back.
        #
        # rocksdict's items() stops quietly when RocksDB fails (a checksum mismatch ends it
        # as if the data ended there). So the first _STEPS entries come from a raw iterator,
        # whose status() is checked where it stops (short scans, a key's map entries, are
        # cheapest this way), and longer scans go on through items(), which steps in Rust at
        # half the cost of valid/key/value/next, and end with a probe: one seek just past the
        # last key, whose status says whether the range ended or the read failed. Checksums
        # are verified: RocksDB's ReadOptions default, which tests with flipped bytes pin.
        ro = rocksdict.ReadOptions()
        if upper is not None:
            ro.set_iterate_upper_bound(upper)
        it = table.iter(ro)
        probe = None
        try:
            if reverse:
                it.seek_to_last()
                while it.valid():
                    key = it.key()
                    if lower is not None and key < lower:
                        return
                    yield key, it.value()
                    it.prev()
                it.status()
                return
            if lower is None:
                it.seek_to_first()
            else:
                it.seek(lower)
            valid = it.valid
            for _ in _STEP_RANGE:
                if not valid():
                    it.status()
                    return
                yield it.key(), it.value()
                it.next()
            if not valid():
                it.status()
                return
            start = it.key()
            it = valid = None
            kv = None
            for kv in table.items(from_key=start, read_opt=ro):
                yield kv
            probe = table.iter(ro)
            probe.seek(start if kv is None else kv[0] + b"\x00")
            if not probe.valid():
                probe.status()
        except Exception as exc:
            it = valid = probe = table = None  # the traceback keeps this frame: not the DB
            raise self._error(exc, cf, "range read") from exc

    def verify(self) -> dict[str, int]:
        """Read every entry of every column family with checksums verified (every data
        block of every table file, and the WAL, which the open replays); returns the entries
        per column family. Raises StateCorruptionError or StateIOError on a failure.

        >>> import tempfile
        >>> path = tempfile.mkdtemp()
        >>> with RocksDbStateBackend(path) as db:
        ...     batch = Batch(); batch.put("s", b"k", b"v"); db.write(batch)
        ...     db.verify()
        {'default': 0, 's': 1}
        """
        counts: dict[str, int] = {}
        tables: list[tuple[str, Any]] = [("default", self._db), *sorted(self._cfs.items())]
        for name, table in tables:
            ro = _read_options()
            ro.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks the argument
            ro.set_readahead_size(2 << 20)
            probe = None
            try:
                # (n, key) of the last key, counted in C: no Python step per entry.
                last = deque(zip(count(1), table.keys(read_opt=ro)), maxlen=1)
                probe = table.iter(ro)
                probe.seek(last[0][1] + b"\x00" if last else b"")
                if not probe.valid():
                    probe.status()
            except Exception as exc:
                probe = table = None
                raise self._error(exc, None if name == "default" else name,
                                  "checksum verification") from exc
            counts[name] = last[0][0] if last else 0
        return counts

    # -- writes --------------------------------------------------------------------------------
    def _apply(self, batch: Batch, sync: bool) -> None:
        if self._ahead or self._empty_ahead:  # a write ends what was read ahead
            self._ahead.clear()
            self._empty_ahead.clear()
        if self.read_only:
            raise BackendError(
                f"RocksDB dir {self.path} is open read-only (a snapshot view); open it without "
                "read_only=True to write"
            )
        if self._failure is not None:
            self._raise_failed()
        wb: Any = rocksdict.WriteBatch(raw_mode=True)
        handle: Any = None
        # Runs of ops of one kind on one column family go to the batch through C-level
        # loops (starmap) with that family as the batch's default, in key order: memtable
        # inserts in order reuse the skiplist position of the one before (about half the
        # cost of random order). The sort is stable, so writes to one key keep their order.
        for (kind, cf), run in groupby(batch.ops, _kind_and_cf):
            handle = self._handles.get(cf) or self._create(cf)
            wb.set_default_column_family(handle)
            if kind == PUT:
                deque(starmap(wb.put, map(_key_and_value, sorted(run, key=_key))), 0)
            elif kind == PUT_MANY:
                for _, _, keys, values in run:
                    # The keys are distinct: sorting them alone and looking their values up
                    # costs about half of sorting the (key, value) pairs.
                    value_of = dict(zip(keys, values, strict=True))
                    ordered = sorted(keys)
                    deque(map(wb.put, ordered, map(value_of.__getitem__, ordered)), 0)
            elif kind == DELETE:
                deque(map(wb.delete, sorted(map(_key, run))), 0)
            elif kind == DELETE_MANY:
                for _, _, keys, _ in run:
                    deque(map(wb.delete, sorted(keys)), 0)
            else:  # delete_range ignores the default family (rocksdict 0.3): name it
                for _, _, lower, upper in run:
                    wb.delete_range(lower, cast(bytes, upper), handle)
        handle = None
        try:
            self._db.write(wb, self._sync_opts if sync else self._write_opts)
        except Exception as exc:
            wb = None  # it names column families, which keep the DB open
            raise self._error(exc, None, "checkpoint write") from exc

    def estimate(self, cf: str) -> tuple[int, int]:
        """RocksDB's cheap estimates of ``cf``'s entries and bytes (SST data plus memtables),
        for metrics; exact counts need a scan (:meth:`count`)."""
        table = self._cfs.get(cf)
        if table is None:
            return 0, 0
        entries = table.property_int_value("rocksdb.estimate-num-keys") or 0
        size = (table.property_int_value("rocksdb.estimate-live-data-size") or 0) + (
            table.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
        return entries, size

    def column_families(self) -> list[str]:
        return sorted(self._cfs)

    def memory_usage(self) -> dict[str, int] | None:
        """Bytes in the profile's shared block cache (memtables charged to it included) and
        in memtables, or None without a profile (RocksDB's default caches are not shared).

        >>> import tempfile
        >>> with RocksDbStateBackend(tempfile.mkdtemp(), memory_budget_mb=32) as db:
        ...     sorted(db.memory_usage())
        ['block_cache', 'memtables']
        """
        if self._sizing is None:
            return None
        return {"block_cache": self._sizing.cache.get_usage(),
                "memtables": self._sizing.write_buffers.get_usage()}

    def close(self) -> None:
        """Flush the WAL and memtables and release the dir; after a failure, release it
        without writing anything (no flush, no compaction)."""
        if self._closed:
            return
        self._closed = True
        error: BackendError | None = None
        clean = not self.read_only and self._failure is None
        if clean:
            try:
                self._db.flush_wal(True)
                self._db.flush()
                for table in self._cfs.values():
                    table.flush()  # Rdict.flush() covers only the default column family
            except Exception as exc:
                error = self._error(exc, None, "flush at close")
                error.__cause__ = exc
                clean = False
        if not self.read_only and not clean:
            # rocksdict's close() flushes: stopping background work first makes that flush
            # (and any compaction) a no-op, so a failed backend writes nothing more.
            with contextlib.suppress(Exception):
                self._db.cancel_all_background(True)
        for table in self._cfs.values():
            with contextlib.suppress(Exception):
                table.close()
        self._cfs.clear()
        self._handles.clear()
        with contextlib.suppress(Exception):
            self._db.close()
        del self._db
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
        if clean:
            _write_marker(self.path, {**(read_marker(self.path) or self._marker(True)),
                                      "closed_cleanly": True})
        if error is not None:
            raise error
