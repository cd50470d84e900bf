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


def test_a_restore_from_compacted_topics_gives_the_owners_state(tmp_path):
    """A broker compacts every topic created compacted (the last record per key of each
    partition): restoring key group 1 from what is left, by the restore rule (deltas whose
    token a marker names), gives the state its owner holds."""
    import sys
    from pathlib import Path

    from eddies.operators.kafka import KafkaSink
    from eddies.runtime.kafka.changelog import (
        MARKER_KEY,
        Marker,
        MarkerLog,
        apply_deltas,
        changelog_partitions,
        encode_marker,
        token_header,
    )
    from eddies.runtime.kafka.plan import plan_job
    from eddies.runtime.kafka.topics import topic_config
    from eddies.runtime.kafka.worker import _WorkerExecutor
    from eddies.state.backend import Batch
    from eddies.state.rocksdb import RocksDbStateBackend

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from examples.kafka_totals import build

    plan = plan_job(build("in", "out", "cjob", "account"))
    topics = plan.changelog_topics()
    src = next(n for n in plan.job.nodes if n.kind == "source")
    owner_db = RocksDbStateBackend(str(tmp_path / "owner"))
    owner = _WorkerExecutor(plan.job, owner_db, dead_sink=KafkaSink("d", None, "json", "__dl__"))
    owner.open_operators()
    owner.pin_key_group(1)
    logs: dict[str, list] = {t: [] for t in [*topics.values(), plan.checkpoint_topic]}
    for seq in range(1, 6):  # five checkpoints: a0 each time, a1..a5 once each
        events = [{"account": account, "amount": seq * 10 + i, "ts": seq * 1000}
                  for i, account in enumerate(["a0", f"a{seq}", "a0"])]
        owner.push_records(src, events, None, 0)
        owner.advance_time({src: [(seq * 1000, False)]}, 0)
        batch = Batch()
        owner.checkpoint_ops(batch)
        owner_db.write(batch)
        token = 100 + seq
        for topic, parts in changelog_partitions(batch, topics, set(plan.broadcast_cfs),
                                                 token).items():
            logs[topic].extend(parts.get(1, []))
        logs[plan.checkpoint_topic].append(
            (MARKER_KEY, encode_marker(Marker(token, seq * 4, seq * 1000, seq)),
             [token_header(token)]))

    def compacted(topic: str, records: list) -> list:
        if topic_config(topic).get("cleanup.policy") != "compact":
            return records
        last = {key: i for i, (key, _, _) in enumerate(records)}
        return [r for i, r in enumerate(records) if last[r[0]] == i]

    assert len(compacted("cjob-totals-changelog", logs["cjob-totals-changelog"])) < len(
        logs["cjob-totals-changelog"])  # the broker would drop records
    markers = MarkerLog()
    for _, value, _ in compacted(plan.checkpoint_topic, logs[plan.checkpoint_topic]):
        markers.add(value)
    restored = RocksDbStateBackend(str(tmp_path / "restored"))
    batch = Batch()
    for cf, topic in topics.items():
        apply_deltas(compacted(topic, logs[topic]), cf, markers.committed, batch)
    restored.write(batch)
    for cf in topics:
        assert list(restored.iterate(cf, b"\x00\x01", b"\x00\x02")) == list(
            owner_db.iterate(cf, b"\x00\x01", b"\x00\x02")), cf
    assert len(list(restored.iterate("totals", b"\x00\x01", b"\x00\x02"))) == 6  # a0..a5
    owner_db.close()
    restored.close()
