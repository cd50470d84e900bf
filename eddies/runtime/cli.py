"""The ``eddies`` command: ``eddies run module:job`` and friends."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from eddies.errors import EddiesError
from eddies.runtime.local import LocalRunner, RunStats
from eddies.runtime.watermarks import MAX_TIME, MIN_TIME

__all__ = ["main"]


def _fmt_wm(wm: int) -> str:
    if wm == MIN_TIME:
        return "-"
    if wm == MAX_TIME:
        return "end"
    return str(wm)


class _Progress:
    """A rich progress bar on a TTY; plain periodic log lines otherwise (or with --quiet)."""

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
                f"{stats.events_in:,} events  {stats.events_per_s:,.0f}/s  "
                f"wm {_fmt_wm(stats.watermark)}  late {stats.late_events:,}  "
                f"dead {stats.dead_letters:,}"
            )
            self._bar.update(self._task, total=stats.bytes_total, completed=stats.bytes_read,
                             info=info)
        elif not self.quiet and now - self._last >= self.every:
            self._last = now
            click.echo(f"progress: {stats.summary()}", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


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
@click.option("--quiet", is_flag=True, help="No progress display (the summary still prints).")
@click.option("--progress-every", default=5.0, show_default=True, type=float,
              help="Seconds between progress lines when stderr is not a terminal.")
def run(target: str, state: str, checkpoint_interval: int, dead_letters: str | None,
        durable: bool, quiet: bool, progress_every: float) -> None:
    """Run a job (path/to/file.py:job or package.module:job) over its input files."""
    from eddies.runtime.loader import load_job

    try:
        job = load_job(target)
        with _Progress(quiet, progress_every) as progress:
            runner = LocalRunner(job, state, checkpoint_interval=checkpoint_interval,
                                 dead_letters=dead_letters, durability=durable,
                                 on_progress=progress)
            result = runner.run()
    except EddiesError as exc:
        click.echo(f"error: {exc}", err=True)
        for note in getattr(exc, "__notes__", ()):  # where it happened (operator, key, record)
            click.echo(f"  {note}", err=True)
        sys.exit(1)
    click.echo(f"{job.name}: {result.stats.summary()}", err=True)


def _add_kafka_commands() -> None:
    from eddies.runtime.kafka.commands import produce, worker

    main.add_command(worker)
    main.add_command(produce)


_add_kafka_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
