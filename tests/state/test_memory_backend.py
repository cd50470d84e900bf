"""The in-memory backend's ordered tables against a plain dict: writes, deletes, range reads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from eddies.state import Batch, InMemoryStateBackend

KEYS = st.binary(min_size=0, max_size=3)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.binary(min_size=1, max_size=2)),
        st.tuples(st.just("delete"), KEYS, st.none()),
        st.tuples(st.just("range"), KEYS, KEYS),
        st.tuples(st.just("read"), st.one_of(st.none(), KEYS), st.one_of(st.none(), KEYS)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(OPS, max_size=6), reverse=st.booleans())
def test_tables_agree_with_a_dict(batches, reverse: bool) -> None:
    db = InMemoryStateBackend()
    model: dict[bytes, bytes] = {}
    for ops in batches:
        batch = Batch()
        for kind, a, b in ops:
            if kind == "put":
                batch.put("t", a, b)
                model[a] = b
            elif kind == "delete":
                batch.delete("t", a)
                model.pop(a, None)
            elif kind == "range":
                batch.delete_range("t", a, b)
                for k in [k for k in model if a <= k < b]:
                    del model[k]
            else:
                db.write(batch)
                batch = Batch()
                expected = sorted((k, v) for k, v in model.items()
                                  if (a is None or k >= a) and (b is None or k < b))
                got = list(db.iterate("t", a, b, reverse=reverse))
                assert got == (expected[::-1] if reverse else expected)
        db.write(batch)
        assert list(db.iterate("t")) == sorted(model.items())
        assert db.count("t") == len(model)
        assert db.multi_get("t", sorted(model)) == [model[k] for k in sorted(model)]


def test_many_deletes_without_reads_are_compacted() -> None:
    db = InMemoryStateBackend()
    for round_ in range(5):
        batch = Batch()
        for i in range(10_000):
            batch.put("t", b"%d-%06d" % (round_, i), b"v")
        db.write(batch)
        batch = Batch()
        for i in range(10_000):
            batch.delete("t", b"%d-%06d" % (round_, i))
        db.write(batch)
    table = db._cfs["t"]
    assert table.order is None or len(table.order) + len(table.fresh) < 20_000
    assert list(db.iterate("t")) == []
