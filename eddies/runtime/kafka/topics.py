"""Topic names and creation. Every topic eddies uses is created before use, with the
partition count of the job's input, because brokers such as Tansu auto-create unknown topics
with a default partition count that would silently break key-group alignment.
"""

from __future__ import annotations

import re

from eddies.errors import BackendError

__all__ = ["changelog_topic", "checkpoint_topic", "create_topics", "repartition_topic",
           "topic_config", "topic_partitions"]

_SAFE = re.compile(r"[^a-zA-Z0-9._-]")


def _safe(name: str) -> str:
    return _SAFE.sub("_", name)


def changelog_topic(job: str, state: str) -> str:
    """``<job>-<state>-changelog``: the deltas of one state (column family)."""
    return f"{_safe(job)}-{_safe(state)}-changelog"


def checkpoint_topic(job: str) -> str:
    """``<job>-__checkpoint__-changelog``: the markers that commit checkpoints."""
    return changelog_topic(job, "__checkpoint__")


def repartition_topic(job: str, operator: str) -> str:
    """``<job>-<operator>-repartition``: records re-keyed for a key_by."""
    return f"{_safe(job)}-{_safe(operator)}-repartition"


def topic_config(name: str) -> dict[str, str]:
    """The configs ``create_topics`` creates topic ``name`` with.

    State changelogs are compacted (the last delta per stored key). The checkpoint topic is
    not: every marker has the same key, and a restore replays only the deltas whose token a
    marker it reads names, so a compacted checkpoint topic, keeping the last marker per
    partition, would leave every older committed delta ignored. Its markers (one per
    partition per checkpoint, a few hundred bytes) are kept forever instead.

    >>> topic_config("j-__checkpoint__-changelog")
    {'cleanup.policy': 'delete', 'retention.ms': '-1'}
    >>> topic_config("j-totals-changelog"), topic_config("j-op-repartition")
    ({'cleanup.policy': 'compact'}, {})
    """
    if name.endswith("-__checkpoint__-changelog"):
        return {"cleanup.policy": "delete", "retention.ms": "-1"}
    if name.endswith("-changelog"):
        return {"cleanup.policy": "compact"}
    return {}


async def topic_partitions(bootstrap: str, topic: str) -> int | None:
    """Partition count of ``topic``, or None if it does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Metadata for all topics: asking for one by name would auto-create it on brokers
        # that allow that (Tansu does, with 4 partitions).
        described = await admin.describe_topics(None)
    finally:
        await admin.close()
    for item in described:
        if item.get("topic") == topic and item.get("error_code", 0) == 0:
            parts = item.get("partitions") or []
            return len(parts) or None
    return None


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``{topic: partitions}``; existing topics must already have that many."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1,
                      topic_configs=topic_config(name))
             for name, n in topics.items()]
        )
        errors = getattr(response, "topic_errors", None) or []
        for item in errors:
            name, code = item[0], item[1]
            if code not in (0, 36):  # 36: already exists
                raise BackendError(f"cannot create topic {name!r}: error {code} {item[2:]}")
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    for item in described:
        name = item.get("topic")
        have = len(item.get("partitions") or [])
        if name in topics and have != topics[name]:
            raise BackendError(
                f"topic {name!r} has {have} partitions, eddies needs {topics[name]} (the input "
                "topic's count); delete it or use a new job name"
            )
