"""The ``eddies`` command: ``eddies run module:job``, ``eddies state ls/get/verify`` to
inspect and check the state a job left in (or is writing to) a RocksDB dir, and ``eddies
savepoint create/inspect`` (restored with ``eddies run --from-savepoint``).

Errors print as one ``error:`` line (what, where, what to do), then where it happened (the
user's own frames for an exception in user code); ``--debug`` adds the whole traceback. The
first SIGINT (Ctrl-C) or SIGTERM stops ``eddies run`` after the current round with a final
checkpoint; a second one exits at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from eddies.errors import ConfigError, EddiesError
from eddies.runtime.failures import error_lines
from eddies.runtime.graph import Job
from eddies.runtime.local import LocalRunner, RunStats, runs_started
from eddies.runtime.options import inspector_options
from eddies.runtime.watermarks import MAX_TIME, MIN_TIME

__all__ = ["main"]


def _fmt_wm(wm: int) -> str:
    if wm == MIN_TIME:
        return "-"
    if wm == MAX_TIME:
        return "end"
    return str(wm)


def _fmt_lag(wm: int) -> str:
    """Wall clock minus the watermark, for event times near now (else nothing)."""
    if wm in (MIN_TIME, MAX_TIME):
        return ""
    lag = time.time() * 1000 - wm
    if not 0 <= lag < 365 * 86_400_000:  # historical or synthetic event times: not a lag
        return ""
    return f" (lag {lag / 1000:,.1f}s)"


class _Progress:
    """A rich progress bar on a TTY; plain periodic log lines otherwise (or with --quiet).

    Both count this run only, as the final summary does (a resumed run's counters carry the
    previous runs' too)."""

    def __init__(self, quiet: bool, every: float = 5.0) -> None:
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.every = every
        self._bar: Any = None
        self._task: Any = None
        self._last = time.monotonic()

    def __enter__(self) -> _Progress:
        if self.tty:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("running", total=None, info="")
        return self

    def __call__(self, stats: RunStats) -> None:
        now = time.monotonic()
        if self._bar is not None:
            if now - self._last < 0.1 and stats.bytes_read != stats.bytes_total:
                return
            self._last = now
            info = (
                f"{stats.this_run('events_in'):,} events  {stats.events_per_s:,.0f}/s  "
                f"wm {_fmt_wm(stats.watermark)}{_fmt_lag(stats.watermark)}  "
                f"late {stats.this_run('late_events'):,}  "
                f"dead {stats.this_run('dead_letters'):,}"
            )
            self._bar.update(self._task, total=stats.bytes_total, completed=stats.bytes_read,
                             info=info)
        elif not self.quiet and now - self._last >= self.every:
            self._last = now
            click.echo(f"progress: {stats.summary()}", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _say(line: str) -> None:
    """A line on stderr from a signal handler: one unbuffered write, so it cannot re-enter a
    buffered write the handler interrupted."""
    os.write(2, (line + "\n").encode())


class StopOnSignal:
    """While entered, the first SIGINT or SIGTERM asks the runner to stop after its current
    round (with a final checkpoint) and says so on stderr; a second one exits at once with
    128 + the signal number, leaving the state as of the last checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._stop: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def attach(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` on the first signal (now, if it came already)."""
        self._stop = stop
        if self.signum is not None:
            stop()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"error: second signal ({name}): exiting at once, without a final "
                 "checkpoint; the last checkpoint is intact and a new run resumes from it")
            os._exit(128 + signum)
        self.signum = signum
        if self._stop is not None:
            self._stop()
        _say(f"{name}: stopping after the current round, with a final checkpoint ({name} "
             "again to exit at once)")


def load_target(target: str) -> Job:
    """``load_job``, warning (one line on stderr) when importing the module already ran a job,
    as a module-level ``run_local(job)`` does: ``eddies run`` would run it twice."""
    from eddies.runtime.loader import load_job

    before = runs_started()
    job = load_job(target)
    ran = runs_started() - before
    if ran:
        module = target.rpartition(":")[0]
        click.echo(f"warning: importing {module} already ran a job ({ran} run{'s' * (ran > 1)}, "
                   "e.g. a module-level run_local(...)); put that call under "
                   "'if __name__ == \"__main__\":' so the job runs once", err=True)
    return job


def report_error(exc: BaseException, debug: bool) -> None:
    """Print ``exc`` as the CLI does and exit 1; re-raise what is neither an eddies error nor
    I/O refused by the OS (a bug: its traceback is the report)."""
    lines = error_lines(exc, debug=debug)
    if lines is None:
        raise exc
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="eddies")
def main() -> None:
    """eddies: stream processing with keyed state in Python."""


@main.command()
@click.argument("target")
@click.option("--state", default="memory", show_default=True,
              help="State backend: 'memory' or 'rocksdb:DIR' (resumes from DIR's checkpoint).")
@click.option("--checkpoint-interval", default=100_000, show_default=True, type=int,
              help="Events between checkpoints.")
@click.option("--dead-letters", type=click.Path(dir_okay=False), default=None,
              help="JSONL file for malformed records, with their reasons.")
@click.option("--durable", is_flag=True, help="Sync RocksDB's WAL on every checkpoint.")
@click.option("--rocksdb-profile", type=click.Choice(["small", "medium", "large"]),
              default=None, help="Size RocksDB's caches, memtables and background jobs for a "
              "machine class (64 MB, 512 MB, 4 GB); default: RocksDB's default options.")
@click.option("--follow", is_flag=True,
              help="Keep reading the input files as they grow (as tail -f) until stopped by "
                   "Ctrl-C or SIGTERM; event time never jumps to the end of input.")
@click.option("--from-savepoint", "from_savepoint", type=click.Path(dir_okay=False),
              default=None, help="Start from this savepoint (eddies savepoint create), in a "
              "new, empty --state.")
@click.option("--allow-non-restored-state", is_flag=True,
              help="With --from-savepoint: drop saved states and sources the job no longer "
                   "has, instead of stopping.")
@click.option("--quiet", is_flag=True, help="No progress display (the summary still prints).")
@click.option("--progress-every", default=5.0, show_default=True, type=float,
              help="Seconds between progress lines when stderr is not a terminal.")
@click.option("--debug", is_flag=True,
              help="On an error, print the whole traceback too (not only the user's frames).")
@inspector_options
def run(target: str, state: str, checkpoint_interval: int, dead_letters: str | None,
        durable: bool, rocksdb_profile: str | None, follow: bool,
        from_savepoint: str | None, allow_non_restored_state: bool, quiet: bool,
        progress_every: float, debug: bool,
        metrics_port: int | None, bind: str, token: str | None) -> None:
    """Run a job (path/to/file.py:job or package.module:job) over its input files.

    Ctrl-C (SIGINT) or SIGTERM stops the run after the current round with a final checkpoint
    (run the same command again to resume from it); a second signal exits at once, from the
    last checkpoint. With --follow the run reads on as the files grow and ends only so.

    A state dir belongs to one job: a run of another job (name, operators, states) or over
    replaced input stops before the first event with an error that says what differs. A dir
    whose run ended its input: the same input again has nothing to do (exit code 0); input
    that grew since is an error (its event time has ended; see --follow).

    --from-savepoint starts a new state dir from a savepoint, also for a changed job: states
    map by operator and state name (or renamed_from=), migrate by version=/migrate=; saved
    states the job lacks stop the run unless --allow-non-restored-state.

    Exit codes: 0 when the input is done; 1 on an error (one error: line that says what to
    do; the last checkpoint is intact); 130 (SIGINT) or 143 (SIGTERM) when stopped by a
    signal before the end of the input, as shells report a job ended by that signal.
    """
    stop = StopOnSignal()
    try:
        with stop:
            job = load_target(target)
            with _Progress(quiet, progress_every) as progress:
                runner = LocalRunner(job, state, checkpoint_interval=checkpoint_interval,
                                     dead_letters=dead_letters, durability=durable,
                                     rocksdb_profile=rocksdb_profile, on_progress=progress,
                                     metrics_port=metrics_port,
                                     bind=bind, token=token, follow=follow,
                                     from_savepoint=from_savepoint,
                                     allow_non_restored_state=allow_non_restored_state)
                stop.attach(runner.request_stop)
                if metrics_port is not None:
                    click.echo(f"serving /metrics and /state on {bind}:{metrics_port}",
                               err=True)
                result = runner.run()
    except Exception as exc:
        report_error(exc, debug)
        return
    stats = result.stats
    if runner.nothing_to_do is not None:
        click.echo(f"{job.name}: {runner.nothing_to_do}", err=True)
        return
    if stats.stopped and stop.signum is not None:
        resume = ("run the same command again to resume" if state != "memory"
                  else "the state was in memory: a new run starts over")
        click.echo(f"{job.name}: stopped by {stop.name} at a final checkpoint ({resume}): "
                   f"{stats.summary()}", err=True)
        sys.exit(128 + stop.signum)
    click.echo(f"{job.name}: {stats.summary()}", err=True)


def _add_kafka_commands() -> None:
    from eddies.runtime.kafka.commands import produce, worker

    main.add_command(worker)
    main.add_command(produce)


_add_kafka_commands()


# -- eddies state ---------------------------------------------------------------------------------
_SNAPSHOT_NOTE = (
    "DIR is opened as a read-only snapshot view: it takes no lock, so it works while a job "
    "runs on DIR, and shows what that job had written when the command started (its last "
    "checkpoint), never unflushed cache contents. Each call opens a fresh view; cursors stay "
    "valid across calls."
)
_KEY_HELP = "(JSON or a bare string)"
_VALUE_WIDTH = 200


def _open_snapshot(path: str) -> Any:
    from eddies.state.rocksdb import RocksDbStateBackend

    return RocksDbStateBackend(path, read_only=True)


def _fail(exc: EddiesError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _fmt_expiry(ms: int | None) -> str:
    if ms is None:
        return "never"
    try:
        when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return f"{ms} ({when.replace('+00:00', 'Z')})"


def _short(value: Any, width: int = _VALUE_WIDTH) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _parse_opt(text: str | None) -> Any:
    """An option's key or bound; UNSET when the option is not given (``null`` is the key
    ``(None,)``, not "no option")."""
    from eddies.runtime.inspection import UNSET, parse_key_text

    return UNSET if text is None else parse_key_text(text)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


@main.group()
def state() -> None:
    """Inspect the state in a RocksDB state dir (read-only; safe while a job runs on it)."""


@state.command("ls", epilog=_SNAPSHOT_NOTE)
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--state", "name", metavar="NAME",
              help="The state to list; without it, list state names with entry counts.")
@click.option("--key", help="Only this user key's entries " + _KEY_HELP + "; range options then "
                            "apply to its map keys (list indexes).")
@click.option("--prefix", help="Keys starting with these tuple elements " + _KEY_HELP + ".")
@click.option("--start", help="First key, inclusive " + _KEY_HELP + ".")
@click.option("--start-after", help="Start after this key, exclusive " + _KEY_HELP + ".")
@click.option("--end", help="Stop before this key, exclusive " + _KEY_HELP + ".")
@click.option("--reverse", is_flag=True, help="Descending key order.")
@click.option("--limit", default=100, show_default=True, type=int, help="Entries per page.")
@click.option("--cursor", help="Continue after the page that printed this cursor.")
@click.option("--json", "as_json", is_flag=True,
              help='One page as {"entries": [...], "cursor": ...}.')
def state_ls(directory: str, name: str | None, key: str | None, prefix: str | None,
             start: str | None, start_after: str | None, end: str | None, reverse: bool,
             limit: int, cursor: str | None, as_json: bool) -> None:
    """List the entries of a state, in key order, one page at a time.

    Keys print as tuples; each entry shows its value and expires_at (ms, or never). A page
    that is not the last ends with the cursor of the next one.

    --key and the range options take JSON when the text parses as JSON ('["user", 7]', 7),
    else a bare string (alice). Range options compare keys as tuples: --prefix user matches
    ("user", 7) but not ("username",). Without --key they select user keys; with --key they
    select that key's map keys (MapState) or indexes (ListState).
    """
    from eddies.runtime.inspection import query_state, state_counts, to_json_entry

    try:
        with _open_snapshot(directory) as db:
            if name is None:
                if any(v is not None for v in (key, prefix, start, start_after, end, cursor)):
                    raise ConfigError("--key, --cursor and the range options need --state NAME")
                counts = state_counts(db)
                if as_json:
                    click.echo(json.dumps({"states": [{"name": n, "entries": c}
                                                      for n, c in counts.items()]}))
                else:
                    _print_table(["state", "entries"], [[n, f"{c:,}"] for n, c in counts.items()])
                return
            page = query_state(db, name, key=_parse_opt(key), prefix=_parse_opt(prefix),
                               start=_parse_opt(start), start_after=_parse_opt(start_after),
                               end=_parse_opt(end), reverse=reverse, limit=limit, cursor=cursor)
    except EddiesError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({"entries": [to_json_entry(e) for e in page.entries],
                               "cursor": page.cursor}))
        return
    if not page.entries:
        click.echo("no entries")
        return
    rows = [[repr(e.key), "-" if e.map_key is None else repr(e.map_key),
             _fmt_expiry(e.expires_at), _short(e.value)]  # value last: it is the long one
            for e in page.entries]
    _print_table(["key", "map_key", "expires_at", "value"], rows)
    if page.cursor is not None:
        click.echo(f"next page: --cursor {page.cursor}")


@state.command("get", epilog=_SNAPSHOT_NOTE)
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--state", "name", metavar="NAME", required=True, help="The state to read.")
@click.option("--key", required=True, help="The user key " + _KEY_HELP + ".")
@click.option("--map-key", help="The map key (MapState) or list index (ListState) "
                                + _KEY_HELP + ".")
@click.option("--json", "as_json", is_flag=True, help="The entry as JSON.")
def state_get(directory: str, name: str, key: str, map_key: str | None, as_json: bool) -> None:
    """Read one entry: a key's value, or one map entry (list element) with --map-key.

    --key and --map-key take JSON when the text parses as JSON ('["user", 7]', 7), else a
    bare string (alice).
    """
    from eddies.runtime.inspection import UNSET, get_entry, query_state, to_json_entry

    user_key, mk = _parse_opt(key), _parse_opt(map_key)
    try:
        with _open_snapshot(directory) as db:
            entry = get_entry(db, name, user_key, mk)
            has_entries = entry is None and mk is UNSET and bool(
                query_state(db, name, key=user_key, limit=1).entries)
    except EddiesError as exc:
        _fail(exc)
        return
    if entry is None:
        what = f"key {user_key!r}" + ("" if mk is UNSET else f", map key {mk!r}")
        hint = (f"; its entries have map keys: give --map-key, or list them with "
                f"eddies state ls DIR --state {name} --key ..." if has_entries else "")
        click.echo(f"error: state {name!r} has no entry for {what}{hint}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(to_json_entry(entry)))
        return
    click.echo(f"key         {entry.key!r}")
    if entry.map_key is not None:
        click.echo(f"map_key     {entry.map_key!r}")
    click.echo(f"expires_at  {_fmt_expiry(entry.expires_at)}")
    click.echo(f"value       {entry.value!r}")


@state.command("verify", epilog=_SNAPSHOT_NOTE)
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
def state_verify(directory: str) -> None:
    """Check a state dir: its marker and RocksDB files, and the checksum of every entry.

    Reads every entry of every column family with checksums verified (each data block of
    each table file; the WAL is replayed at open). Exit code 0 with what was checked, or 1
    with one error: line that says what is damaged.
    """
    try:
        with _open_snapshot(directory) as db:
            counts = db.verify()
    except EddiesError as exc:
        _fail(exc)
        return
    from pathlib import Path

    tables = sorted(p.name for p in Path(directory).glob("*.sst"))
    size = sum((Path(directory) / t).stat().st_size for t in tables)
    click.echo(f"ok: {directory}: {sum(counts.values()):,} entries in {len(counts)} column "
               f"families, {len(tables)} table files ({size:,} bytes), checksums verified")
    for name, n in counts.items():
        click.echo(f"  {name}  {n:,}")


# -- eddies savepoint -----------------------------------------------------------------------------
@main.group()
def savepoint() -> None:
    """Take, inspect and restore savepoints: a job's state, timers, watermarks and input
    positions in one portable file (restore with eddies run --from-savepoint)."""


@savepoint.command("create")
@click.argument("paths", metavar="[STATE_DIR] OUT", nargs=-1, required=True)
@click.option("--broker", help="kafka://HOST:PORT: save a Kafka job from its changelogs "
                               "(with --job, and OUT alone).")
@click.option("--job", "job_name", metavar="NAME", help="The Kafka job's name (ed.Job(NAME)).")
def savepoint_create(paths: tuple[str, ...], broker: str | None, job_name: str | None) -> None:
    """Write a savepoint of the last checkpoint in STATE_DIR (a dir or rocksdb:DIR) to OUT,
    or with --broker and --job of a Kafka job's committed checkpoints.

    STATE_DIR is opened as a read-only view: it works on a stopped job's dir and on a
    running job's (the savepoint then holds its last checkpoint). A Kafka job's workers may
    be running too; its savepoint has no input positions (they are Kafka offsets).
    """
    try:
        if broker is not None:
            if job_name is None or len(paths) != 1:
                raise ConfigError("with --broker, give --job NAME and OUT alone: eddies "
                                  "savepoint create --broker kafka://HOST:PORT --job NAME OUT")
            from eddies.runtime.kafka.savepoint import create_kafka_savepoint

            out = paths[0]
            sp = create_kafka_savepoint(broker.removeprefix("kafka://"), job_name, out)
        else:
            if len(paths) != 2 or job_name is not None:
                raise ConfigError("give STATE_DIR and OUT (eddies savepoint create ./state "
                                  "sp.eddies), or --broker kafka://HOST:PORT --job NAME OUT")
            from eddies.runtime.savepoint import create_savepoint

            out = paths[1]
            sp = create_savepoint(paths[0], out)
    except EddiesError as exc:
        _fail(exc)
        return
    click.echo(f"savepoint {out}: job {sp.job!r}, {len(sp.states)} states, "
               f"{sp.total_entries:,} entries")


@savepoint.command("restore")
@click.argument("path", metavar="SAVEPOINT", type=click.Path(exists=True, dir_okay=False))
@click.argument("target", metavar="FILE.py:job|module:job")
@click.option("--broker", required=True, help="kafka://HOST:PORT")
@click.option("--allow-non-restored-state", is_flag=True,
              help="Drop saved states the job no longer has, instead of stopping.")
@click.option("--offset", default=0, show_default=True, type=int,
              help="Input offset every partition starts from.")
def savepoint_restore(path: str, target: str, broker: str, allow_non_restored_state: bool,
                      offset: int) -> None:
    """Start a Kafka deployment of a job from a savepoint: write it into the job's changelog
    topics as their first checkpoint, for any partition count, then start the workers
    (eddies worker) as usual. Local runs restore with eddies run --from-savepoint."""
    from eddies.runtime.kafka.seed import seed_kafka_job

    try:
        job = load_target(target)
        done = seed_kafka_job(path, job, broker.removeprefix("kafka://"),
                              allow_non_restored_state=allow_non_restored_state,
                              offset=offset)
    except EddiesError as exc:
        _fail(exc)
        return
    click.echo(f"{job.name}: savepoint written as the first checkpoint of its "
               f"{done['partitions']} partitions ({done['records']:,} changelog records); "
               "start its workers with eddies worker")


@savepoint.command("inspect")
@click.argument("path", metavar="SAVEPOINT", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The summary as JSON.")
def savepoint_inspect(path: str, as_json: bool) -> None:
    """Summarise a savepoint: its job, operators (watermark, timers), states (kind, version,
    entries) and source positions."""
    from eddies.runtime.inspection import to_jsonable
    from eddies.runtime.savepoint import read_savepoint

    try:
        summary = read_savepoint(path).summary()
    except EddiesError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(to_jsonable(summary)))
        return
    click.echo(f"job {summary['job']!r}: savepoint format {summary['format']}, key layout "
               f"{summary['key_layout']}, {summary['entries']:,} entries")
    rows = []
    for op in summary["operators"]:
        rows.append([op["name"], "-", "-", "-", f"{op['timers']:,} timers, watermark "
                     f"{_fmt_wm(op['watermark']) if op['watermark'] is not None else '-'}"])
        rows.extend(["", s["name"], s["kind"], str(s["version"]), f"{s['entries']:,}"]
                    for s in op["states"])
    _print_table(["operator", "state", "kind", "version", "entries"], rows)
    for source in summary["sources"]:
        parts = ", ".join(f"{_short(p['position'], 60)} (wm "
                          f"{_fmt_wm(p['watermark']) if p['watermark'] is not None else '-'})"
                          for p in source["partitions"])
        click.echo(f"source {source['name']!r}: {parts}")


if __name__ == "__main__":  # pragma: no cover
    main()
