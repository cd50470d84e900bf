"""The executor builds every node through one table of builders (``runtime/builders.py``);
a driver adds kinds of its own (the Kafka worker's ``repartition``)."""

from __future__ import annotations

from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.builders import BUILDERS, Push
from eddies.runtime.executor import Executor
from eddies.runtime.graph import KEYED_KINDS, Node
from eddies.state import open_backend


def _job() -> tuple[ed.Job, ed.sinks.CollectSink]:
    job = ed.Job("b")
    out = ed.sinks.collect()
    stream = job.source(ed.sources.iterable([1, 2, 3]))
    twice = job.add_node("twice", [stream.node])
    ed.Stream(job, twice).map(lambda v: v + 1).sink(out)
    return job, out


def test_every_kind_the_graph_makes_has_a_builder() -> None:
    kinds = {"source", "map", "filter", "flat_map", "key_by", "union", "side_output", "sink",
             *KEYED_KINDS}
    assert kinds <= set(BUILDERS)


def test_a_driver_registers_a_kind_of_its_own() -> None:
    job, out = _job()
    built: list[str] = []

    def build_twice(ex: Executor, n: Node, port: int, emit: Push) -> Push:
        built.append(n.name)

        def push(value: Any, ts: Any) -> None:
            emit(value, ts)
            emit(value * 10, ts)

        return push

    ex = Executor(job, open_backend("memory"), builders={"twice": build_twice})
    ex.open_operators()
    ex.push_records(job.nodes[0], [1, 2])
    ex.flush_sinks()
    assert built == ["twice-1"]
    assert out.items == [2, 11, 3, 21]


def test_a_kind_without_a_builder_names_the_known_ones() -> None:
    job, _ = _job()
    with pytest.raises(ConfigError, match="no builder for node kind 'twice'; known: .*map"):
        Executor(job, open_backend("memory"))
