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
        st.tuples(st.just("many"), st.dictionaries(KEYS, st.binary(min_size=1, max_size=2),
                                                   max_size=5), st.none()),
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
            elif kind == "many":
                batch.put_many("t", list(a), list(a.values()))
                model.update(a)
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
                assert db.keys("t", a, b, 3) == [k for k, _ in expected[:3]]
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
    assert table.runs is None or sum(map(len, table.runs)) + len(table.fresh) < 20_000
    assert list(db.iterate("t")) == []


def test_a_sweep_pattern_keeps_runs_few_and_reads_exact() -> None:
    """An expiry index: each round adds keys all over the table and deletes the first ones
    read from the front. Reads stay exact, runs stay few, and nothing deleted lingers."""
    import random

    rng = random.Random(7)
    db = InMemoryStateBackend()
    model: set[bytes] = set()
    for round_ in range(60):
        batch = Batch()
        for _ in range(500):
            key = (round_ * 100 + rng.randrange(10_000)).to_bytes(8, "big")
            batch.put("idx", key, b"")
            model.add(key)
        db.write(batch)
        upper = ((round_ + 1) * 100 + 50).to_bytes(8, "big")
        front = db.keys("idx", None, upper, 300)
        assert front == sorted(k for k in model if k < upper)[:300]
        batch = Batch()
        for key in front:
            batch.delete("idx", key)
        db.write(batch)
        model.difference_update(front)
    table = db._cfs["idx"]
    assert table.runs is not None and len(table.runs) <= 8
    assert not table.gone, "front deletions are cut off, not left behind"
    assert [k for k, _ in db.iterate("idx")] == sorted(model)
