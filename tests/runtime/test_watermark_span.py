"""The operator watermark per record that a timed push hands the keyed batch path."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eddies.runtime.executor import _span

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(st.lists(ints, max_size=40).map(sorted), ints, ints)
def test_span_is_max_low_min_y_bound_per_record(ys, low, bound):
    assert _span(ys, low, bound) == [max(low, min(y, bound)) for y in ys]
