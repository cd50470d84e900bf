"""Keyed state: the five primitives, structured keys, backends and the TTL layer.

This package imports nothing from the rest of eddies but ``eddies.errors``, so it can be used
on its own: ``KeyedStateStore`` binds declarations to a backend with a write-back cache.
"""

from __future__ import annotations

from pathlib import Path

from eddies.errors import ConfigError
from eddies.state.backend import Batch, StateBackend
from eddies.state.descriptors import (
    BroadcastState,
    ListState,
    MapState,
    ReducingState,
    StateDescriptor,
    ValueState,
)
from eddies.state.entries import Entry
from eddies.state.keys import decode_key, encode_key
from eddies.state.memory import InMemoryStateBackend
from eddies.state.rocksdb import RocksDbStateBackend
from eddies.state.store import KeyedStateStore
from eddies.state.ttl import Ttl, TtlConfig, TtlStateBackend
from eddies.state.values import NEVER, decode_value, encode_value

__all__ = [
    "NEVER",
    "Batch",
    "BroadcastState",
    "Entry",
    "InMemoryStateBackend",
    "KeyedStateStore",
    "ListState",
    "MapState",
    "ReducingState",
    "RocksDbStateBackend",
    "StateBackend",
    "StateDescriptor",
    "Ttl",
    "TtlConfig",
    "TtlStateBackend",
    "ValueState",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
    "open_backend",
]


def open_backend(
    spec: str | StateBackend, *, durability: bool = False, rocksdb_profile: str | None = None
) -> StateBackend:
    """A backend from ``"memory"`` or ``"rocksdb:PATH"`` (a backend object passes through).

    ``rocksdb_profile`` (``"small"``, ``"medium"``, ``"large"``) sizes a ``"rocksdb:PATH"``
    backend for a machine class; None keeps RocksDB's default options.

    >>> type(open_backend("memory")).__name__
    'InMemoryStateBackend'
    """
    if rocksdb_profile is not None and not (
            isinstance(spec, str) and spec.startswith("rocksdb:")):
        raise ConfigError(
            f"a RocksDB profile ({rocksdb_profile!r}) sizes state='rocksdb:DIR', not "
            f"{spec!r}; give state='rocksdb:DIR', or profile= to RocksDbStateBackend"
        )
    if isinstance(spec, StateBackend):
        return spec
    if spec == "memory":
        return InMemoryStateBackend()
    if isinstance(spec, str) and spec.startswith("rocksdb:"):
        path = spec[len("rocksdb:") :]
        if not path:
            raise ConfigError("state='rocksdb:' needs a directory, e.g. 'rocksdb:./state'")
        return RocksDbStateBackend(Path(path), durability=durability, profile=rocksdb_profile)
    raise ConfigError(
        f"unknown state backend {spec!r}: use 'memory' or 'rocksdb:DIR' (e.g. 'rocksdb:./state')"
    )
