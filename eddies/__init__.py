"""eddies: stream processing with keyed state, timers, windows and TTL, in plain Python.

The public API is re-exported here; see the README for a tour.

>>> import eddies as ed
>>> ed.ValueState("count", default=0)
ValueState('count')
"""

from __future__ import annotations

from eddies import errors, testing
from eddies.errors import EddiesError
from eddies.operators import sinks, sources
from eddies.operators.functions import (
    Context,
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
)
from eddies.operators.windows import Count, Session, Sliding, Sum, Tumbling, Window
from eddies.runtime.executor import RunResult
from eddies.runtime.graph import Job, KeyedStream, Stream, WindowedStream
from eddies.runtime.local import run_local
from eddies.runtime.watermarks import BoundedOutOfOrderness
from eddies.state import (
    BroadcastState,
    Entry,
    InMemoryStateBackend,
    ListState,
    MapState,
    ReducingState,
    RocksDbStateBackend,
    Ttl,
    TtlConfig,
    TtlStateBackend,
    ValueState,
)

__version__ = "0.1.0"

__all__ = [
    "BoundedOutOfOrderness",
    "BroadcastState",
    "Context",
    "Count",
    "EddiesError",
    "Entry",
    "InMemoryStateBackend",
    "Job",
    "KeyedBroadcastProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "KeyedStream",
    "ListState",
    "MapState",
    "OutputTag",
    "ReducingState",
    "RocksDbStateBackend",
    "RunResult",
    "Session",
    "Sliding",
    "Stream",
    "Sum",
    "Ttl",
    "TtlConfig",
    "TtlStateBackend",
    "Tumbling",
    "ValueState",
    "Window",
    "WindowedStream",
    "errors",
    "run_local",
    "sinks",
    "sources",
    "testing",
]
