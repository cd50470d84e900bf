"""What users write and compose: process functions, their context, sources and sinks."""

from __future__ import annotations

from eddies.operators import sinks, sources
from eddies.operators.functions import (
    Context,
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    TimerService,
)

__all__ = [
    "Context",
    "KeyedBroadcastProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "OutputTag",
    "TimerService",
    "sinks",
    "sources",
]
