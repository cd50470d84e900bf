"""The dataflow API: a Job holds sources, and streams chain operators down to sinks.

Building a job only records a graph of nodes; ``run_local`` (or a Kafka worker) runs it.

>>> import eddies as ed
>>> job = ed.Job("demo")
>>> out = ed.sinks.collect()
>>> (job.source(ed.sources.iterable([{"k": "a", "v": 1}, {"k": "a", "v": 2}]))
...     .filter(lambda e: e["v"] > 1).map(lambda e: e["v"]).sink(out))
>>> ed.run_local(job).collected(out)
[2]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from eddies.errors import ConfigError
from eddies.operators.functions import (
    KeyedBroadcastProcessFunction,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
)
from eddies.operators.joins import asof_join_function, interval_join_function
from eddies.operators.sinks import Sink
from eddies.operators.sources import Source
from eddies.operators.windows import (
    Window,
    WindowAssigner,
    collector,
    reducer,
    window_function,
)
from eddies.runtime.watermarks import BoundedOutOfOrderness

__all__ = [
    "BroadcastStream",
    "ConnectedKeyedStreams",
    "ConnectedStreams",
    "KEYED_KINDS",
    "Job",
    "KeyedStream",
    "Node",
    "Stream",
    "WindowedStream",
]


KEYED_KINDS = ("process", "broadcast_process", "co_process")
"""Node kinds run by a KeyedOperator (keyed state, timers, a watermark of their own)."""


@dataclass(eq=False)
class Node:
    """One operator of the graph."""

    kind: str
    name: str
    inputs: list[Node] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r}>"


def _field_getter(spec: str | Callable[[Any], Any], what: str) -> Callable[[Any], Any]:
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec:
        name = spec

        def get(record: Any) -> Any:
            return record[name]

        get.__name__ = f"field {name!r}"
        get.field = name  # type: ignore[attr-defined]
        return get
    raise ConfigError(f"{what} must be a field name or a callable, got {spec!r}")


class Job:
    """A named dataflow: sources, operators and sinks.

    The name scopes checkpoints and (under Kafka) topic and group names, so keep it stable.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigError(f"Job needs a name without spaces, e.g. Job('fraud'), got {name!r}")
        self.name = name
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._counter = itertools.count(1)
        self.generated_names: set[str] = set()
        """Names eddies generated (:meth:`auto_name`): they shift as operators are added
        or removed, so a savepoint refuses to restore state into them."""

    def add_node(self, kind: str, inputs: list[Node], name: str | None = None,
                 **params: Any) -> Node:
        """Add a node of ``kind`` (a key of ``eddies.runtime.builders.BUILDERS``) reading
        ``inputs``; the stream methods call it. ``name`` defaults to ``kind-N``."""
        if name is None:
            name = self.auto_name(kind)
        elif name in self._names:
            raise ConfigError(f"job {self.name!r} has two operators named {name!r}; names "
                              "must be unique (they name checkpointed state)")
        self._names.add(name)
        node = Node(kind, name, inputs, params)
        self.nodes.append(node)
        return node

    def auto_name(self, prefix: str) -> str:
        """``prefix-N``, N counting the job's unnamed operators in graph order (so the same
        job code gives the same, checkpointed, names)."""
        name = f"{prefix}-{next(self._counter)}"
        self.generated_names.add(name)
        return name

    def derived_name(self, base: str) -> str:
        """A unique node name from a source's or sink's own name: two ``sinks.collect()`` or
        two ``data.jsonl`` files in different dirs get ``collect`` and ``collect-2``. Derived
        in graph order, so the same job code gives the same (checkpointed) names."""
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}-{n}"
        return name

    def source(
        self,
        source: Source,
        *,
        timestamp: str | Callable[[Any], int] | None = None,
        watermarks: BoundedOutOfOrderness | None = None,
        name: str | None = None,
    ) -> Stream:
        """Add an input. ``timestamp`` is a field name or a function giving event time in ms.

        ``watermarks`` defaults to ``BoundedOutOfOrderness(0)`` when a timestamp is given.
        """
        if not isinstance(source, Source):
            raise ConfigError(f"job.source takes an eddies source (ed.sources.jsonl(...)), "
                              f"got {source!r}")
        ts = None if timestamp is None else _field_getter(timestamp, "timestamp")
        if watermarks is None and ts is not None:
            watermarks = BoundedOutOfOrderness(0)
        node = self.add_node("source", [], name or self.derived_name(source.name),
                             source=source, timestamp=ts, watermarks=watermarks)
        return Stream(self, node)

    def sinks(self) -> list[Sink]:
        return [n.params["sink"] for n in self.nodes if n.kind == "sink"]

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {len(self.nodes)} operators)"


class Stream:
    """A stream of records with event timestamps."""

    def __init__(self, job: Job, node: Node) -> None:
        self.job = job
        self.node = node

    def add_operator(self, kind: str, name: str | None = None, **params: Any) -> Stream:
        """The stream out of a new node of ``kind`` reading this stream (see
        :meth:`Job.add_node`)."""
        return Stream(self.job, self.job.add_node(kind, [self.node], name, **params))

    def map(self, fn: Callable[[Any], Any], *, name: str | None = None) -> Stream:
        """Apply ``fn`` to each record."""
        return self.add_operator("map", name, fn=_callable(fn, "map"))

    def filter(self, fn: Callable[[Any], bool], *, name: str | None = None) -> Stream:
        """Keep records for which ``fn`` is true."""
        return self.add_operator("filter", name, fn=_callable(fn, "filter"))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]], *, name: str | None = None) -> Stream:
        """Replace each record with the records ``fn`` returns (or yields)."""
        return self.add_operator("flat_map", name, fn=_callable(fn, "flat_map"))

    def key_by(self, key: str | Callable[[Any], Any], *, name: str | None = None) -> KeyedStream:
        """Partition by a field name or a key function; keyed state is scoped to this key.

        A record without the key field goes to dead letters.
        """
        node = self.job.add_node("key_by", [self.node], name, key=_field_getter(key, "key_by"),
                                 field=key if isinstance(key, str) else None)
        return KeyedStream(self.job, node)

    def union(self, *others: Stream) -> Stream:
        """Merge streams; the watermark is the minimum of theirs."""
        for other in others:
            if other.job is not self.job:
                raise ConfigError("union: all streams must belong to the same Job")
        return Stream(self.job,
                      self.job.add_node("union", [self.node] + [o.node for o in others]))

    def broadcast(self) -> BroadcastStream:
        """Send every record to every parallel instance (for ``keyed.connect(...)``)."""
        return BroadcastStream(self.job, self.node)

    def side_output(self, tag: OutputTag) -> Stream:
        """The records a process function sent to ``tag`` with ``ctx.output``."""
        if not isinstance(tag, OutputTag):
            raise ConfigError(f"side_output takes an eddies.OutputTag, got {tag!r}")
        if self.node.kind not in KEYED_KINDS:
            raise ConfigError("side_output is available on the result of process()/window()")
        return self.add_operator("side_output", None, tag=tag)

    def sink(self, sink: Sink, *, name: str | None = None) -> None:
        """Write the stream to ``sink``."""
        if not isinstance(sink, Sink):
            raise ConfigError(f"sink takes an eddies sink (ed.sinks.jsonl(...)), got {sink!r}")
        self.job.add_node("sink", [self.node], name or self.job.derived_name(sink.name),
                          sink=sink)


class KeyedStream(Stream):
    """A stream partitioned by key; ``process`` gets keyed state and timers."""

    def process(self, fn: KeyedProcessFunction, *, name: str | None = None) -> Stream:
        """Run a :class:`KeyedProcessFunction` on each record, with state scoped to its key."""
        if isinstance(fn, type):
            raise ConfigError(f"process takes an instance: process({fn.__name__}())")
        if not isinstance(fn, KeyedProcessFunction):
            raise ConfigError(f"process takes an eddies.KeyedProcessFunction, got {fn!r}")
        return self.add_operator("process", name or type(fn).__name__, fn=fn)

    def window(
        self,
        assigner: WindowAssigner,
        *,
        allowed_lateness: int = 0,
        late: OutputTag | None = None,
    ) -> WindowedStream:
        """Group each key's events into event-time windows (``ed.Tumbling``, ``ed.Sliding``,
        ``ed.Session``); finish with ``.reduce``, ``.aggregate`` or ``.process``.

        Events later than ``allowed_lateness`` go to the ``late`` side output (read it with
        ``result.side_output(late)``), or are dropped and counted.
        """
        if not isinstance(assigner, WindowAssigner):
            raise ConfigError(f"window takes ed.Tumbling/ed.Sliding/ed.Session, got {assigner!r}")
        if late is not None and not isinstance(late, OutputTag):
            raise ConfigError(f"late must be an eddies.OutputTag, got {late!r}")
        return WindowedStream(self, assigner, allowed_lateness, late)

    def connect(self, other: BroadcastStream | KeyedStream) -> Any:
        """Pair with a broadcast stream for a :class:`KeyedBroadcastProcessFunction`, or
        with another keyed stream (keyed by the same key) for a
        :class:`KeyedCoProcessFunction`.

        >>> import eddies as ed
        >>> class Latest(ed.KeyedCoProcessFunction):
        ...     price = ed.ValueState("price")
        ...     def on_event1(self, order, ctx):
        ...         yield {"id": order["id"], "price": self.price.get()}
        ...     def on_event2(self, quote, ctx):
        ...         self.price.set(quote["price"])
        >>> job = ed.Job("orders"); out = ed.sinks.collect()
        >>> quotes = job.source(ed.sources.iterable([{"sym": "X", "price": 7, "ts": 1}]),
        ...                     timestamp="ts").key_by("sym")
        >>> orders = job.source(ed.sources.iterable([{"sym": "X", "id": 1, "ts": 2}]),
        ...                     timestamp="ts").key_by("sym")
        >>> quotes.connect(orders)  # doctest: +ELLIPSIS
        <eddies.runtime.graph.ConnectedKeyedStreams object at ...>
        >>> orders.connect(quotes).process(Latest()).sink(out)
        >>> ed.run_local(job).collected(out)
        [{'id': 1, 'price': 7}]
        """
        if isinstance(other, BroadcastStream):
            return ConnectedStreams(self, other)
        if isinstance(other, KeyedStream):
            if other.job is not self.job:
                raise ConfigError("connect: both streams must belong to the same Job")
            return ConnectedKeyedStreams(self, other)
        raise ConfigError("connect takes other_stream.broadcast() or another keyed stream "
                          f"(other_stream.key_by(...)), got {other!r}")

    def interval_join(self, other: KeyedStream, *, lower: int, upper: int,
                      fn: Callable[[Any, Any], Any] | None = None,
                      late: OutputTag | None = None, name: str | None = None) -> Stream:
        """Join with ``other`` (keyed by the same key): every pair with
        ``left.ts + lower <= right.ts <= left.ts + upper`` (ms, both inclusive) once, as
        ``fn(left, right)`` or ``{"key", "left", "right"}``, at ``max(left.ts, right.ts)``.
        Late events go to ``late`` or are dropped and counted (see ``eddies.operators.joins``).

        >>> import eddies as ed
        >>> job = ed.Job("ads"); out = ed.sinks.collect()
        >>> imps = job.source(ed.sources.iterable([{"ad": "a", "ts": 100}]), timestamp="ts")
        >>> clicks = job.source(ed.sources.iterable([{"ad": "a", "ts": 130}]), timestamp="ts")
        >>> imps.key_by("ad").interval_join(clicks.key_by("ad"), lower=0, upper=60_000,
        ...     fn=lambda i, c: c["ts"] - i["ts"]).sink(out)
        >>> ed.run_local(job).collected(out)
        [30]
        """
        name = name or self.job.auto_name("interval-join")
        return self.connect(other).process(
            interval_join_function(name, lower, upper, fn, late), name=name)

    def join_asof(self, other: KeyedStream, *, how: str = "inner",
                  fn: Callable[[Any, Any], Any] | None = None,
                  late: OutputTag | None = None, name: str | None = None) -> Stream:
        """Join each event with the latest event of ``other`` (same key) at or before its
        timestamp, once the watermark reaches it; ``how="left"`` keeps events with no match
        (``right`` None). Output as for :meth:`interval_join`.

        >>> import eddies as ed
        >>> job = ed.Job("enrich"); out = ed.sinks.collect()
        >>> orders = job.source(ed.sources.iterable([{"c": 1, "ts": 50}]), timestamp="ts")
        >>> tiers = job.source(ed.sources.iterable([{"c": 1, "tier": "gold", "ts": 10},
        ...                                         {"c": 1, "tier": "vip", "ts": 60}]),
        ...                    timestamp="ts")
        >>> orders.key_by("c").join_asof(tiers.key_by("c"),
        ...     fn=lambda o, t: t["tier"]).sink(out)
        >>> ed.run_local(job).collected(out)
        ['gold']
        """
        name = name or self.job.auto_name("asof-join")
        return self.connect(other).process(asof_join_function(name, how, fn, late), name=name)


class WindowedStream:
    """A keyed stream grouped into windows; pick how each window's result is computed."""

    def __init__(self, keyed: KeyedStream, assigner: WindowAssigner, allowed_lateness: int,
                 late: OutputTag | None) -> None:
        self.keyed = keyed
        self.assigner = assigner
        self.allowed_lateness = allowed_lateness
        self.late = late

    def _build(self, agg: Any, name: str | None) -> Stream:
        job = self.keyed.job
        name = name or job.auto_name(f"{type(self.assigner).__name__.lower()}-window")
        fn = window_function(name, self.assigner, agg, self.allowed_lateness, self.late)
        return self.keyed.add_operator("process", name, fn=fn, window=True)

    def reduce(self, fn: Callable[[Any, Any], Any], *, name: str | None = None) -> Stream:
        """Fold each window's events with ``fn(a, b)``; the value is the folded event."""
        return self._build(reducer(_callable(fn, "reduce")), name)

    def aggregate(self, agg: Any, *, name: str | None = None) -> Stream:
        """Aggregate with ``agg.create()``, ``agg.add(acc, v)``, ``agg.merge(a, b)`` (sessions)
        and ``agg.result(acc)``; ``ed.Count()`` and ``ed.Sum(field)`` are ready-made."""
        for method in ("create", "add", "result"):
            if not callable(getattr(agg, method, None)):
                raise ConfigError(f"aggregate: {agg!r} has no {method}() method")
        if self.assigner.merging and not callable(getattr(agg, "merge", None)):
            raise ConfigError(f"aggregate: session windows need {agg!r}.merge(a, b)")
        return self._build(agg, name)

    def process(self, fn: Callable[[Any, Window, list[Any]], Any], *,
                name: str | None = None) -> Stream:
        """Compute each window's value as ``fn(key, window, elements)`` (all its events)."""
        return self._build(collector(_callable(fn, "process")), name)


class BroadcastStream:
    """A stream every parallel instance receives whole."""

    def __init__(self, job: Job, node: Node) -> None:
        self.job = job
        self.node = node


class ConnectedStreams:
    """A keyed stream connected with a broadcast stream."""

    def __init__(self, keyed: KeyedStream, broadcast: BroadcastStream) -> None:
        self.keyed = keyed
        self.broadcast = broadcast

    def process(self, fn: KeyedBroadcastProcessFunction, *, name: str | None = None) -> Stream:
        """Run ``fn``: ``on_event`` for keyed records, ``on_broadcast`` for broadcast ones."""
        if not isinstance(fn, KeyedBroadcastProcessFunction):
            raise ConfigError(
                f"connect(...).process takes an eddies.KeyedBroadcastProcessFunction, got {fn!r}"
            )
        job = self.keyed.job
        node = job.add_node("broadcast_process", [self.keyed.node, self.broadcast.node],
                         name or type(fn).__name__, fn=fn)
        return Stream(job, node)


class ConnectedKeyedStreams:
    """Two keyed streams connected on the same key, for a :class:`KeyedCoProcessFunction`."""

    def __init__(self, first: KeyedStream, second: KeyedStream) -> None:
        self.first = first
        self.second = second

    def process(self, fn: KeyedCoProcessFunction, *, name: str | None = None) -> Stream:
        """Run ``fn``: ``on_event1`` for the first stream's records, ``on_event2`` for the
        second's, with state and timers shared per key."""
        if isinstance(fn, type):
            raise ConfigError(f"process takes an instance: process({fn.__name__}())")
        if not isinstance(fn, KeyedCoProcessFunction):
            raise ConfigError(
                "connect(keyed).process takes an eddies.KeyedCoProcessFunction (on_event1, "
                f"on_event2), got {fn!r}"
            )
        job = self.first.job
        node = job.add_node("co_process", [self.first.node, self.second.node],
                         name or type(fn).__name__, fn=fn)
        return Stream(job, node)


def _callable(fn: Any, what: str) -> Callable[..., Any]:
    if not callable(fn):
        raise ConfigError(f"{what} takes a function, got {fn!r}")
    return fn
