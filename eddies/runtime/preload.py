"""Startup's bulk preload: everything the operators need before their first event, in one
round trip after the checkpoint metadata.

A restart reads the ``__meta__`` column family (positions, watermarks, sink lengths: one
range read), then issues these reads together (one thread each, see
:meth:`~eddies.state.rocksdb.RocksDbStateBackend.read_together`), which count as one round
trip:

- each operator's timers, one range scan (the nearest ``cache_entries`` per domain stay in
  memory), followed in the same thread by its event-time hook's index (a window operator's
  windows, read after the window marks the timers scan loads: one more round trip);
- each broadcast state's table;
- an emptiness probe of each keyed state (one step of a range read), so that a key of a
  fresh state costs no read;
- the values of the first keys in one multi-get per ValueState and ReducingState: the keys
  of the first records the local runner read from each source (a Kafka worker: the first
  batch it fetched from the partitions it restored, see :func:`load_key_groups`), for the
  operators a ``key_by`` feeds straight from that source.

The probes and first values are kept by the backend until it is asked or written to.
Everything else is read lazily, as events need it: other keys' values, MapState and
ListState entries, and the keys of operators behind a map, a filter or another operator.
Backends without ``read_together`` (the memory backend) make the same reads one by one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from eddies.runtime.keyed import KeyedOperator
from eddies.state.handles import Handle, ValueHandle
from eddies.state.keys import state_key

__all__ = ["first_keys", "group_prefixes", "load_key_groups", "preload_operators"]


def preload_operators(
    operators: Iterable[KeyedOperator], first: Mapping[KeyedOperator, list[Any]] | None = None
) -> dict[str, float]:
    """Load the timers, hook indexes and broadcast tables of ``operators`` and read ahead
    what the keys in ``first`` (user keys by operator) need, all reads issued together;
    returns each operator's preload time (its longest read), by operator name."""
    reads: list[tuple[str, Callable[[], Any]]] = []
    together: Callable[[list[Callable[[], Any]]], list[Any]] | None = None
    ops = list(operators)
    for op in ops:
        inner = op.backend.inner
        together = getattr(inner, "read_together", None)
        # The hook's loaders run after the timers, in the same thread: a window operator's
        # reads the window marks the timers scan loads (a chain of two reads).
        mine: list[Callable[[], Any]] = [partial(op.timers.load, inner)]
        read_ahead = getattr(inner, "read_ahead", None)
        probe_empty = getattr(inner, "probe_empty", None)
        prefixes = _prefixes(op, (first or {}).get(op, ()))
        for handle in op.handles.values():
            preload = getattr(handle, "preload", None)
            if preload is not None:
                mine.append(preload)
            elif probe_empty is not None and isinstance(handle, Handle):
                mine.append(partial(probe_empty, handle.name))
                if prefixes and read_ahead is not None and isinstance(handle, ValueHandle):
                    mine.append(partial(read_ahead, handle.name, prefixes))
        reads.extend((op.name, read) for read in mine)
    seconds = [0.0] * len(reads)
    timed: list[Callable[[], Any]] = [partial(_timed, read, seconds, i)
                                      for i, (_, read) in enumerate(reads)]
    if together is None:
        for read in timed:
            read()
    else:
        together(timed)
    out = dict.fromkeys((op.name for op in ops), 0.0)
    for (name, _), took in zip(reads, seconds, strict=True):
        out[name] = max(out[name], took)
    return out


def _timed(read: Callable[[], Any], seconds: list[float], i: int) -> Any:
    started = time.perf_counter()
    try:
        return read()
    finally:
        seconds[i] = time.perf_counter() - started


def _prefixes(op: KeyedOperator, keys: Iterable[Any]) -> list[bytes]:
    """The distinct stored-key prefixes of ``keys`` (those the codec cannot store are left
    to the push, which sends their records to dead letters)."""
    out: dict[bytes, None] = {}
    store = op.store
    for key in keys:
        try:
            out[store.prefix(state_key(key))] = None
        except Exception:  # noqa: BLE001 - the push reports a bad key with its record
            continue
    return list(out)


def first_keys(
    operators: Mapping[Any, KeyedOperator], records: Mapping[Any, list[Any]]
) -> dict[KeyedOperator, list[Any]]:
    """The keys of ``records`` (first records by source node) for each operator whose keyed
    input is a ``key_by`` straight on that source. A record the key function fails on is
    skipped: the push rejects it or stops the job as it would have."""
    out: dict[KeyedOperator, list[Any]] = {}
    for node, op in operators.items():
        for port, parent in enumerate(node.inputs):
            if node.kind == "broadcast_process" and port == 1:
                continue
            if parent.kind != "key_by" or parent.inputs[0] not in records:
                continue
            key_fn = parent.params["key"]
            keys = out.setdefault(op, [])
            for record in records[parent.inputs[0]]:
                try:
                    keys.append(key_fn(record))
                except Exception:  # noqa: BLE001, S112 - see the docstring
                    continue
    return out


def group_prefixes(
    operators: Mapping[Any, KeyedOperator], records: Mapping[int, Mapping[Any, list[Any]]]
) -> dict[KeyedOperator, list[bytes]]:
    """The stored-key prefixes of the keys of ``records`` (by key group, then source node:
    a Kafka worker's first records of each partition) for each operator whose keyed input is
    a ``key_by`` straight on that source, each key under the group its records came in."""
    out: dict[KeyedOperator, dict[bytes, None]] = {}
    for group, by_node in records.items():
        for op, keys in first_keys(operators, by_node).items():
            store = op.store
            before = store.key_group
            store.key_group = group
            try:
                out.setdefault(op, {}).update(dict.fromkeys(_prefixes(op, keys)))
            finally:
                store.key_group = before
    return {op: list(prefixes) for op, prefixes in out.items()}


def load_key_groups(operators: Iterable[KeyedOperator], groups: list[int],
                    first: Mapping[KeyedOperator, list[bytes]] | None = None) -> None:
    """Load every operator's timers of key ``groups`` (a Kafka worker's partitions: one range
    scan per group, an operator's in sequence since they fill the same heaps), probe each
    keyed state for emptiness and read ahead the values of the stored-key prefixes in
    ``first`` (by operator, see :func:`group_prefixes`: one multi-get per ValueState and
    ReducingState); the operators' reads, the probes and the multi-gets are issued
    together."""
    reads: list[Callable[[], Any]] = []
    together: Callable[[list[Callable[[], Any]]], list[Any]] | None = None
    for op in operators:
        inner = op.backend.inner
        together = getattr(inner, "read_together", None)
        reads.append(partial(_load_groups, op, inner, groups))
        probe_empty = getattr(inner, "probe_empty", None)
        read_ahead = getattr(inner, "read_ahead", None)
        prefixes = (first or {}).get(op)
        if probe_empty is None:
            continue
        for handle in op.handles.values():
            if isinstance(handle, Handle) and not hasattr(handle, "preload"):
                reads.append(partial(probe_empty, handle.name))
                if prefixes and read_ahead is not None and isinstance(handle, ValueHandle):
                    reads.append(partial(read_ahead, handle.name, prefixes))
    if together is None:
        for read in reads:
            read()
    else:
        together(reads)


def _load_groups(op: KeyedOperator, backend: Any, groups: list[int]) -> None:
    for g in groups:
        op.timers.load(backend, g.to_bytes(2, "big"), (g + 1).to_bytes(2, "big"))
