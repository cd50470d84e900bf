"""One builder per node kind, in one table: each returns the push function of its node.

A push function takes ``(value, ts)``: a record and its event timestamp (None without
event time). The executor builds the graph from its sinks back to its sources, so every
builder gets ``emit``, the pushes of its node's children already fanned out, and returns
what its parents call. ``Executor(..., builders={kind: builder})`` adds or replaces a kind
(the Kafka worker's ``repartition``). Keyed kinds build through
:meth:`~eddies.runtime.keyed.KeyedOperator.compile`, which ``eddies.testing.Harness`` runs
too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eddies.errors import ConfigError
from eddies.operators.functions import OutputTag
from eddies.runtime.graph import Node
from eddies.runtime.keyed import KeyedOperator

if TYPE_CHECKING:
    from eddies.runtime.executor import Executor

__all__ = ["BUILDERS", "Builder", "Push", "fan_out", "key_of"]

Push = Callable[[Any, Any], None]
"""``push(value, ts)``: hand one record down the graph."""
Builder = Callable[["Executor", Node, int, Push], Push]
"""``builder(executor, node, port, emit)``: the push of ``node``'s input ``port``, whose
outputs go to ``emit``."""


def _drop(value: Any, ts: Any) -> None:
    pass


def fan_out(pushes: list[Push]) -> Push:
    """One push that hands each record to every one of ``pushes``."""
    if not pushes:
        return _drop
    if len(pushes) == 1:
        return pushes[0]

    def emit(value: Any, ts: Any) -> None:
        for push in pushes:
            push(value, ts)

    return emit


def key_of(node: Node, port: int = 0) -> Callable[[Any], Any]:
    """The key function of the key_by feeding ``node``'s input ``port``."""
    parent = node.inputs[port]
    if parent.kind != "key_by":
        raise ConfigError(f"{node.name!r}: process needs a keyed stream; call key_by first")
    return parent.params["key"]


def build_map(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    fn = n.params["fn"]
    name = n.name

    def push_map(value: Any, ts: Any) -> None:
        try:
            result = fn(value)
        except Exception as exc:
            raise ex.user_error(name, None, value, ts, exc) from exc
        emit(result, ts)

    return push_map


def build_filter(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    fn = n.params["fn"]
    name = n.name

    def push_filter(value: Any, ts: Any) -> None:
        try:
            keep = fn(value)
        except Exception as exc:
            raise ex.user_error(name, None, value, ts, exc) from exc
        if keep:
            emit(value, ts)

    return push_filter


def build_flat_map(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    fn = n.params["fn"]
    name = n.name

    def push_flat_map(value: Any, ts: Any) -> None:
        try:
            results = list(fn(value))
        except Exception as exc:
            raise ex.user_error(name, None, value, ts, exc) from exc
        for result in results:
            emit(result, ts)

    return push_flat_map


def build_pass(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    """Sources, key_by, union and side outputs hand records on as they are (key_by's key
    function runs in the keyed operator it feeds; a side output's records come from its
    operator's ``ctx.output``)."""
    return emit


def build_sink(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    buffer: list[Any] = []
    ex.sink_nodes.append((n, n.params["sink"], buffer))

    def push_sink(value: Any, ts: Any, append: Any = buffer.append) -> None:
        append(value)

    return push_sink


def build_keyed(ex: Executor, n: Node, port: int, emit: Push) -> Push:
    """process, broadcast_process and co_process (windows and joins are process functions):
    one KeyedOperator per node, whose compiled push serves each keyed input; a
    broadcast_process' input 1 is its broadcast side."""
    op = ex.operators.get(n)
    op_count = ex.counts.setdefault(n.name, [0, 0])
    op_time = ex.on_event_time.setdefault(n.name, [0.0, 0])
    if op is None:
        by_tag: dict[OutputTag, list[Push]] = {}
        for c, _ in ex.children[n]:
            if c.kind == "side_output":  # a tag may be read by several side_output()s
                by_tag.setdefault(c.params["tag"], []).append(ex.pushes_for_side(c))
        routes = {tag: fan_out(pushes) for tag, pushes in by_tag.items()}
        stats = ex.stats

        def side(tag: OutputTag, value: Any) -> None:
            route = routes.get(tag)
            if route is None:
                stats.unrouted_side_outputs += 1
            else:
                route(value, op.ctx.timestamp)  # type: ignore[union-attr]

        op = KeyedOperator(
            n.name, n.params["fn"], ex.backend, max_parallelism=ex.max_parallelism,
            ttl_config=ex.ttl_config, clock=ex.clock, side_output=side,
            cache_entries=ex.cache_entries,
        )
        ex.operators[n] = op
        ex.timer_emit[n] = emit
    if n.kind == "broadcast_process" and port == 1:  # the broadcast side
        return op.compile_broadcast(emit, ex, op_count)
    keyfn = key_of(n, port)
    pushes = op.compile(
        emit, ex, input=port + 1, key_fn=keyfn, counts=op_count, timed=op_time,
        key_where=(f"key_by {n.inputs[port].name!r} (key function "
                   f"{getattr(keyfn, '__name__', 'key')!r}, feeding operator {n.name!r})"))
    ex.batch_pushes[(n, port)] = pushes.batch
    return pushes.event


BUILDERS: dict[str, Builder] = {
    "source": build_pass,
    "map": build_map,
    "filter": build_filter,
    "flat_map": build_flat_map,
    "key_by": build_pass,
    "union": build_pass,
    "side_output": build_pass,
    "process": build_keyed,
    "broadcast_process": build_keyed,
    "co_process": build_keyed,
    "sink": build_sink,
}
"""Node kind -> builder. A kind a job uses and no builder knows is a ConfigError."""
