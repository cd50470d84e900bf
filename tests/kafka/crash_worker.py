"""``eddies worker`` that crashes between a checkpoint's deltas and its markers.

``python tests/kafka/crash_worker.py N worker ARGS...`` runs the worker command with
``KafkaWorker.after_deltas`` replaced: once checkpoint ``N``'s changelog deltas are
acknowledged, the process exits with code 17 before writing that checkpoint's markers, as a
worker killed at the worst moment would.
"""

from __future__ import annotations

import os
import sys

from eddies.runtime.cli import main
from eddies.runtime.kafka.worker import KafkaWorker

CRASH_EXIT = 17


def crash_after_deltas(seq: int) -> None:
    """Make every KafkaWorker of this process exit right after checkpoint ``seq``'s deltas."""

    def after_deltas(self: KafkaWorker, current: int) -> None:
        if current == seq:
            os._exit(CRASH_EXIT)

    KafkaWorker.after_deltas = after_deltas  # type: ignore[method-assign]


if __name__ == "__main__":
    crash_after_deltas(int(sys.argv.pop(1)))
    main()
