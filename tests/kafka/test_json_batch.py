"""The worker decodes a batch of JSON values in C-level passes (``_loads_json_batch``): the
result equals decoding each value exactly, big ints included, wherever in the batch and in
the value they are."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from eddies.runtime.kafka.worker import _loads_json_batch

ints = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-(10**40), 10**40))
values = st.recursive(
    st.one_of(ints, st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=8)


@given(st.lists(values, min_size=1, max_size=30))
def test_a_batch_decodes_as_each_value_exactly(batch: list[object]) -> None:
    # json.dumps writes ints beyond 64 bits in full, as any producer may.
    raws = [json.dumps(v).encode() for v in batch]
    assert _loads_json_batch(raws) == batch
