"""The changelog protocol: checkpoint deltas, markers, and restore without broker transactions.

Every checkpoint has a random 64-bit token. Its state deltas go to one changelog topic per
column family, into the partition equal to the entry's key group (= input partition); after
every delta is acknowledged, one marker goes to the checkpoint topic. A checkpoint counts only
if its marker exists: restore reads the markers first, then replays deltas whose token was
marked and ignores the rest (a crash between deltas and marker leaves unmarked deltas).
Putting the marker in its own topic makes one record commit a checkpoint that spans several
state topics::

    delta   topic <job>-<state>-changelog, partition = key group
            key     stored key (bytes, as in the column family)
            value   stored value ([8 B LE expires_at][msgpack]), or null for a delete
            headers eddies.cp = token (8 B BE)
                    eddies.op = b"delete_range" for a range delete (key = lower, value = upper)

    marker  topic <job>-__checkpoint__-changelog, partition = input partition
            key     b"checkpoint"
            value   msgpack {"token": int, "offset": next input offset,
                             "watermark": int, "seq": int,
                             "dedup": {upstream "topic:partition": highest offset seen},
                             "key_layout": the stored-key layout of the deltas (2),
                             "identity": the job's identity (eddies.runtime.identity),
                             "upstream": {upstream "topic:partition": [watermark, idle]},
                             "inputs": {topic: {"offset", "watermark", "dedup",
                                                "upstream"}}}
            headers eddies.cp = token

The checkpoint topic is created with ``cleanup.policy=delete`` and ``retention.ms=-1``, never
compacted (``topics.topic_config``): every marker has the same key, so compaction would keep
one marker per partition, and a restore would ignore every older committed delta. Markers
are small (one per partition per checkpoint), but a restore from the changelog reads them
all, so its cost grows with the job's age. A limit of the token rule on a broker that
compacts the state changelogs: a crash between a checkpoint's deltas and its marker can leave
an unmarked delta as a key's last record, and once its segment is closed, compaction removes
the committed record before it (the key then restores as absent unless the job wrote it
again after the restart). Without broker transactions (whose aborted records the log cleaner
drops) closing that gap needs deltas that compaction cannot see before their marker, e.g. a
changelog the job compacts itself from snapshots.

A job whose keyed state sits behind several co-partitioned input topics (a join of two
Kafka sources) checkpoints partition ``p`` of all of them together: one marker per partition
whose ``inputs`` hold every topic's next offset, partition watermark and dedup table
(``offset``, ``watermark``, ``dedup`` and ``upstream`` repeat the first topic's). A job with
one such topic writes no ``inputs``. ``upstream`` (written when not empty) is for a
repartition topic: the watermark each upstream partition last reported into it.

The stored keys in deltas are in the key layout of ``eddies.state.keys``; every marker says
which (``key_layout``), and restore refuses a changelog whose markers have none (written before
layout 2) or another: replaying it would misread its keys, never fail loudly.

Group offsets are committed only after the marker, so they never run ahead of state; restore
seeks the input to the marker's offset, which may be ahead of the group's commit.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import groupby, islice, repeat
from operator import itemgetter
from typing import Any

import msgpack

from eddies.errors import StateCorruptionError
from eddies.state.backend import DELETE, DELETE_MANY, DELETE_RANGE, PUT, PUT_MANY, Batch
from eddies.state.keys import KEY_LAYOUT_VERSION, decode_element

__all__ = [
    "Delta",
    "append_records",
    "InputPosition",
    "Marker",
    "MarkerLog",
    "apply_deltas",
    "changelog_partitions",
    "changelog_records",
    "decode_marker",
    "encode_marker",
    "key_group_of",
    "new_token",
    "split_by_partition",
]

TOKEN_HEADER = "eddies.cp"
OP_HEADER = "eddies.op"
RANGE = b"delete_range"
MARKER_KEY = b"checkpoint"
_token = struct.Struct(">Q")
_GROUP = itemgetter(slice(0, 2))  # a stored key's key group, as its first two bytes


def new_token() -> int:
    """A random checkpoint token (never 0)."""
    return secrets.randbits(64) or 1


@dataclass(frozen=True)
class InputPosition:
    """Where one input topic's partition stands at a checkpoint."""

    offset: int
    """The next offset to read."""
    watermark: int
    """The partition's watermark."""
    dedup: dict[str, int] = field(default_factory=dict)
    """For a repartition topic: the highest upstream offset seen per upstream partition."""
    upstream: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """For a repartition topic: the watermark (and idleness) each upstream partition last
    reported."""


@dataclass(frozen=True)
class Marker:
    """A committed checkpoint of one partition."""

    token: int
    offset: int
    watermark: int
    seq: int
    dedup: dict[str, int] = field(default_factory=dict)
    """For a repartition topic: the highest upstream offset seen per upstream partition."""
    key_layout: int = KEY_LAYOUT_VERSION
    """The stored-key layout (``eddies.state.keys.KEY_LAYOUT_VERSION``) of the deltas."""
    identity: dict[str, Any] | None = None
    """The job that wrote the checkpoint: name, keyed operators and states, sources
    (``eddies.runtime.identity.job_identity``); absent from markers written before."""
    upstream: dict[str, tuple[int, bool]] = field(default_factory=dict)
    """For a repartition topic: the watermark (and idleness) each upstream partition last
    reported."""
    inputs: dict[str, InputPosition] | None = None
    """Every input topic's position in this partition, for a job whose keyed state sits
    behind several topics; None for one topic (``offset``, ``watermark``, ``dedup``)."""

    def position(self, topic: str) -> InputPosition | None:
        """Where ``topic``'s partition stands; a marker without ``inputs`` covers one topic,
        so ``topic`` must be that one (None: the marker does not cover ``topic``).

        >>> m = Marker(1, 10, 5, 1, inputs={"a": InputPosition(10, 5), "b": InputPosition(7, 3)})
        >>> m.position("b"), m.position("c")
        (InputPosition(offset=7, watermark=3, dedup={}, upstream={}), None)
        >>> Marker(1, 10, 5, 1).position("a")
        InputPosition(offset=10, watermark=5, dedup={}, upstream={})
        """
        if self.inputs is None:
            return InputPosition(self.offset, self.watermark, self.dedup, self.upstream)
        return self.inputs.get(topic)


def encode_marker(marker: Marker) -> bytes:
    """
    >>> decode_marker(encode_marker(Marker(7, 100, 5, 1)))
    Marker(token=7, offset=100, watermark=5, seq=1, dedup={}, key_layout=2, identity=None, upstream={}, inputs=None)
    >>> two = {"a": InputPosition(100, 5), "b": InputPosition(40, 2)}
    >>> two["a"] = InputPosition(100, 5, {"up:0": 9}, {"up:0": (4, False), "up:1": (3, True)})
    >>> decode_marker(encode_marker(Marker(7, 100, 5, 1, inputs=two))).inputs == two
    True
    """
    fields = {"token": marker.token, "offset": marker.offset, "watermark": marker.watermark,
              "seq": marker.seq, "dedup": marker.dedup, "key_layout": marker.key_layout}
    if marker.identity is not None:
        fields["identity"] = marker.identity
    if marker.upstream:
        fields["upstream"] = marker.upstream
    if marker.inputs is not None:
        fields["inputs"] = {t: {"offset": i.offset, "watermark": i.watermark, "dedup": i.dedup,
                                "upstream": i.upstream}
                            for t, i in marker.inputs.items()}
    return msgpack.packb(fields)


def decode_marker(data: bytes, where: str = "a checkpoint topic") -> Marker:
    """The marker in ``data``; raises StateCorruptionError (naming ``where``) unless its deltas
    are in this eddies' key layout."""
    d = msgpack.unpackb(data, raw=False)
    layout = d.get("key_layout")
    if layout != KEY_LAYOUT_VERSION:
        written = ("has no key layout: it was written by an eddies older than key layout 2"
                   if layout is None else f"says key layout {layout!r}")
        raise StateCorruptionError(
            f"{where}: checkpoint marker (token {d.get('token')}) {written}, "
            f"and this eddies stores keys in layout {KEY_LAYOUT_VERSION}, so restoring it "
            "would misread the stored keys. Rebuild the state: delete the job's changelog "
            "topics (<job>-*-changelog, the checkpoint topic included) and the workers' "
            "state dirs, then reprocess the input from the start, or run the eddies version "
            "that wrote them."
        )
    inputs = d.get("inputs")
    return Marker(d["token"], d["offset"], d["watermark"], d["seq"], d.get("dedup") or {},
                  layout, d.get("identity"), _upstream(d.get("upstream")),
                  None if inputs is None else {
                      t: InputPosition(i["offset"], i["watermark"], i.get("dedup") or {},
                                       _upstream(i.get("upstream")))
                      for t, i in inputs.items()})


def _upstream(data: dict[str, Any] | None) -> dict[str, tuple[int, bool]]:
    return {src: (int(v[0]), bool(v[1])) for src, v in (data or {}).items()}


def token_header(token: int) -> tuple[str, bytes]:
    return (TOKEN_HEADER, _token.pack(token))


def read_token(headers: Iterable[tuple[str, bytes]] | None) -> tuple[int | None, bool]:
    """(token, is_range_delete) from a record's headers."""
    token = None
    is_range = False
    for name, value in headers or ():
        if name == TOKEN_HEADER:
            token = _token.unpack(value)[0]
        elif name == OP_HEADER and value == RANGE:
            is_range = True
    return token, is_range


def key_group_of(cf: str, key: bytes) -> int | None:
    """The key group an entry of ``cf`` belongs to, or None if it is not partitioned.

    Entries lead with their key group, except the expiry index, which leads with the
    expiry time and the state name and then holds the entry's stored key.
    """
    if cf.startswith("__meta__"):
        return None
    if cf.startswith("__expiry"):
        _, end = decode_element(key, 8)
        return int.from_bytes(key[end : end + 2], "big")
    return int.from_bytes(key[:2], "big")


@dataclass
class Delta:
    cf: str
    partition: int
    key: bytes
    value: bytes | None
    is_range: bool = False


def split_by_partition(batch: Batch, skip: set[str]) -> list[Delta]:
    """The changelog deltas of ``batch``, each with its partition; cfs in ``skip`` left out."""
    out: list[Delta] = []
    for kind, cf, key, value in batch.singles():
        if cf in skip or cf.startswith("__meta__"):
            continue
        group = key_group_of(cf, key)
        if group is None:
            continue
        if kind == PUT:
            out.append(Delta(cf, group, key, value))
        elif kind == DELETE:
            out.append(Delta(cf, group, key, None))
        elif kind == DELETE_RANGE:
            out.append(Delta(cf, group, key, value, is_range=True))
    return out


def changelog_records(
    batch: Batch, topics: Mapping[str, str], skip: set[str], token: int
) -> dict[str, list[tuple[bytes, bytes | None, None, list[tuple[str, bytes]], int]]]:
    """The changelog records of ``batch`` (its deltas, as ``split_by_partition`` finds them),
    per changelog topic (``topics``: cf -> topic): ``(key, value, None, headers, partition)``,
    each headed by ``token``; cfs in ``skip`` and ``__meta__`` left out.

    Runs of puts and deletes (PUT_MANY, DELETE_MANY) go in one pass each: a checkpoint holds
    about one delta per distinct key written since the last one.

    >>> b = Batch(); b.put_many("n", [b"\\x00\\x03k"], [b"v"]); b.delete("n", b"\\x00\\x01j")
    >>> [(k, v, p) for k, v, _, _, p in changelog_records(b, {"n": "t"}, set(), 9)["t"]]
    [(b'\\x00\\x03k', b'v', 3), (b'\\x00\\x01j', None, 1)]
    """
    plain = [token_header(token)]
    ranged = [*plain, (OP_HEADER, RANGE)]
    out: dict[str, list[Any]] = {}
    for kind, cf, key, value in batch.ops:
        if cf in skip or cf.startswith("__meta__"):
            continue
        items = out.setdefault(topics[cf], [])
        if cf.startswith("__expiry"):
            for d in split_by_partition(Batch([(kind, cf, key, value)]), skip):
                items.append((d.key, d.value, None, ranged if d.is_range else plain,
                              d.partition))
        elif kind == PUT_MANY:  # the key group is the stored key's first two bytes
            items.extend([(k, v, None, plain, k[0] << 8 | k[1]) for k, v in zip(key, value, strict=True)])
        elif kind == DELETE_MANY:
            items.extend([(k, None, None, plain, k[0] << 8 | k[1]) for k in key])
        elif kind == PUT:
            items.append((key, value, None, plain, key[0] << 8 | key[1]))
        elif kind == DELETE:
            items.append((key, None, None, plain, key[0] << 8 | key[1]))
        elif kind == DELETE_RANGE:
            items.append((key, value, None, ranged, key[0] << 8 | key[1]))
    return out


Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
"""A changelog record: ``(key, value, headers)``."""


def changelog_partitions(
    batch: Batch, topics: Mapping[str, str], skip: set[str], token: int
) -> dict[str, dict[int, list[Record]]]:
    """The records of :func:`changelog_records`, per changelog topic and partition, each
    ``(key, value, headers)``, in the order ``changelog_records`` gives them within each
    partition (the order a restore replays them in).

    A checkpoint's puts come in runs of one key group (the worker pushes a partition's
    records together), so the partition is looked up once per run, not once per record.

    >>> b = Batch(); b.put_many("n", [b"\\x00\\x03k", b"\\x00\\x01j", b"\\x00\\x03i"], [b"1", b"2", b"3"])
    >>> parts = changelog_partitions(b, {"n": "t"}, set(), 9)["t"]
    >>> {p: [(k, v) for k, v, _ in records] for p, records in parts.items()}
    {3: [(b'\\x00\\x03k', b'1'), (b'\\x00\\x03i', b'3')], 1: [(b'\\x00\\x01j', b'2')]}
    """
    plain = [token_header(token)]
    ranged = [*plain, (OP_HEADER, RANGE)]
    out: dict[str, dict[int, list[Record]]] = {}
    for kind, cf, key, value in batch.ops:
        if cf in skip or cf.startswith("__meta__"):
            continue
        parts = out.setdefault(topics[cf], {})
        if cf.startswith("__expiry"):
            for d in split_by_partition(Batch([(kind, cf, key, value)]), skip):
                parts.setdefault(d.partition, []).append(
                    (d.key, d.value, ranged if d.is_range else plain))
        elif kind in (PUT_MANY, DELETE_MANY):  # the key group: the first two bytes
            if kind == PUT_MANY and len(value) != len(key):
                raise ValueError(f"PUT_MANY on {cf!r}: {len(key)} keys, {len(value)} values")
            values = value if kind == PUT_MANY else repeat(None)
            records = list(zip(key, values, repeat(plain)))
            start = 0
            # Runs of one key group, found by C-level passes (no Python step per record).
            for prefix, run in groupby(map(_GROUP, key)):
                end = start + len(list(run))
                parts.setdefault(int.from_bytes(prefix, "big"), []).extend(records[start:end])
                start = end
        elif kind in (PUT, DELETE):
            parts.setdefault(key[0] << 8 | key[1], []).append(
                (key, value if kind == PUT else None, plain))
        elif kind == DELETE_RANGE:
            parts.setdefault(key[0] << 8 | key[1], []).append((key, value, ranged))
    return out


def append_records(batch: Any, records: list[Record], start: int = 0) -> int:
    """Append ``records[start:]`` to ``batch`` (an aiokafka ``BatchBuilder``, from the
    producer's ``create_batch``) until it is full; returns the index of the first record
    left out (``len(records)``: every one went in). A full batch is closed.

    The records go straight to the batch's record builder (C): ``BatchBuilder.append``
    adds a keyword call, serializer hooks and bookkeeping per record, which a checkpoint
    of many deltas pays for each. A batch that has serializers, or an aiokafka without
    that builder, takes the plain ``append``.
    """
    builder = getattr(batch, "_builder", None)
    if (builder is None or not isinstance(getattr(batch, "_relative_offset", None), int)
            or getattr(batch, "_key_serializer", None) is not None
            or getattr(batch, "_value_serializer", None) is not None or batch.closed()):
        for i in range(start, len(records)):
            key, value, headers = records[i]
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                return i
        return len(records)
    append = builder.append
    first = offset = batch._relative_offset  # noqa: SLF001
    full = False
    for key, value, headers in islice(records, start, None):
        if append(offset, None, key, value, headers) is None:
            full = True
            break
        offset += 1
    batch._relative_offset = offset  # noqa: SLF001 (what record_count() reports)
    if full:
        batch.close()
    return start + offset - first


class MarkerLog:
    """The markers of one partition, read in order: which tokens are committed, and the last.

    ``where`` names the checkpoint topic and partition in errors.
    """

    def __init__(self, where: str = "a checkpoint topic") -> None:
        self.committed: set[int] = set()
        self.last: Marker | None = None
        self.where = where

    def add(self, value: bytes) -> None:
        marker = decode_marker(value, self.where)
        self.committed.add(marker.token)
        self.last = marker


def apply_deltas(
    records: Iterable[tuple[bytes | None, bytes | None, Any]],
    cf: str,
    committed: set[int],
    batch: Batch,
) -> tuple[int, int]:
    """Add the committed deltas among ``records`` (key, value, headers) to ``batch``.

    Returns (applied, ignored); deltas whose token has no marker are ignored.
    """
    applied = ignored = 0
    for key, value, headers in records:
        token, is_range = read_token(headers)
        if token is None or token not in committed or key is None:
            ignored += 1
            continue
        applied += 1
        if is_range:
            batch.delete_range(cf, key, value or b"")
        elif value is None:
            batch.delete(cf, key)
        else:
            batch.put(cf, key, value)
    return applied, ignored
