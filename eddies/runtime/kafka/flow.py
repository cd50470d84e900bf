"""Flow control of a Kafka worker: produced records awaiting acks are bounded.

Every record the worker produces (outputs, dead letters, repartition and watermark records,
changelog deltas, markers) is handed to the producer in batches; :meth:`InFlight.sent` counts
each batch's records and bytes until the broker acknowledges it. With the bounds of
:class:`FlowLimits`, in records and in bytes:

- the worker stops fetching (it pauses its partitions) once either bound is reached, and
  resumes once acknowledgements have brought both counts down to half (:meth:`InFlight.hold`),
  so a slow or stalled output topic holds the worker's memory at the bound instead of letting
  it grow with the input;
- a send waits for room before handing one more batch over (:meth:`InFlight.wait_for_room`):
  a round whose outputs are more than what is left (timers of many keys firing at once) ends
  at most one batch (the producer's ``max_batch_size``, 1 MiB) over the bound. Besides, the
  worker holds the outputs of the round in progress, made from at most ``batch_records``
  input records, until they are handed over.

Records wait in order and none is dropped, so a stall only delays them. Checkpoints are not
changed: a checkpoint still waits for the acks of its outputs and deltas.

Records fetched but not processed yet are bounded on the reading side: the reader returns at
most ``batch_records`` per round, and aiokafka keeps at most one fetched chunk per partition
(``min(4 MiB, max_fetch_bytes)``, from responses of at most ``max_fetch_bytes``), fetching a
partition again only once its chunk is taken; a paused partition is not fetched at all.

>>> flow = InFlight(FlowLimits(max_in_flight_records=4, max_in_flight_bytes=1_000))
>>> loop = asyncio.new_event_loop()
>>> ack = loop.create_future()
>>> flow.sent(ack, records=4, size=100)
>>> flow.records, flow.bytes, flow.full, flow.hold()
(4, 100, True, True)
>>> ack.set_result(None); loop.run_until_complete(asyncio.sleep(0))
>>> flow.records, flow.full, flow.hold(), flow.pauses
(0, False, False, 1)
>>> loop.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eddies.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "FlowLimits", "InFlight"]


@dataclass(frozen=True)
class FlowLimits:
    """Bounds of one worker's memory for records between the broker and the job.

    ``max_in_flight_records`` / ``max_in_flight_bytes``: produced records not acknowledged yet
    (``eddies worker --max-in-flight-records/--max-in-flight-bytes``); reaching either pauses
    fetching until acks bring both to half. ``max_fetch_bytes``: the largest fetch response
    the reader asks for (``--max-fetch-bytes``); per partition at most 4 MiB of it.

    >>> FlowLimits(max_in_flight_records=0)
    Traceback (most recent call last):
    ...
    eddies.errors.ConfigError: max_in_flight_records must be a positive int, got 0; pass a number of records such as 100000 (eddies worker --max-in-flight-records)
    """

    max_in_flight_records: int = 100_000
    max_in_flight_bytes: int = 32 << 20
    max_fetch_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name, example in (("max_in_flight_records", "a number of records such as 100000"),
                              ("max_in_flight_bytes", "a size in bytes such as 33554432"),
                              ("max_fetch_bytes", "a size in bytes such as 67108864")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}; pass "
                                  f"{example} (eddies worker --{name.replace('_', '-')})")

    @property
    def partition_fetch_bytes(self) -> int:
        """The most one partition's part of a fetch response may hold."""
        return min(4 << 20, self.max_fetch_bytes)


DEFAULT_LIMITS = FlowLimits()


class InFlight:
    """Produced records and bytes not acknowledged yet, against :class:`FlowLimits`.

    Runs in the worker's event loop (acks arrive as done callbacks of delivery futures).
    """

    def __init__(self, limits: FlowLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.records = 0
        self.bytes = 0
        self.paused = False
        """Whether fetching is paused (see :meth:`hold`)."""
        self.pauses = 0
        """How many times fetching was paused."""
        self.peak_records = 0
        self.peak_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def full(self) -> bool:
        """Whether a bound is reached."""
        return (self.records >= self.limits.max_in_flight_records
                or self.bytes >= self.limits.max_in_flight_bytes)

    @property
    def drained(self) -> bool:
        """Whether acks brought both counts down to half their bounds (fetching resumes)."""
        return (self.records <= self.limits.max_in_flight_records // 2
                and self.bytes <= self.limits.max_in_flight_bytes // 2)

    def sent(self, delivery: asyncio.Future[Any], records: int, size: int) -> None:
        """Count a batch of ``records`` (``size`` bytes) handed to the producer until
        ``delivery`` is done (acknowledged or failed: a failure reaches the checkpoint that
        awaits it)."""
        self.records += records
        self.bytes += size
        self.peak_records = max(self.peak_records, self.records)
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        delivery.add_done_callback(lambda _: self._acked(records, size))

    def _acked(self, records: int, size: int) -> None:
        self.records -= records
        self.bytes -= size
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def hold(self) -> bool:
        """Whether fetching stops now: a bound is reached, or was and the counts have not
        drained to half yet (halfway, so pauses do not flap with every ack)."""
        if self.paused:
            self.paused = not self.drained
        elif self.full:
            self.paused = True
            self.pauses += 1
        return self.paused

    async def wait_for_room(self) -> None:
        """Return once both counts are below their bounds."""
        await self._until(lambda: not self.full, None)

    async def wait_drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the counts to drain to half; returns whether
        they did."""
        return await self._until(lambda: self.drained, timeout)

    async def _until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not ready():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            if deadline is None:
                await waiter
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                if waiter in self._waiters:  # a long stall must not pile up waiters
                    self._waiters.remove(waiter)
                return ready()
        return True
