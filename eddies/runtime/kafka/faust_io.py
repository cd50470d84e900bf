"""The one place the Kafka worker meets faust-streaming: group membership and lifecycle.

faust runs the consumer group (joins, heartbeats, partition assignment, rebalance callbacks,
leaving the group on stop) and the worker process lifecycle; ``FaustGroup`` wraps that behind
a small interface in plain ``(topic, partition)`` tuples, so a faust upgrade touches this
module only::

    group = FaustGroup(name, bootstrap, topics, datadir, session_timeout=...,
                       callbacks=...)          # on_assigned/on_revoked/on_rebalance_complete,
                                               # main (the data task), install_signal_handlers
    group.run()                                # blocks: faust's worker, until stopped
    group.stop()                               # leave the group (from the event loop)
    await group.commit({(topic, p): offset})   # group offsets, fenced by the generation
    group.standbys()                           # partitions to keep warm (standby replicas)

Records never come through faust: ``eddies.runtime.kafka.reader.PartitionReader``, a plain
aiokafka consumer in the worker's own event loop, reads exactly the partitions the group
assigned and the worker restored. faust's consumer runs in a thread of its own and offers
batched fetches and seeks only through private names (``_thread.getmany``, ``seek_wait``);
the reader needs none, sets its own fetch sizes and hands no batch across threads.

Private faust names still used, pinned to faust-streaming 0.15.x:

- ``App._fetcher``: overridden with an idle service. faust's Fetcher would pull records into
  agents and mark them acknowledged; faust has no public switch to run a consumer-group member
  without it.
- ``Consumer._commit(offsets)``: commits explicit offsets through faust's group member (the
  only client whose commits the coordinator accepts for this generation). faust's public
  ``commit()`` commits the offsets of records delivered to agents, which here are none.

faust's own consumer stays assigned to the input partitions but is never read: its fetch size
is set to the minimum (``consumer_max_fetch_size``), so the one response per partition it
prefetches and holds stays small (a record batch), and the timeouts that watch it are off:
``broker_max_poll_interval`` (past it, a consumer not polled leaves the group),
``stream_processing_timeout`` and ``broker_commit_livelock_soft_timeout`` (faust's livelock
errors about partitions that are neither fetched nor processed through faust).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TP
from mode import Service
from mode.utils.objects import cached_property

__all__ = ["FaustGroup", "GroupCallbacks"]

Partition = tuple[str, int]
_NEVER = 10 * 365 * 86400.0  # seconds


@dataclass(frozen=True)
class GroupCallbacks:
    """What the worker does at each step of faust's lifecycle (all in the event loop)."""

    on_assigned: Callable[[set[Partition]], Awaitable[None]]
    """Partitions assigned by a rebalance (all of them, kept ones included)."""
    on_revoked: Callable[[set[Partition]], Awaitable[None]]
    """Partitions revoked by a rebalance, before they move."""
    on_rebalance_complete: Callable[[], Awaitable[None]]
    """A rebalance ended; app tasks start only after the first one."""
    main: Callable[[], Awaitable[None]]
    """The data task, started once the worker runs."""
    install_signal_handlers: Callable[[], None]
    """Called in place of faust's own SIGINT/SIGTERM handlers, as faust starts."""


class _NoFetch(Service):
    """Stands in for faust's Fetcher, the service that would pull records into agents."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        self.app = app
        super().__init__(**kwargs)


class _MembershipApp(faust.App):
    @cached_property
    def _fetcher(self) -> Service:  # type: ignore[override]
        return _NoFetch(self, loop=self.loop, beacon=self.consumer.beacon)


class _FaustWorker(faust.Worker):
    """faust's worker, stopped by eddies: its signal handlers are the eddies worker's, and its
    shutdown waits for the stop eddies started.

    faust's own shutdown (after ``start`` returns, which it does as soon as a stop begins)
    gives pending tasks a second, then cancels them and closes the loop: a stop still waiting
    for the consumer thread (leaving the group waits for a join in progress to end) would be
    cancelled, and the thread, left running, would call into the closed loop (``Event loop
    is closed``) or keep the process from exiting.
    """

    def __init__(self, group: FaustGroup, *args: Any, **kwargs: Any) -> None:
        self.group = group
        super().__init__(*args, **kwargs)

    def install_signal_handlers(self) -> None:
        self.group.callbacks.install_signal_handlers()

    def stop_and_shutdown(self) -> None:
        task = self.group.stopping
        if task is not None and not task.done():
            try:
                self.loop.run_until_complete(
                    asyncio.wait_for(asyncio.shield(task), self.group.stop_timeout))
            except TimeoutError:
                # faust's consumer thread still runs: the loop stays open under it, and the
                # process exits without waiting for the thread (FaustGroup.left_group).
                self.group.left_group = False
                return
        super().stop_and_shutdown()


class FaustGroup:
    """A member of consumer group ``name`` for ``topics``, on faust-streaming."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topics: Iterable[str],
        datadir: Path,
        callbacks: GroupCallbacks,
        *,
        session_timeout: float,
        standbys: int = 0,
    ) -> None:
        """``standbys``: how many members besides its owner keep each partition warm
        (faust's assignor places them, and promotes one to owner when the owner leaves)."""
        self.callbacks = callbacks
        self.topics = set(topics)
        self.stop_timeout = session_timeout + 9.0
        """Seconds a stop waits for faust to leave the group: a join in progress ends first,
        within the rebalance timeout (session timeout + 4 s)."""
        self.left_group = True
        """False if faust did not leave the group within ``stop_timeout`` of a stop: its
        consumer thread still runs, so exit the process at once (``os._exit``)."""
        self.stopping: asyncio.Future[None] | None = None
        """faust's stop, once ``stop()`` began it."""
        self._worker: _FaustWorker | None = None
        app = _MembershipApp(
            name,
            broker=f"kafka://{bootstrap}",
            store="memory://",
            datadir=str(datadir),
            web_enabled=False,
            topic_replication_factor=1,
            # faust's assignor computes standbys for every co-partitioned topic, tables or
            # not; only table changelogs get a Kafka assignment, so this member is assigned
            # its standby partitions in name only (``standbys()``): the worker tails them.
            table_standby_replicas=standbys,
            broker_session_timeout=session_timeout,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=session_timeout + 4,
            broker_request_timeout=max(30.0, session_timeout * 3),
            # faust's consumer is never read (see the docstring): it must not leave the group
            # for not being polled, nor log its livelock errors about partitions it sees
            # neither fetch nor process ("has not sent fetch request", "stream idle").
            broker_max_poll_interval=_NEVER,
            stream_processing_timeout=_NEVER,
            broker_commit_livelock_soft_timeout=_NEVER,
            consumer_max_fetch_size=1,
            consumer_auto_offset_reset="earliest",
        )
        for topic in self.topics:
            app.topics.add(app.topic(topic, value_serializer="raw", key_serializer="raw"))
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self._on_rebalance_complete)  # type: ignore[arg-type]
        app.task(self._main)
        self.app = app

    def _mine(self, tps: Iterable[TP]) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in tps if tp.topic in self.topics}

    async def _on_revoked(self, app: Any, revoked: set[TP], **kwargs: Any) -> None:
        await self.callbacks.on_revoked(self._mine(revoked))

    async def _on_assigned(self, app: Any, assigned: set[TP], **kwargs: Any) -> None:
        await self.callbacks.on_assigned(self._mine(assigned))

    async def _on_rebalance_complete(self, app: Any, **kwargs: Any) -> None:
        await self.callbacks.on_rebalance_complete()

    async def _main(self) -> None:
        await self.callbacks.main()

    def run(self) -> None:
        """Run faust's worker (joins the group, runs ``main``) until it stops."""
        # Logging stays as the command set it (faust would reset the root level), and no
        # terminal spinner: its cursor codes end up in log files.
        worker = _FaustWorker(self, self.app, loglevel="WARNING", redirect_stdouts=False,
                              quiet=True, override_logging=False)
        worker.spinner = None
        self._worker = worker
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise

    def stop(self) -> None:
        """Begin stopping faust, which leaves the group (call from the event loop; once)."""
        if self._worker is not None and self.stopping is None:
            self.stopping = asyncio.ensure_future(self._worker.stop())

    def standbys(self) -> set[Partition]:
        """The partitions this member keeps warm for others, as of the last assignment
        (never one it is assigned)."""
        return self._mine(self.app.assignor.assigned_standbys())

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit the group's offsets of partitions this member is still assigned."""
        if offsets:
            consumer: Any = self.app.consumer
            # Private: faust's public commit() commits only what its agents acknowledged.
            await consumer._commit(  # noqa: SLF001
                {TP(t, p): off for (t, p), off in offsets.items()})
