"""Write batches: PUT_MANY and DELETE_MANY mean the same as their single ops on every backend,
in order with the ops around them, and listeners read them through ``Batch.singles``."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from eddies.state import Batch, InMemoryStateBackend, RocksDbStateBackend, StateBackend
from eddies.state.backend import DELETE, DELETE_MANY, PUT, PUT_MANY

KEYS = st.binary(min_size=1, max_size=2)
VALUES = st.binary(min_size=1, max_size=2)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, VALUES),
        st.tuples(st.just("delete"), KEYS, st.none()),
        st.tuples(st.just("many"), st.lists(st.tuples(KEYS, VALUES), max_size=6), st.none()),
        st.tuples(st.just("gone"), st.lists(KEYS, max_size=6, unique=True), st.none()),
        st.tuples(st.just("range"), KEYS, KEYS),
    ),
    max_size=30,
)


class Plain(StateBackend):
    """A backend that takes only single ops (as a user's subclass may): write() spells
    PUT_MANY out for it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = InMemoryStateBackend()
        self.kinds: set[int] = set()

    def get(self, cf: str, key: bytes) -> bytes | None:
        return self.inner.get(cf, key)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        return self.inner.multi_get(cf, keys)

    def iterate(self, cf, lower=None, upper=None, reverse=False) -> Iterator[tuple[bytes, bytes]]:
        return self.inner.iterate(cf, lower, upper, reverse)

    def _apply(self, batch: Batch, sync: bool) -> None:
        self.kinds.update(op[0] for op in batch.ops)
        self.inner.write(batch, sync)

    def column_families(self) -> list[str]:
        return self.inner.column_families()

    def close(self) -> None:
        self.inner.close()


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(OPS, min_size=1, max_size=4))
def test_put_many_agrees_with_single_puts_on_every_backend(batches) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backends = [InMemoryStateBackend(), RocksDbStateBackend(Path(tmp)), Plain()]
        seen: list[list] = [[] for _ in backends]
        for db, log in zip(backends, seen, strict=True):
            db.add_write_listener(lambda batch, log=log: log.extend(batch.singles()))
        model: dict[bytes, bytes] = {}
        expected_log = []
        for ops in batches:
            batch = Batch()
            for kind, a, b in ops:
                if kind == "put":
                    batch.put("t", a, b)
                    model[a] = b
                    expected_log.append((PUT, "t", a, b))
                elif kind == "delete":
                    batch.delete("t", a)
                    model.pop(a, None)
                    expected_log.append(batch.ops[-1])
                elif kind == "gone":
                    batch.delete_many("t", a)
                    for k in a:
                        model.pop(k, None)
                    expected_log.extend((DELETE, "t", k, None) for k in a)
                elif kind == "many":
                    # a key may repeat: its last value wins, as with single puts
                    batch.put_many("t", [k for k, _ in a], [v for _, v in a])
                    model.update(a)
                    expected_log.extend((PUT, "t", k, v) for k, v in a)
                else:
                    a, b = min(a, b), max(a, b)
                    batch.delete_range("t", a, b)
                    for k in [k for k in model if a <= k < b]:
                        del model[k]
                    expected_log.append(batch.ops[-1])
            assert len(batch) == len(list(batch.singles()))
            for db in backends:
                db.write(batch)
                assert list(db.iterate("t")) == sorted(model.items())
        assert all(log == expected_log for log in seen)
        assert not {PUT_MANY, DELETE_MANY} & backends[2].kinds, "a backend without takes_put_many"
        for db in backends:
            db.close()


def test_batch_size_counts_every_entry() -> None:
    batch = Batch()
    batch.put_many("t", [b"ab", b"c"], [b"1", b"234"])
    batch.put_many("t", [], [])  # nothing: no op
    batch.delete("t", b"xy")
    batch.delete_many("t", [b"p", b"qr"])
    assert len(batch.ops) == 3
    assert len(batch) == 5
    assert batch.size_bytes() == 2 + 1 + 1 + 3 + 2 + 1 + 2
    assert batch.expanded().ops == [(PUT, "t", b"ab", b"1"), (PUT, "t", b"c", b"234"),
                                    batch.ops[1], (DELETE, "t", b"p", None),
                                    (DELETE, "t", b"qr", None)]
    single = Batch()
    single.put("t", b"k", b"v")
    assert single.expanded() is single


def test_put_many_with_a_repeated_key_lists_it_once_after_a_range_read() -> None:
    db = InMemoryStateBackend()
    first = Batch()
    first.put("t", b"a", b"0")
    db.write(first)
    assert list(db.iterate("t")) == [(b"a", b"0")]  # a range read: key order now kept
    batch = Batch()
    batch.put_many("t", [b"b", b"c", b"b"], [b"1", b"2", b"3"])
    db.write(batch)
    assert list(db.iterate("t")) == [(b"a", b"0"), (b"b", b"3"), (b"c", b"2")]
