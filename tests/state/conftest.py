"""Fixtures for the state conformance suite: every backend, bare and behind the TTL layer.

``backend_spec`` is parametrized over four combinations (memory and RocksDB, each bare and
wrapped in ``TtlStateBackend`` with a large default TTL). Under the TTL wrapper every state
gets an event-time TTL, so the suite always writes with a timestamp; the TTL is long enough
that nothing expires unless a test moves the watermark by decades.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eddies.state import (
    InMemoryStateBackend,
    KeyedStateStore,
    RocksDbStateBackend,
    StateBackend,
    TtlConfig,
    TtlStateBackend,
)

LARGE_TTL_MS = 10**12  # about 31 years

BACKENDS = ["memory", "memory+ttl", "rocksdb", "rocksdb+ttl"]


@dataclass
class BackendSpec:
    """How to open (and, for RocksDB, reopen) one backend combination."""

    kind: str  # "memory" or "rocksdb"
    ttl: bool
    path: Path

    @property
    def persistent(self) -> bool:
        return self.kind == "rocksdb"

    def open_inner(self) -> StateBackend:
        if self.kind == "memory":
            return InMemoryStateBackend()
        return RocksDbStateBackend(self.path)

    def open(self) -> StateBackend:
        inner = self.open_inner()
        if self.ttl:
            return TtlStateBackend(inner, TtlConfig(ttl_ms=LARGE_TTL_MS))
        return inner


@pytest.fixture(params=BACKENDS)
def backend_spec(request: pytest.FixtureRequest, tmp_path: Path) -> BackendSpec:
    kind, _, ttl = request.param.partition("+")
    return BackendSpec(kind=kind, ttl=bool(ttl), path=tmp_path / "state")


@pytest.fixture
def backend(backend_spec: BackendSpec) -> Iterator[StateBackend]:
    db = backend_spec.open()
    yield db
    db.close()


@pytest.fixture
def store(backend: StateBackend) -> KeyedStateStore:
    return KeyedStateStore(backend)


@pytest.fixture(params=["cached", "reloaded"])
def settle(request: pytest.FixtureRequest) -> Callable[[KeyedStateStore], None]:
    """Either leave the write-back cache as it is, or flush it and drop it, so the next read
    comes from the backend's bytes."""
    if request.param == "cached":
        return lambda store: None

    def reload(store: KeyedStateStore) -> None:
        store.flush()
        store.clear_cache()

    return reload
