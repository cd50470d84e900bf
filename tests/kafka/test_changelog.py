"""The changelog protocol and the Kafka plan, without a broker."""

from __future__ import annotations

import msgpack
import pytest

import eddies as ed
from eddies.errors import ConfigError, StateCorruptionError
from eddies.runtime.kafka.changelog import (
    Marker,
    MarkerLog,
    apply_deltas,
    changelog_records,
    decode_marker,
    encode_marker,
    key_group_of,
    split_by_partition,
    token_header,
)
from eddies.runtime.kafka.plan import plan_job
from eddies.state.backend import Batch
from eddies.state.keys import encode_key


def test_marker_golden_bytes():
    data = encode_marker(Marker(token=7, offset=100, watermark=5, seq=1, dedup={"t:0": 9}))
    assert data.hex(" ") == (
        "86 a5 74 6f 6b 65 6e 07 a6 6f 66 66 73 65 74 64 a9 77 61 74 65 72 6d 61 72 6b 05 "
        "a3 73 65 71 01 a5 64 65 64 75 70 81 a3 74 3a 30 09 "
        "aa 6b 65 79 5f 6c 61 79 6f 75 74 02"  # "key_layout": 2
    )
    assert decode_marker(data) == Marker(7, 100, 5, 1, {"t:0": 9})
    assert token_header(0x0102030405060708) == ("eddies.cp", bytes.fromhex("0102030405060708"))


def test_only_marked_checkpoints_are_replayed():
    log = MarkerLog()
    log.add(encode_marker(Marker(1, 10, 0, 1)))
    log.add(encode_marker(Marker(3, 30, 0, 3)))
    records = [
        (b"\x00\x01k1", b"v1", [token_header(1)]),
        (b"\x00\x01k2", b"v2", [token_header(2)]),  # its marker never came: a crash
        (b"\x00\x01k1", None, [token_header(3)]),  # a delete in a marked checkpoint
        (b"\x00\x01a", b"\x00\x01z", [token_header(3), ("eddies.op", b"delete_range")]),
        (b"\x00\x01k3", b"v3", None),  # no token at all: not ours
    ]
    batch = Batch()
    applied, ignored = apply_deltas(records, "s", log.committed, batch)
    assert (applied, ignored) == (3, 2)
    assert batch.ops == [(0, "s", b"\x00\x01k1", b"v1"), (1, "s", b"\x00\x01k1", None),
                         (2, "s", b"\x00\x01a", b"\x00\x01z")]
    assert log.last == Marker(3, 30, 0, 3)


def test_deltas_are_routed_to_their_key_group():
    stored = b"\x00\x05" + b"\x05\x02k\x00\x00"
    index_key = (123).to_bytes(8, "big") + encode_key("totals") + stored
    assert key_group_of("totals", stored) == 5
    assert key_group_of("__expiry__.Op", index_key) == 5
    assert key_group_of("__timers__.Op", b"\x00\x07e" + b"\x00" * 8) == 7
    assert key_group_of("__meta__", b"anything") is None
    batch = Batch()
    batch.put("totals", stored, b"v")
    batch.put("__expiry__.Op", index_key, b"")
    batch.put("__meta__", b"m", b"v")
    batch.put("rules", b"\x00\x00\x05\x00x", b"v")
    deltas = split_by_partition(batch, skip={"rules"})
    assert [(d.cf, d.partition) for d in deltas] == [("totals", 5), ("__expiry__.Op", 5)]


def test_changelog_records_are_the_deltas_with_their_token_per_topic():
    stored = [b"\x00\x05\x05\x02k\x00\x00", b"\x00\x02\x05\x02j\x00\x00"]
    index_key = (123).to_bytes(8, "big") + encode_key("totals") + stored[0]
    batch = Batch()
    batch.put_many("totals", stored, [b"v1", b"v2"])
    batch.delete_many("totals", [stored[1]])
    batch.put("totals", b"\x00\x03x", b"v3")
    batch.delete("__timers__.Op", b"\x00\x04t")
    batch.delete_range("totals", b"\x00\x01", b"\x00\x02")
    batch.put("__expiry__.Op", index_key, b"")
    batch.put("__meta__", b"m", b"v")
    batch.put("rules", b"\x00\x00\x05\x00x", b"v")  # a broadcast state: not changelogged
    topics = {"totals": "t-totals", "__timers__.Op": "t-timers", "__expiry__.Op": "t-expiry"}
    out = changelog_records(batch, topics, {"rules"}, 7)
    plain = [token_header(7)]
    ranged = [token_header(7), ("eddies.op", b"delete_range")]
    assert out == {
        "t-totals": [(stored[0], b"v1", None, plain, 5), (stored[1], b"v2", None, plain, 2),
                     (stored[1], None, None, plain, 2), (b"\x00\x03x", b"v3", None, plain, 3),
                     (b"\x00\x01", b"\x00\x02", None, ranged, 1)],
        "t-timers": [(b"\x00\x04t", None, None, plain, 4)],
        "t-expiry": [(index_key, b"", None, plain, 5)],
    }
    # The same deltas as split_by_partition finds.
    flat = [(k, v, p) for items in out.values() for k, v, _, _, p in items]
    assert sorted(flat, key=repr) == sorted(
        ((d.key, d.value, d.partition) for d in split_by_partition(batch, {"rules"})), key=repr)


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)


def test_plan_keeps_partitions_when_the_topic_is_keyed_by_the_field():
    job = ed.Job("j")
    (job.source(ed.sources.kafka("in", key="user")).filter(lambda e: True)
        .key_by("user").process(Count()).sink(ed.sinks.kafka("out")))
    plan = plan_job(job)
    assert plan.repartitions == {}
    assert plan.stateful_topic == "in"
    assert plan.group_topics == ["in"]
    assert sorted(plan.changelog_topics().values()) == [
        "j-__expiry__.Count-changelog", "j-__expiry_proc__.Count-changelog",
        "j-__timers__.Count-changelog", "j-n-changelog"]
    assert plan.checkpoint_topic == "j-__checkpoint__-changelog"


@pytest.mark.parametrize("source_key, between", [("card", None), ("user", "map"), (None, None)])
def test_plan_repartitions_otherwise(source_key, between):
    job = ed.Job("j")
    stream = job.source(ed.sources.kafka("in", key=source_key))
    if between == "map":
        stream = stream.map(lambda e: e)
    stream.key_by("user").process(Count()).sink(ed.sinks.kafka("out"))
    plan = plan_job(job)
    assert list(plan.repartitions.values()) == ["j-key_by-2-repartition"
                                                if between else "j-key_by-1-repartition"]
    topic = next(iter(plan.repartitions.values()))
    assert plan.stateful_topic == topic
    assert set(plan.group_topics) == {"in", topic}
    assert "in" not in plan.changelog_topics().values()


def test_plan_reads_broadcast_sources_outside_the_group_and_refuses_files():
    class Rules(ed.KeyedBroadcastProcessFunction):
        rules = ed.BroadcastState("rules")

        def on_broadcast(self, event, ctx):
            self.rules.put(event["k"], event["v"])

        def on_event(self, event, ctx):
            yield event

    job = ed.Job("j")
    rules = job.source(ed.sources.kafka("rules"))
    (job.source(ed.sources.kafka("in", key="user")).key_by("user")
        .connect(rules.broadcast()).process(Rules()).sink(ed.sinks.kafka("out")))
    plan = plan_job(job)
    assert plan.broadcast_topics == ["rules"]
    assert plan.group_topics == ["in"]
    assert plan.broadcast_cfs == ["rules"]
    files = ed.Job("f")
    files.source(ed.sources.jsonl("x.jsonl")).sink(ed.sinks.collect())
    with pytest.raises(ConfigError, match="Kafka topics only"):
        plan_job(files)


def test_marker_values_are_plain_msgpack():
    assert msgpack.unpackb(encode_marker(Marker(1, 2, 3, 4))) == {
        "token": 1, "offset": 2, "watermark": 3, "seq": 4, "dedup": {}, "key_layout": 2}


@pytest.mark.parametrize(("layout", "says"), [(None, "has no key layout"),
                                               (1, "says key layout 1"),
                                               (3, "says key layout 3")])
def test_a_marker_of_another_key_layout_stops_the_restore(layout, says):
    """Deltas of another key layout would be misread: restore stops with what to do."""
    fields = {"token": 5, "offset": 2, "watermark": 3, "seq": 4, "dedup": {}}
    if layout is not None:
        fields["key_layout"] = layout
    log = MarkerLog("topic 'j-__checkpoint__-changelog' partition 3")
    log.add(encode_marker(Marker(1, 1, 0, 1)))
    with pytest.raises(StateCorruptionError) as err:
        log.add(msgpack.packb(fields))
    message = str(err.value)
    assert message.startswith("topic 'j-__checkpoint__-changelog' partition 3: checkpoint "
                              "marker (token 5) " + says)
    assert "layout 2" in message and "delete the job's changelog topics" in message
    assert log.committed == {1}, "nothing of the refused marker is taken"
