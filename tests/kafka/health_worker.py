"""``eddies worker`` held at two gates, for the /healthz and consumer lag test.

``python tests/kafka/health_worker.py RESTORE_GATE ROUND_GATE worker ARGS...`` runs the worker
command with rounds of 500 records, and its data task held until a gate file exists: before
restoring its assigned partitions (a slow restore: /healthz must say 503) until RESTORE_GATE,
and, once it has processed events, before each further round (a backlog stays unprocessed:
the lag gauge must be above 0) until ROUND_GATE.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from eddies.runtime.cli import main
from eddies.runtime.kafka.worker import KafkaWorker


async def _wait_for(gate: Path) -> None:
    while not gate.exists():
        await asyncio.sleep(0.05)


def hold_rounds(restore_gate: Path, round_gate: Path) -> None:
    """Make every KafkaWorker of this process wait at the two gates (see the module)."""
    init, round_ = KafkaWorker.__init__, KafkaWorker._round

    def __init__(self: KafkaWorker, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        init(self, *args, **{**kwargs, "batch_records": 500})

    async def _round(self: KafkaWorker) -> None:
        if self.owned - self.ready:  # the next round restores them
            await _wait_for(restore_gate)
        elif self.executor.stats.events_in:
            await _wait_for(round_gate)
        await round_(self)

    KafkaWorker.__init__ = __init__  # type: ignore[method-assign]
    KafkaWorker._round = _round  # type: ignore[method-assign]


if __name__ == "__main__":
    hold_rounds(Path(sys.argv.pop(1)), Path(sys.argv.pop(1)))
    main()
