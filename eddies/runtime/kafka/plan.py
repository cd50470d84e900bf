"""Plan a job for Kafka: which topics it reads, where it must repartition, what it creates.

The worker runs a transformed copy of the job graph:

- A ``key_by`` fed straight (through filters only) by Kafka sources that are partitioned by
  that same field keeps the input partitions as key groups.
- Any other ``key_by`` is split: records are produced to ``<job>-<key_by>-repartition``
  (partition = crc32 of the encoded key modulo the partition count, with their source
  partition and offset in headers for deduplication), and a source reading that topic feeds
  the ``key_by`` instead. Event time goes through too: each upstream partition's watermark
  is produced to every partition of the repartition topic (a control record after the
  records it covers), and a repartition partition's watermark is the minimum of its
  upstream partitions' (idle ones left out), not a bound on the timestamps it sees, which
  mix upstream partitions that progress at different rates.
- Sources that only feed the broadcast side of a connected stream are read whole by every
  worker, outside the consumer group.

Keyed state lives on the job's "stateful" topics, the group topics that feed keyed
operators: partition ``p`` of every one of them is key group ``p``, and the changelog and
checkpoint topics have the same partition count. With several (a join of two Kafka sources,
or two keyed operators on two topics) they must be co-partitioned, the same partition count
(the worker checks it at startup), and faust's assignor then gives partition ``p`` of all of
them to one worker: it assigns the topics of one partition count that the same workers read
as one copartitioned group. A checkpoint of partition ``p`` covers every stateful topic's
partition ``p``.

The two inputs of a keyed operator (``connect(...).process``, joins) must place a key in the
same partition. Two topics both partitioned by the key field do (Kafka's default partitioner
on the key); a repartition topic places keys by crc32 of the encoded key instead, so when
either input of such an operator needs a repartition, both are repartitioned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eddies.errors import ConfigError
from eddies.operators.kafka import KafkaSink, KafkaSource
from eddies.runtime.graph import KEYED_KINDS, Job, Node
from eddies.runtime.kafka.topics import changelog_topic, checkpoint_topic, repartition_topic
from eddies.runtime.timers import timers_cf
from eddies.state.descriptors import declared_states
from eddies.state.ttl import EXPIRY_CF, EXPIRY_PROC_CF

__all__ = ["Plan", "plan_job"]

_PASS_THROUGH = {"filter"}


@dataclass
class Plan:
    job: Job
    """The transformed job the worker executes."""
    group_topics: list[str]
    """Topics read through the consumer group (partitions split across workers)."""
    broadcast_topics: list[str]
    """Topics every worker reads whole."""
    stateful_topics: list[str]
    """The co-partitioned group topics whose partitions are the key groups of keyed state."""
    repartitions: dict[str, str] = field(default_factory=dict)
    """Repartition node name -> topic."""
    source_of_topic: dict[str, Node] = field(default_factory=dict)
    changelog_cfs: list[str] = field(default_factory=list)
    """Column families whose deltas are changelogged."""
    broadcast_cfs: list[str] = field(default_factory=list)
    sink_topics: list[str] = field(default_factory=list)
    feeds: dict[str, list[str]] = field(default_factory=dict)
    """Repartition topic -> the topics whose records (and watermarks) go into it."""

    @property
    def stateful_topic(self) -> str | None:
        """The first stateful topic, None if the job keeps no keyed state."""
        return self.stateful_topics[0] if self.stateful_topics else None

    def changelog_topics(self) -> dict[str, str]:
        """cf -> changelog topic."""
        return {cf: changelog_topic(self.job.name, cf) for cf in self.changelog_cfs}

    @property
    def checkpoint_topic(self) -> str:
        return checkpoint_topic(self.job.name)


def _copy(job: Job) -> tuple[Job, dict[Node, Node]]:
    new = Job(job.name)
    mapping: dict[Node, Node] = {}
    for n in job.nodes:
        mapping[n] = Node(n.kind, n.name, [mapping[p] for p in n.inputs], dict(n.params))
    new.nodes = [mapping[n] for n in job.nodes]
    return new, mapping


def _upstream_sources(node: Node) -> tuple[list[Node], bool]:
    """Sources feeding ``node`` and whether every path from them is filters only."""
    sources: list[Node] = []
    direct = True
    stack = list(node.inputs)
    while stack:
        n = stack.pop()
        if n.kind == "source":
            sources.append(n)
        else:
            if n.kind not in _PASS_THROUGH:
                direct = False
            stack.extend(n.inputs)
    return sources, direct


def plan_job(job: Job) -> Plan:
    """The Kafka plan of ``job`` (raises ConfigError for jobs a worker cannot run)."""
    new, _ = _copy(job)
    nodes = new.nodes
    for n in nodes:
        if n.kind == "source" and not isinstance(n.params["source"], KafkaSource):
            raise ConfigError(
                f"source {n.name!r} is {n.params['source']!r}: `eddies worker` reads Kafka "
                "topics only; use ed.sources.kafka(topic) (files run with `eddies run`)"
            )
    children: dict[Node, list[tuple[Node, int]]] = {n: [] for n in nodes}
    for n in nodes:
        for i, p in enumerate(n.inputs):
            children[p].append((n, i))

    def broadcast_only(n: Node) -> bool:
        outs = children[n]
        if not outs:
            return False
        for c, port in outs:
            if c.kind == "broadcast_process":
                if port != 1:
                    return False
            elif not broadcast_only(c):
                return False
        return True

    def partitioned_by_key(n: Node) -> bool:
        sources, direct = _upstream_sources(n)
        field_name = n.params.get("field")
        return bool(direct and field_name is not None and sources
                    and all(s.params["source"].key == field_name for s in sources))

    kept = {n for n in nodes if n.kind == "key_by" and partitioned_by_key(n)}
    for n in nodes:  # the inputs of a two-input keyed operator: one partitioner for both
        keyed_inputs = [p for p in n.inputs if p.kind == "key_by"]
        if n.kind in KEYED_KINDS and len(keyed_inputs) > 1 and not kept.issuperset(keyed_inputs):
            kept.difference_update(keyed_inputs)

    ordered: list[Node] = []
    repartitions: dict[str, str] = {}
    feeds: dict[str, list[str]] = {}
    for n in nodes:
        if n.kind == "key_by":
            sources, _ = _upstream_sources(n)
            field_name = n.params.get("field")
            if n not in kept:
                topic = repartition_topic(job.name, n.name)
                first = sources[0] if sources else None
                sink = Node("repartition", f"{n.name}.repartition", list(n.inputs),
                            {"key": n.params["key"], "topic": topic})
                src = Node("source", f"{n.name}.repartitioned", [], {
                    "source": KafkaSource(topic, field_name, "json", f"{n.name}.repartitioned"),
                    "timestamp": first.params["timestamp"] if first else None,
                    "watermarks": first.params["watermarks"] if first else None,
                    "repartition": True,
                })
                n.inputs = [src]
                repartitions[sink.name] = topic
                feeds[topic] = sorted({s.params["source"].topic for s in sources})
                ordered.extend([sink, src])
        ordered.append(n)
    new.nodes = ordered
    children = {n: [] for n in ordered}
    for n in ordered:
        for i, p in enumerate(n.inputs):
            children[p].append((n, i))

    group_topics: list[str] = []
    broadcast_topics: list[str] = []
    source_of_topic: dict[str, Node] = {}
    for n in ordered:
        if n.kind != "source":
            continue
        topic = n.params["source"].topic
        if topic in source_of_topic:
            raise ConfigError(f"topic {topic!r} is read by two sources; read it once and reuse "
                              "the stream")
        source_of_topic[topic] = n
        (broadcast_topics if broadcast_only(n) else group_topics).append(topic)

    stateful: list[str] = []
    changelog_cfs: list[str] = []
    broadcast_cfs: list[str] = []
    for n in ordered:
        if n.kind not in KEYED_KINDS:
            continue
        sources, _ = _upstream_sources(n)
        for s in sources:
            topic = s.params["source"].topic
            if topic not in broadcast_topics and topic not in stateful:
                stateful.append(topic)
        for desc in declared_states(n.params["fn"]).values():
            (broadcast_cfs if desc.kind == "broadcast" else changelog_cfs).append(desc.name)
        changelog_cfs.extend([timers_cf(n.name), f"{EXPIRY_CF}.{n.name}",
                              f"{EXPIRY_PROC_CF}.{n.name}"])
    sink_topics = [n.params["sink"].topic for n in ordered
                   if n.kind == "sink" and isinstance(n.params["sink"], KafkaSink)]
    return Plan(new, group_topics, broadcast_topics, sorted(stateful), repartitions,
                source_of_topic, changelog_cfs, broadcast_cfs, sink_topics, feeds)


def describe(plan: Plan) -> dict[str, Any]:
    """A summary for logs."""
    return {"group_topics": plan.group_topics, "broadcast_topics": plan.broadcast_topics,
            "stateful_topics": plan.stateful_topics, "repartitions": plan.repartitions,
            "changelog_topics": sorted(plan.changelog_topics().values())}
