"""``eddies worker`` whose output topic is throttled, then stalled: a fault injected at the
producer boundary.

``python tests/kafka/stall_worker.py TOPIC CONTROL_DIR worker ARGS...`` runs the worker
command with its producer replaced by :class:`StallingProducer`: batches for ``TOPIC`` queue
in order; the first ``THROTTLED`` go to the broker ``THROTTLE_S`` apart (a slow topic), the
next ones only once ``CONTROL_DIR/release`` exists (a stalled topic), then all of them, in
order. Their acks come only then. ``CONTROL_DIR/held.json`` says how many records and bytes
the producer holds unacknowledged now and at most, whether the stall began, and the process's
RSS (from /proc) when it began and at most while it lasts, sampled every 0.1 s.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

import eddies.runtime.kafka.worker as worker_module
from eddies.runtime.cli import main

THROTTLED = 2
THROTTLE_S = 0.02


def _rss() -> int:
    """This process's resident set size, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class StallingProducer(AIOKafkaProducer):
    topic = ""
    control = Path()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        if topic != self.topic:
            return await super().send_batch(batch, topic, partition=partition)
        if not hasattr(self, "_queue"):
            self._queue: collections.deque[Any] = collections.deque()
            self._wake = asyncio.Event()
            self._held = [0, 0]
            self._peak = [0, 0]
            self._released = 0
            self._rss = [0, 0]  # when the stall began, and at most while it lasts
            self._task = asyncio.ensure_future(self._release())
            self._reporter = asyncio.ensure_future(self._report_every(0.1))
        delivered = asyncio.get_running_loop().create_future()
        n, size = batch.record_count(), batch.size()
        self._queue.append((batch, partition, delivered, n, size))
        self._held[0] += n
        self._held[1] += size
        self._peak = [max(a, b) for a, b in zip(self._peak, self._held, strict=True)]
        self._wake.set()
        return delivered

    def _stalled(self) -> bool:
        return self._released >= THROTTLED and not (self.control / "release").exists()

    async def _report_every(self, seconds: float) -> None:
        while True:
            if self._stalled():
                rss = _rss()
                self._rss = [self._rss[0] or rss, max(self._rss[1], rss)]
            tmp = self.control / "held.json.tmp"
            tmp.write_text(json.dumps({
                "records": self._held[0], "bytes": self._held[1], "peak_records": self._peak[0],
                "peak_bytes": self._peak[1], "stalled": self._stalled(),
                "released": self._released, "queued": len(self._queue),
                "stall_rss": self._rss[0], "peak_stalled_rss": self._rss[1],
                "releasing": repr(self._task)[:300]}))
            tmp.replace(self.control / "held.json")
            await asyncio.sleep(seconds)

    async def _release(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._stalled():
                if not self._rss[0]:
                    self._rss = [_rss()] * 2
                await asyncio.sleep(0.05)
                continue
            if self._released < THROTTLED:
                await asyncio.sleep(THROTTLE_S)
            batch, partition, delivered, n, size = self._queue.popleft()
            real = await AIOKafkaProducer.send_batch(self, batch, self.topic,
                                                     partition=partition)
            real.add_done_callback(lambda f, d=delivered, n=n, s=size: self._acked(f, d, n, s))
            self._released += 1

    def _acked(self, real: Any, delivered: Any, n: int, size: int) -> None:
        self._held[0] -= n
        self._held[1] -= size
        if real.exception() is not None:
            delivered.set_exception(real.exception())
        else:
            delivered.set_result(real.result())

    async def stop(self) -> None:
        if hasattr(self, "_task"):
            self._task.cancel()
            self._reporter.cancel()
        await super().stop()


if __name__ == "__main__":
    StallingProducer.topic = sys.argv.pop(1)
    StallingProducer.control = Path(sys.argv.pop(1))
    worker_module.AIOKafkaProducer = StallingProducer  # type: ignore[misc]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
