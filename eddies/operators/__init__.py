"""What users write and compose: process functions, their context and output tags."""

from __future__ import annotations

from eddies.operators.functions import (
    Context,
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    TimerService,
)

__all__ = [
    "Context",
    "KeyedBroadcastProcessFunction",
    "KeyedProcessFunction",
    "OutputTag",
    "TimerService",
]
