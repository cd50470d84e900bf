"""The checkpoint topic is never compacted: all its markers share a key, and a broker that
compacts it would keep one marker per partition, leaving every older committed delta to be
ignored by a restore. State changelogs are compacted."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from eddies.runtime.kafka.topics import checkpoint_topic, create_topics


async def _configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {name: {entry[0]: entry[1] for entry in entries}
            for response in responses
            for _, _, _, name, entries in response.resources}


@pytest.mark.kafka
def test_the_checkpoint_topic_is_kept_whole_and_changelogs_are_compacted(kafka_broker):
    cp, cl = checkpoint_topic("cfgjob"), "cfgjob-totals-changelog"

    async def main() -> dict[str, dict[str, str]]:
        await create_topics(kafka_broker, {cp: 2, cl: 2, "cfgjob-op-repartition": 2})
        return await _configs(kafka_broker, [cp, cl])

    configs = asyncio.run(main())
    assert configs[cp]["cleanup.policy"] == "delete"
    assert configs[cp]["retention.ms"] == "-1"
    assert configs[cl]["cleanup.policy"] == "compact"
