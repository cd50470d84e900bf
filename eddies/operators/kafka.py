"""Kafka connectors: ``ed.sources.kafka(topic)`` and ``ed.sinks.kafka(topic)``.

They describe topics; ``eddies worker`` (``eddies.runtime.kafka``) reads and writes them. This
module imports no Kafka client, so jobs that use them still import without the ``kafka`` extra.

>>> src = kafka_source("payments", key="card")
>>> src.topic, src.key, src.value_format
('payments', 'card', 'json')
"""

from __future__ import annotations

from typing import Any

import orjson

from eddies.errors import ConfigError
from eddies.operators.sinks import Sink, dumps_exact
from eddies.operators.sources import Source, SourceReader, loads_exact

__all__ = ["KafkaSink", "KafkaSource", "kafka_sink", "kafka_source"]

_FORMATS = ("json", "str", "bytes")
_ISOLATION = ("read_uncommitted", "read_committed")


def decode(value_format: str, data: bytes | None) -> Any:
    """A record value in ``value_format``; raises ValueError for malformed input."""
    if data is None:
        raise ValueError("record has no value (a tombstone)")
    if value_format == "json":
        return loads_exact(data)  # ints beyond 64 bits stay exact
    if value_format == "str":
        return data.decode("utf-8")
    return data


def encode(value_format: str, value: Any) -> bytes:
    if value_format == "json":
        return dumps_exact(value, orjson.OPT_NON_STR_KEYS)
    if value_format == "str":
        return str(value).encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise ConfigError(f"value_format 'bytes' needs bytes values, got {type(value).__name__}")


def _check(topic: str, value_format: str, what: str) -> None:
    if not topic or not isinstance(topic, str):
        raise ConfigError(f"{what} needs a topic name")
    if value_format not in _FORMATS:
        raise ConfigError(f"value_format must be one of {_FORMATS}, got {value_format!r}")


class KafkaSource(Source):
    """A Kafka topic as a source. ``key`` names the field the topic is partitioned by: a
    ``key_by`` on that field needs no repartitioning; any other key_by goes through an
    internal repartition topic. ``isolation_level="read_committed"`` reads only records of
    committed transactions (another job's ``exactly_once=True`` output), in order, up to the
    last stable offset."""

    bounded = False

    def __init__(self, topic: str, key: str | None, value_format: str, name: str | None,
                 isolation_level: str = "read_uncommitted") -> None:
        _check(topic, value_format, "sources.kafka")
        if isolation_level not in _ISOLATION:
            raise ConfigError(f"sources.kafka({topic!r}): isolation_level must be one of "
                              f"{_ISOLATION}, got {isolation_level!r}; read another job's "
                              "exactly-once output with isolation_level='read_committed'")
        self.isolation_level = isolation_level
        self.topic = topic
        self.key = key
        self.value_format = value_format
        self.name = name or topic

    def partitions(self) -> list[SourceReader]:
        raise ConfigError(
            f"source {self.name!r} reads Kafka topic {self.topic!r}: run this job with "
            "`eddies worker module:job --broker kafka://HOST:PORT`, not `eddies run`"
        )

    def __repr__(self) -> str:
        committed = (", isolation_level='read_committed'"
                     if self.isolation_level == "read_committed" else "")
        return f"kafka({self.topic!r}, key={self.key!r}{committed})"


class KafkaSink(Sink):
    """A Kafka topic as a sink; records are keyed by ``key`` (a field name or a function).

    By default delivery is at-least-once: outputs made after the last checkpoint are produced
    again after a crash, identically. With ``exactly_once`` the worker writes them in a Kafka
    transaction committed with the checkpoint (``eddies.runtime.kafka.transactions``): a
    ``read_committed`` consumer sees each output once. The worker binds it to its producer.
    """

    def __init__(self, topic: str, key: Any, value_format: str, name: str | None,
                 exactly_once: bool = False) -> None:
        _check(topic, value_format, "sinks.kafka")
        if not isinstance(exactly_once, bool):
            raise ConfigError(f"sinks.kafka({topic!r}): exactly_once must be True or False, "
                              f"got {exactly_once!r}")
        self.exactly_once = exactly_once
        self.topic = topic
        self.key = key
        self.value_format = value_format
        self.name = name or topic
        self.pending: list[tuple[bytes | None, bytes]] = []
        self.bound = False

    def key_of(self, value: Any) -> bytes | None:
        if self.key is None:
            return None
        key = self.key(value) if callable(self.key) else value[self.key]
        return key if isinstance(key, bytes) else str(key).encode("utf-8")

    def open(self, position: Any | None) -> None:
        if not self.bound:
            raise ConfigError(
                f"sink {self.name!r} writes Kafka topic {self.topic!r}: run this job with "
                "`eddies worker module:job --broker kafka://HOST:PORT`"
            )

    def write(self, values: list[Any]) -> None:
        fmt = self.value_format
        key_of = self.key_of
        # All encoded before any is kept: a value that cannot be refuses the whole list.
        self.pending.extend([(key_of(value), encode(fmt, value)) for value in values])

    def __repr__(self) -> str:
        once = ", exactly_once=True" if self.exactly_once else ""
        return f"kafka({self.topic!r}{once})"


def kafka_source(
    topic: str, *, key: str | None = None, value_format: str = "json", name: str | None = None,
    isolation_level: str = "read_uncommitted",
) -> KafkaSource:
    """Read ``topic`` (JSON values by default); ``key`` is the field it is partitioned by.

    ``isolation_level="read_committed"``: only records of committed transactions, as an
    eddies job reading another job's ``sinks.kafka(..., exactly_once=True)`` output needs.

    >>> kafka_source("totals", key="account", isolation_level="read_committed")
    kafka('totals', key='account', isolation_level='read_committed')
    """
    return KafkaSource(topic, key, value_format, name, isolation_level)


def kafka_sink(
    topic: str, *, key: Any = None, value_format: str = "json", name: str | None = None,
    exactly_once: bool = False,
) -> KafkaSink:
    """Write results to ``topic``, keyed by field (or function) ``key``.

    ``exactly_once=True``: records produced for a checkpoint become visible to
    ``read_committed`` consumers only once that checkpoint is committed, through Kafka
    transactions; the worker refuses to start on a broker without them.

    >>> kafka_sink("alerts", key="card", exactly_once=True)
    kafka('alerts', exactly_once=True)
    """
    return KafkaSink(topic, key, value_format, name, exactly_once)
