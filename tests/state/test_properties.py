"""Property tests: the key codec's order and round trip, and the primitives against a dict model.

The state machine drives every primitive through random writes, reads, checkpoints, cache
resets, sweeps and watermark moves, on memory and on RocksDB, and checks each read against a
plain-dict model that tracks ``expires_at = timestamp + ttl`` (expired iff
``expires_at <= watermark``).
"""

from __future__ import annotations

import operator
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from eddies.errors import KeyEncodingError
from eddies.state import (
    InMemoryStateBackend,
    KeyedStateStore,
    ListState,
    MapState,
    ReducingState,
    RocksDbStateBackend,
    Ttl,
    TtlConfig,
    ValueState,
    decode_key,
    encode_key,
)
from eddies.state.keys import (
    decode_element,
    decode_prefixed,
    decode_user_key,
    encode_element,
    prefix_upper_bound,
    state_key,
)
from eddies.state.maps import range_bounds
from eddies.state.ttl import EXPIRY_CF
from eddies.state.values import NEVER

CODEC = settings(max_examples=300, deadline=None)

# -- the key codec -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-300, max_value=300),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
elements = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8)
keys = st.lists(elements, max_size=4).map(tuple)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True == 1 would hide a bug)."""
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def decoded_form(value: Any) -> Any:
    """``value`` as decoding gives it back: numbers follow Python, so an integral number (a
    bool, 1.0) is the int of its value and any other float stays a float."""
    if type(value) is tuple:
        return tuple(decoded_form(v) for v in value)
    if type(value) is bool or (type(value) is float and value.is_integer()):
        return int(value)
    return value


@CODEC
@given(keys)
def test_key_round_trip(key: tuple) -> None:
    decoded = decode_key(encode_key(key))
    assert decoded == key
    assert same(decoded, decoded_form(key))


@CODEC
@given(elements)
def test_bare_value_is_its_one_tuple(value: Any) -> None:
    if type(value) is not tuple:
        assert encode_key(value) == encode_key((value,))


@CODEC
@given(keys, keys)
def test_stored_key_layout_round_trips(user_key: tuple, map_key: tuple) -> None:
    """<user key element><map key> decodes to the two parts: no two pairs share bytes."""
    data = encode_element(user_key) + encode_key(map_key)
    decoded, end = decode_prefixed(data, 0)
    assert same(decoded, decoded_form(user_key))
    assert same(decode_key(data[end:]), decoded_form(map_key))


# Keys that start with a str, the shape decode_user_key's fast path looks at: a str alone,
# or followed by more elements (None right after the str is the case ``00 00 FF`` tells apart).
str_first = st.builds(lambda text, rest: (text, *rest), st.text(max_size=8),
                      st.lists(st.one_of(st.none(), elements), max_size=3))


@CODEC
@given(st.one_of(keys, str_first), keys, st.binary(min_size=2, max_size=2))
def test_decode_user_key_is_the_general_decode(user_key: tuple, suffix: tuple,
                                               group: bytes) -> None:
    """The fast str path of decode_user_key agrees with the general decode, with and without
    a suffix after the key (a map key), whatever the str holds (NUL bytes included)."""
    for tail in (b"", encode_key(suffix)):
        data = group + encode_element(user_key) + tail
        key, end = decode_user_key(data, 2)
        assert same(key, state_key(decoded_form(user_key)))
        assert data[end:] == tail


def test_decode_user_key_reads_a_none_after_a_str() -> None:
    """``("a", None)`` is ``05 02 61 00 | 00 FF | 00``: the NUL after the str's end starts the
    None, it does not end the tuple."""
    data = b"\x00\x01" + encode_element(("a", None)) + encode_key(7)
    assert decode_user_key(data, 2) == (("a", None), 9)


def test_decode_user_key_rejects_an_unterminated_str() -> None:
    """No NUL after the str (truncated bytes) is malformed, even where the key group holds
    NULs: the general decode says so, no key is guessed."""
    with pytest.raises(KeyEncodingError, match="malformed key bytes"):
        decode_user_key(b"\x00\x00\x05\x02ab", 2)


def test_no_string_injection() -> None:
    assert encode_key(("a:b",)) != encode_key(("a", "b"))
    assert encode_key(("a\x00b",)) != encode_key(("a", "b"))
    assert encode_element(("a", "b")) + encode_key("c") != encode_element("a") + encode_key(
        ("b", "c")
    )


# Element strategies whose values Python can order among themselves.
ordered_types = [
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.text(alphabet="ab\x00\xff", max_size=4),
    st.binary(max_size=4),
    st.booleans(),
    st.none(),
    st.tuples(st.text(alphabet="ab", max_size=2), st.integers(-2, 2)),
    st.lists(st.integers(-2, 2), max_size=3).map(tuple),
    st.lists(st.none(), max_size=2).map(tuple),
    st.lists(st.lists(st.binary(max_size=2), max_size=2).map(tuple), max_size=2).map(tuple),
]


@st.composite
def same_shape_pair(draw: Any) -> tuple[tuple, tuple]:
    """Two tuples that agree on the type at each position (one may be shorter)."""
    schema = draw(st.lists(st.sampled_from(ordered_types), max_size=4))
    a = tuple(draw(s) for s in schema)
    b = tuple(draw(s) for s in schema)
    return a[: draw(st.integers(0, len(a)))] if draw(st.booleans()) else a, b


def cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


@settings(max_examples=1_000, deadline=None)
@given(same_shape_pair())
def test_byte_order_is_tuple_order(pair: tuple[tuple, tuple]) -> None:
    a, b = pair
    assert cmp(encode_key(a), encode_key(b)) == cmp(a, b)


@CODEC
@given(same_shape_pair())
def test_start_after_is_strictly_greater(pair: tuple[tuple, tuple]) -> None:
    a, b = pair
    lower, _ = range_bounds(start_after=a)
    assert (encode_key(b) >= lower) == (b > a)


@CODEC
@given(same_shape_pair(), st.booleans())
def test_prefix_range_is_element_prefix(pair: tuple[tuple, tuple], extend: bool) -> None:
    p, t = pair
    if extend:
        t = p + t
    lower = encode_key(p)
    inside = lower <= encode_key(t) < prefix_upper_bound(lower)
    assert inside == (t[: len(p)] == p)


# -- numbers follow Python -----------------------------------------------------------------------
#
# The documented total order of key elements (keys.py): None < bytes < str < tuple < number;
# inside a kind Python's order, numbers (int, float, bool) by value. ``rank`` is that order
# written as Python values; it must agree with the bytes everywhere and with Python's ``<``
# wherever Python defines it.

numbers = st.one_of(
    st.booleans(),
    st.integers(min_value=-300, max_value=300),
    st.integers(min_value=-(2**200), max_value=2**200),  # beyond 64 bits
    st.floats(allow_nan=False),  # inf, huge, subnormal
    st.integers(min_value=-(2**70), max_value=2**70).map(float),  # integral floats
    st.integers(min_value=-3_000, max_value=3_000).map(lambda n: n / 4),  # near the ints
    st.sampled_from([0.5, -0.5, 1.5, -1.5, 1e30, -1e30, 2.0**64, 5e-324, -5e-324, 0.1, -0.0,
                     1 - 2**-53, -1 + 2**-53, 2.0**52 + 0.5, -(2.0**52) - 0.5]),
)
any_scalars = st.one_of(
    numbers,
    numbers,
    st.none(),
    st.text(alphabet="ab\x00\xff", max_size=3),
    st.binary(max_size=3),
)
any_elements = st.recursive(any_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple),
                            max_leaves=6)
any_keys = st.lists(any_elements, max_size=4).map(tuple)


def rank(value: Any) -> Any:
    """A key element's place in the documented total order, as a comparable Python value."""
    t = type(value)
    if value is None:
        return (0,)
    if t is bytes:
        return (1, value)
    if t is str:
        return (2, value)
    if t is tuple:
        return (3, tuple(rank(v) for v in value))
    return (4, value)  # int, float and bool compare exactly with each other in Python


def equal_variant(value: Any, flip: Any) -> Any:
    """A value equal to ``value`` in Python, of another type where there is one."""
    t = type(value)
    if t is tuple:
        return tuple(equal_variant(v, flip) for v in value)
    if t is bool:
        return int(value) if flip.draw(st.booleans()) else float(value)
    if t is int:
        if value in (0, 1) and flip.draw(st.booleans()):
            return bool(value)
        as_float = float(value) if abs(value) < 2**1000 else None
        return as_float if as_float == value else value
    if t is float:
        if value == 0:
            return flip.draw(st.sampled_from([0, -0.0, False]))
        return int(value) if value.is_integer() else value
    return value


@st.composite
def related_pair(draw: Any) -> tuple[tuple, tuple]:
    """Two keys that often share a prefix, are equal, or differ by a close number."""
    a = draw(any_keys)
    how = draw(st.sampled_from(["any", "extend", "variant", "last", "prefix"]))
    if how == "any":
        b = draw(any_keys)
    elif how == "extend":
        b = a + draw(any_keys)
    elif how == "variant":
        b = equal_variant(a, draw(st.data()))
    elif how == "last":
        b = a[:-1] + (draw(numbers),)
    else:
        b = a[: draw(st.integers(0, len(a)))]
    return (a, b) if draw(st.booleans()) else (b, a)


def python_cmp(a: Any, b: Any) -> int | None:
    try:
        return cmp(a, b)
    except TypeError:  # Python does not order these (str against int, None against None)
        return None


@settings(max_examples=2_000, deadline=None)
@given(related_pair())
def test_byte_order_is_the_documented_total_order(pair: tuple[tuple, tuple]) -> None:
    a, b = pair
    model = cmp(tuple(map(rank, a)), tuple(map(rank, b)))
    assert cmp(encode_key(a), encode_key(b)) == model
    if model == 0:
        assert encode_key(a) == encode_key(b), "equal keys are one encoding"
    py = python_cmp(a, b)
    if py is not None:
        assert py == model, "the documented order is Python's where Python has one"


@settings(max_examples=1_000, deadline=None)
@given(any_keys, st.data())
def test_numbers_equal_in_python_encode_identically(key: tuple, data: Any) -> None:
    variant = equal_variant(key, data)
    assert variant == key
    assert encode_key(variant) == encode_key(key)
    assert encode_element(variant) == encode_element(key)


@settings(max_examples=1_000, deadline=None)
@given(any_keys)
def test_round_trip_gives_ints_for_integral_numbers(key: tuple) -> None:
    decoded = decode_key(encode_key(key))
    assert decoded == key
    assert same(decoded, decoded_form(key))


@CODEC
@given(related_pair(), any_keys, any_keys)
def test_stored_key_order_with_suffixes(pair: tuple[tuple, tuple], s: tuple, t: tuple) -> None:
    """<user key element><map key or list index> sorts as the pair (user key, suffix): a
    float's FE marker never meets a nested-tuple terminator or the suffix's type byte."""
    a, b = pair
    left = encode_element(a) + encode_key(s)
    right = encode_element(b) + encode_key(t)
    model = cmp((rank(a), tuple(map(rank, s))), (rank(b), tuple(map(rank, t))))
    assert cmp(left, right) == model
    decoded, end = decode_prefixed(left, 0)
    assert decoded == a and decode_key(left[end:]) == s


@CODEC
@given(related_pair())
def test_ranges_with_numbers(pair: tuple[tuple, tuple]) -> None:
    """prefix keeps the extensions of p (1.5 does not extend 1); start_after is strictly
    above, whatever the types of equal numbers."""
    p, t = pair
    lower, upper = range_bounds(prefix=p if p else None)
    enc = encode_key(t)
    if p:
        assert (lower <= enc < upper) == (t[: len(p)] == p)
    after, _ = range_bounds(start_after=p)
    assert (enc >= after) == (tuple(map(rank, t)) > tuple(map(rank, p)))


# -- primitives against a model ------------------------------------------------------------------

TTL = 100
# 7 and 7.0, 1 and True are equal keys, as in the dict model: one entry each on every backend.
USER_KEY_LIST = ["a", ("a", "b"), ("a:b",), 7, None, ("a", ("b",)), 7.0, True, 1]
USER_KEYS = st.sampled_from(USER_KEY_LIST)
VALUES = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.none(), st.lists(st.integers(-2, 2), max_size=3)
)
MAP_KEYS = st.one_of(
    st.sampled_from(["a", "b", "c"]),
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3)),
    # numbers equal in Python are one map key, and all of them sort by value
    st.tuples(st.sampled_from(["a", "b"]),
              st.sampled_from([1.0, True, False, 0.5, -0.5, 2.5, 3.0, float("inf")])),
)
LAGS = st.integers(-150, 150)  # write timestamps relative to the watermark; some are late


def as_tuple(key: Any) -> tuple:
    return key if type(key) is tuple else (key,)


def public(key: tuple) -> Any:
    return key[0] if len(key) == 1 else key


class StateModel(RuleBasedStateMachine):
    """Every primitive with an event-time TTL, plus variants, against dicts."""

    backend_kind = "memory"
    sweep_lag = 0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp() if self.backend_kind == "rocksdb" else None
        self.db = RocksDbStateBackend(self.tmp) if self.tmp else InMemoryStateBackend()
        store = self.store = KeyedStateStore(
            self.db, ttl_config=TtlConfig(sweep_lag_ms=self.sweep_lag))
        self.value = store.bind(ValueState("value", ttl=Ttl(ms=TTL)))
        self.plain = store.bind(ValueState("plain", default="none"))
        self.touched = store.bind(
            ValueState("touched", ttl=Ttl(ms=TTL, update="on_read_and_write"))
        )
        self.shown = store.bind(
            ValueState("shown", ttl=Ttl(ms=TTL, visibility="expired_if_present"))
        )
        self.items = store.bind(ListState("items", ttl=Ttl(ms=TTL)))
        self.table = store.bind(MapState("table", ttl=Ttl(ms=TTL)))
        self.total = store.bind(ReducingState("total", operator.add, ttl=Ttl(ms=TTL)))
        self.watermark = 0
        store.backend.set_watermark(0)
        # Models: user key tuple -> ...
        self.m_value: dict[tuple, tuple[Any, int]] = {}
        self.m_plain: dict[tuple, Any] = {}
        self.m_touched: dict[tuple, tuple[Any, int]] = {}
        self.m_shown: dict[tuple, list[Any]] = {}  # [value, expires_at, dirty]
        self.m_items: dict[tuple, list[tuple[Any, int]]] = {}
        self.m_table: dict[tuple, dict[tuple, tuple[Any, int]]] = {}
        self.m_total: dict[tuple, tuple[int, int]] = {}

    def teardown(self) -> None:
        self.db.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- time and persistence ------------------------------------------------------------------
    def live(self, expires_at: int) -> bool:
        return expires_at > self.watermark

    def at(self, key: Any, lag: int = 0) -> int:
        ts = max(0, self.watermark + lag)
        self.store.set_key(key, ts)
        return ts

    @rule(delta=st.integers(0, 250))
    def advance_watermark(self, delta: int) -> None:
        self.watermark += delta
        self.store.backend.set_watermark(self.watermark)

    @rule()
    def checkpoint(self) -> None:
        self.store.flush()
        for entry in self.m_shown.values():
            entry[2] = False
        # The sweep's invariant (ttl.py): every stored value with a finite stamp has an index
        # entry at or before that stamp, however lazily its writer indexes.
        earliest: dict[tuple[bytes, bytes], int] = {}
        for index_key, _ in self.db.iterate(EXPIRY_CF):
            state, end = decode_element(index_key, 8)
            at = int.from_bytes(index_key[:8], "big")
            slot = (state, index_key[end:])
            earliest[slot] = min(at, earliest.get(slot, at))
        for cf in ("value", "touched", "shown", "items", "table", "total"):
            for stored, data in self.db.iterate(cf):
                stamp = int.from_bytes(data[:8], "little")
                if stamp != NEVER:
                    at = earliest.get((cf, stored))
                    assert at is not None and at <= stamp, (cf, stored, stamp, at)

    @rule()
    def reset_cache(self) -> None:
        self.checkpoint()
        self.store.clear_cache()

    @rule()
    def sweep(self) -> None:
        self.store.backend.sweep_all()
        # Nothing at or below the watermark (less the sweep lag) is left in the backend, nor
        # in the index.
        swept_to = self.watermark - self.sweep_lag
        for cf in ("value", "touched", "shown", "items", "table", "total"):
            for _, data in self.db.iterate(cf):
                assert int.from_bytes(data[:8], "little") > swept_to
        for index_key, _ in self.db.iterate(EXPIRY_CF):
            assert int.from_bytes(index_key[:8], "big") > swept_to
        # Only what reached the backend can be swept; dirty cache entries stay present.
        for key, (_, expires_at, dirty) in list(self.m_shown.items()):
            if not dirty and expires_at <= swept_to:
                del self.m_shown[key]
        self.read_everything()

    @rule()
    def read_everything(self) -> None:
        for key in USER_KEY_LIST:
            self.value_get(key, 0)
            self.list_read(key)
            self.map_get(key, ["a", "b", "c", ("a", 0), ("b", 3)])
            self.total_get(key)

    # -- ValueState (three TTL flavours and none) ------------------------------------------------
    @rule(key=USER_KEYS, value=VALUES, lag=LAGS)
    def value_set(self, key: Any, value: Any, lag: int) -> None:
        ts = self.at(key, lag)
        self.value.set(value)
        self.plain.set(value)
        self.touched.set(value)
        self.shown.set(value)
        k = as_tuple(key)
        self.m_value[k] = (value, ts + TTL)
        self.m_plain[k] = value
        self.m_touched[k] = (value, ts + TTL)
        self.m_shown[k] = [value, ts + TTL, True]

    @rule(key=USER_KEYS)
    def value_clear(self, key: Any) -> None:
        self.at(key)
        for handle in (self.value, self.plain, self.touched, self.shown):
            handle.clear()
        k = as_tuple(key)
        for model in (self.m_value, self.m_plain, self.m_touched, self.m_shown):
            model.pop(k, None)

    @rule(key=USER_KEYS, lag=LAGS)
    def value_get(self, key: Any, lag: int) -> None:
        ts = self.at(key, lag)
        k = as_tuple(key)
        value, expires_at = self.m_value.get(k, (None, 0))
        assert self.value.get() == (value if self.live(expires_at) else None)
        assert self.plain.get() == self.m_plain.get(k, "none")
        value, expires_at = self.m_touched.get(k, (None, 0))
        if self.live(expires_at):
            assert self.touched.get() == value
            # A read moves the expiry on, never back (a read at an earlier time)
            self.m_touched[k] = (value, max(expires_at, ts + TTL))
        else:
            assert self.touched.get() is None
        entry = self.m_shown.get(k)
        assert self.shown.get() == (entry[0] if entry else None)

    # -- ListState --------------------------------------------------------------------------------
    @rule(
        key=USER_KEYS,
        values=st.lists(VALUES, max_size=3),
        lag=LAGS,
        how=st.sampled_from(["add", "add_all", "update"]),
    )
    def list_write(self, key: Any, values: list, lag: int, how: str) -> None:
        ts = self.at(key, lag)
        k = as_tuple(key)
        elements = self.m_items.setdefault(k, [])
        if how == "add":
            values = values[:1] or [0]
            self.items.add(values[0])
        elif how == "add_all":
            self.items.add_all(values)
        else:
            self.items.update(values)
            elements.clear()
        elements.extend((v, ts + TTL) for v in values)

    @rule(key=USER_KEYS)
    def list_clear(self, key: Any) -> None:
        self.at(key)
        self.items.clear()
        self.m_items.pop(as_tuple(key), None)

    @rule(key=USER_KEYS)
    def list_read(self, key: Any) -> None:
        self.at(key)
        expected = [v for v, e in self.m_items.get(as_tuple(key), []) if self.live(e)]
        assert self.items.get() == expected
        assert self.items.length() == len(expected)
        assert self.items.is_empty() == (not expected)

    # -- MapState ---------------------------------------------------------------------------------
    @rule(
        key=USER_KEYS,
        mk=MAP_KEYS,
        value=VALUES,
        lag=LAGS,
        entry_ttl=st.sampled_from([None, 30, 300]),
    )
    def map_put(self, key: Any, mk: Any, value: Any, lag: int, entry_ttl: int | None) -> None:
        ts = self.at(key, lag)
        self.table.put(mk, value, ttl=Ttl(ms=entry_ttl) if entry_ttl else None)
        self.m_table.setdefault(as_tuple(key), {})[as_tuple(mk)] = (value, ts + (entry_ttl or TTL))

    @rule(key=USER_KEYS, items=st.dictionaries(MAP_KEYS, VALUES, max_size=3), lag=LAGS)
    def map_put_all(self, key: Any, items: dict, lag: int) -> None:
        ts = self.at(key, lag)
        self.table.put_all(items)
        table = self.m_table.setdefault(as_tuple(key), {})
        for mk, value in items.items():
            table[as_tuple(mk)] = (value, ts + TTL)

    @rule(key=USER_KEYS, mks=st.lists(MAP_KEYS, max_size=3))
    def map_remove(self, key: Any, mks: list) -> None:
        self.at(key)
        if len(mks) == 1:
            self.table.remove(mks[0])
        else:
            self.table.remove_all(mks)
        table = self.m_table.get(as_tuple(key), {})
        for mk in mks:
            table.pop(as_tuple(mk), None)

    @rule(key=USER_KEYS)
    def map_clear(self, key: Any) -> None:
        self.at(key)
        self.table.clear()
        self.m_table.pop(as_tuple(key), None)

    def _map_live(self, key: Any) -> dict[tuple, Any]:
        table = self.m_table.get(as_tuple(key), {})
        return {mk: v for mk, (v, e) in table.items() if self.live(e)}

    @rule(key=USER_KEYS, mks=st.lists(MAP_KEYS, max_size=3))
    def map_get(self, key: Any, mks: list) -> None:
        self.at(key)
        live = self._map_live(key)
        assert self.table.get_many(mks, default="-") == [live.get(as_tuple(m), "-") for m in mks]
        for mk in mks:
            assert self.table.get(mk, "-") == live.get(as_tuple(mk), "-")
            assert self.table.contains(mk) == (as_tuple(mk) in live)

    @rule(
        key=USER_KEYS,
        prefix=st.sampled_from([None, "a", "b", ("a", 1)]),
        lower=st.one_of(st.none(), st.tuples(st.sampled_from(["start", "start_after"]), MAP_KEYS)),
        end=st.one_of(st.none(), MAP_KEYS),
        reverse=st.booleans(),
        limit=st.one_of(st.none(), st.integers(0, 3)),
    )
    def map_range(
        self, key: Any, prefix: Any, lower: Any, end: Any, reverse: bool, limit: int | None
    ) -> None:
        self.at(key)
        expected = sorted(self._map_live(key).items(), reverse=reverse)
        bounds: dict[str, Any] = {}
        if prefix is not None:
            p = as_tuple(prefix)
            expected = [(k, v) for k, v in expected if k[: len(p)] == p]
            bounds["prefix"] = prefix
        if lower is not None:
            how, bound = lower
            b = as_tuple(bound)
            expected = [(k, v) for k, v in expected if (k >= b if how == "start" else k > b)]
            bounds[how] = bound
        if end is not None:
            expected = [(k, v) for k, v in expected if k < as_tuple(end)]
            bounds["end"] = end
        if limit is not None:
            expected = expected[:limit]
        got = list(self.table.entries(reverse=reverse, limit=limit, **bounds))
        assert got == [(public(k), v) for k, v in expected]

    # -- ReducingState ----------------------------------------------------------------------------
    @rule(key=USER_KEYS, value=st.integers(-5, 5), lag=LAGS)
    def total_add(self, key: Any, value: int, lag: int) -> None:
        ts = self.at(key, lag)
        self.total.add(value)
        k = as_tuple(key)
        acc, expires_at = self.m_total.get(k, (0, 0))
        self.m_total[k] = ((acc + value) if self.live(expires_at) else value, ts + TTL)

    @rule(key=USER_KEYS)
    def total_clear(self, key: Any) -> None:
        self.at(key)
        self.total.clear()
        self.m_total.pop(as_tuple(key), None)

    @rule(key=USER_KEYS)
    def total_get(self, key: Any) -> None:
        self.at(key)
        acc, expires_at = self.m_total.get(as_tuple(key), (None, 0))
        assert self.total.get() == (acc if self.live(expires_at) else None)


STATEFUL = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class RocksDbStateModel(StateModel):
    backend_kind = "rocksdb"


class LaggedStateModel(StateModel):
    """The same with a sweep lag: expired entries are deleted that much later, and
    expired_if_present values stay visible until then."""

    sweep_lag = 120


TestStateModelMemory = StateModel.TestCase
TestStateModelMemory.settings = STATEFUL
TestStateModelRocksDb = RocksDbStateModel.TestCase
TestStateModelRocksDb.settings = settings(STATEFUL, max_examples=50)
TestStateModelLagged = LaggedStateModel.TestCase
TestStateModelLagged.settings = settings(STATEFUL, max_examples=50)
