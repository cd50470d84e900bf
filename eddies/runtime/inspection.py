"""Range queries over stored state, for ``eddies state ls/get`` and the live HTTP inspector.

Stored keys lead with a 2-byte key group, so one state's entries are ordered by key group
first. A query merges one range scan per key group present, ordered by ``(user key, map
key)``, which makes listings ordered by key whatever the key groups are (local hash groups or
Kafka partitions).

- With ``key``: the entries of that one user key; ``prefix``/``start``/``start_after``/``end``
  apply to map keys (list indexes for ListState), exactly as ``MapState.entries`` does.
- Without ``key``: every entry; the range options apply to user keys.

Pages end with an opaque cursor: pass it back, with the same query, to continue after the
last entry returned. The cursor is None when nothing is left. A cursor holds the position of
the last entry (not a snapshot), so paging over state that changes between pages sees each
key once, in its state at the time its page was read.

MapState entries stored with metadata (``put(..., metadata=)``) carry it in ``Entry.metadata``;
their JSON shape adds a ``"metadata"`` field, which entries without metadata leave out.

Queries read stored bytes: they see state as of the last checkpoint (not the write-back
cache), and an entry past its ``expires_at`` shows until a sweep or a rewrite deletes it
(by default sweeps delete it one TTL after it expired: ``TtlConfig.sweep_lag_ms``).

Text given by users for keys and bounds (CLI options, HTTP query parameters) goes through
:func:`parse_key_text`: JSON when it parses as JSON (``["user", 7]``), else the bare string.
So ``null`` is the key ``(None,)``, a key like any other: an option that is not given is
:data:`UNSET`, never None.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from eddies.errors import ConfigError, StateError
from eddies.state.backend import StateBackend
from eddies.state.entries import decode_entry
from eddies.state.keys import (
    as_tuple,
    decode_key,
    decode_prefixed,
    encode_element,
    encode_key,
    prefix_upper_bound,
)
from eddies.state.maps import range_bounds
from eddies.state.values import NEVER

__all__ = [
    "MAX_LIMIT",
    "UNSET",
    "Entry",
    "Page",
    "get_entry",
    "list_states",
    "parse_key_text",
    "query_state",
    "state_counts",
    "to_json_entry",
    "to_jsonable",
]

MAX_LIMIT = 10_000
"""The largest page a query returns; ask for more with the cursor."""


class _Unset(Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
"""A key or bound that was not given (no filter), as opposed to None, the key ``(None,)``."""


@dataclass
class Entry:
    """One stored entry: its user key, map key (or list index) if any, value, expiry, and
    the metadata of a MapState entry stored with some (else None)."""

    key: tuple[Any, ...]
    map_key: tuple[Any, ...] | None
    value: Any
    expires_at: int | None
    metadata: Any = None


@dataclass
class Page:
    """Entries of one page, and the cursor of the next (None on the last page)."""

    entries: list[Entry]
    cursor: str | None


def parse_key_text(text: str) -> Any:
    """A key or bound typed by a user: JSON if it parses as JSON, else the bare string.

    JSON arrays become tuples (nested ones too), since keys are tuples.

    >>> parse_key_text('["user", 7]'), parse_key_text("alice"), parse_key_text("7")
    (('user', 7), 'alice', 7)
    >>> parse_key_text('"7"'), parse_key_text("[[1, 2], null]")
    ('7', ((1, 2), None))
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return _tuples(value)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def list_states(backend: StateBackend) -> list[str]:
    """Names of the user states in ``backend`` (internal column families left out)."""
    return [cf for cf in backend.column_families() if not cf.startswith("__") and cf != "default"]


def state_counts(backend: StateBackend) -> dict[str, int]:
    """Each user state's number of stored entries (a full scan each: offline use)."""
    return {state: backend.count(state) for state in list_states(backend)}


def _key_groups(backend: StateBackend, state: str) -> Iterator[int]:
    """Key groups that hold entries of ``state``, found by seeking (one seek per group)."""
    group = 0
    while group <= 0xFFFF:
        first = next(iter(backend.iterate(state, group.to_bytes(2, "big"), None)), None)
        if first is None:
            return
        group = int.from_bytes(first[0][:2], "big")
        yield group
        group += 1


def _fingerprint(state: str, element: bytes, lower: bytes, upper: bytes | None,
                 reverse: bool) -> bytes:
    # The query as bytes (state, key and bounds after normalisation), so "alice" and
    # ("alice",) share cursors while another range or direction does not.
    ident = b"\x00".join([state.encode(), element, lower, b"-" if upper is None else upper,
                          b"r" if reverse else b"f"])
    return zlib.crc32(ident).to_bytes(4, "big")


def _encode_cursor(tag: bytes, last: bytes) -> str:
    return base64.urlsafe_b64encode(tag + last).decode().rstrip("=")


def _decode_cursor(cursor: str, tag: bytes) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"malformed cursor {cursor!r}: pass back a cursor a page gave") from exc
    if len(raw) < 4 or raw[:4] != tag:
        raise ConfigError(
            f"cursor {cursor!r} belongs to another query (state, key, range or direction "
            "differ); repeat the query that gave it, or drop the cursor to start over"
        )
    return raw[4:]


def _given(value: Any) -> Any:
    """A map-key bound for range_bounds, where None means not given: a given None is the
    key (None,)."""
    return None if value is UNSET else as_tuple(value)


def _bounds(key: Any, prefix: Any, start: Any, start_after: Any,
            end: Any) -> tuple[bytes, bytes, bytes | None]:
    """(user key element or b"", lower, upper) of a query over sort keys."""
    if key is not UNSET:
        element = encode_element(as_tuple(key))
        lo, hi = range_bounds(_given(prefix), _given(start), _given(start_after), _given(end))
        # Map keys never start with FF, so element + FF closes this user key's range.
        return element, element + (lo or b""), element + (hi if hi is not None else b"\xff")
    if start is not UNSET and start_after is not UNSET:
        raise ConfigError("give start= (inclusive) or start_after= (exclusive), not both")
    lower, upper = b"", None
    if start is not UNSET:
        lower = encode_element(as_tuple(start))
    elif start_after is not UNSET:
        # Above the key itself and its map entries, below its extensions ("a",) < ("a", 1).
        lower = encode_element(as_tuple(start_after)) + b"\xff"
    if end is not UNSET:
        upper = encode_element(as_tuple(end))
    if prefix is not UNSET:
        p = encode_element(as_tuple(prefix))[:-1]  # the nested tuple, still open
        lower = max(lower, p)
        pu = prefix_upper_bound(p)  # not p + FF: 1.5 continues 1's bytes with FE
        upper = pu if upper is None else min(upper, pu)
    return b"", lower, upper


def query_state(
    backend: StateBackend,
    state: str,
    *,
    key: Any = UNSET,
    prefix: Any = UNSET,
    start: Any = UNSET,
    start_after: Any = UNSET,
    end: Any = UNSET,
    reverse: bool = False,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """One page of ``state``'s entries, ordered by (user key, map key).

    A key or bound left :data:`UNSET` does not filter; None is the key ``(None,)``.

    Raises :class:`~eddies.errors.StateError` for an unknown state,
    :class:`~eddies.errors.KeyEncodingError` (a StateError) for a key or bound the key codec
    cannot encode, and :class:`~eddies.errors.ConfigError` for a bad limit or cursor.

    >>> from eddies.state import InMemoryStateBackend, KeyedStateStore, MapState
    >>> store = KeyedStateStore(InMemoryStateBackend())
    >>> m = store.bind(MapState("m"))
    >>> for user in ("ann", "bob"):
    ...     store.set_key(user); m.put(("x", 1), 1); m.put(("y", 2), 2)
    >>> _ = store.flush()
    >>> [(e.key, e.map_key, e.value) for e in query_state(store.backend, "m", key="bob",
    ...                                                    prefix="y").entries]
    [(('bob',), ('y', 2), 2)]
    >>> page = query_state(store.backend, "m", limit=3)
    >>> [e.key for e in page.entries], page.cursor is not None
    ([('ann',), ('ann',), ('bob',)], True)
    >>> last = query_state(store.backend, "m", limit=3, cursor=page.cursor)
    >>> [e.map_key for e in last.entries], last.cursor
    ([('y', 2)], None)
    """
    if type(limit) is not int or not 0 < limit <= MAX_LIMIT:
        raise ConfigError(f"limit must be an int in 1..{MAX_LIMIT}, got {limit!r}")
    if state not in list_states(backend):
        known = ", ".join(list_states(backend)) or "none"
        raise StateError(f"no state named {state!r}; states here: {known}")
    element, lower, upper = _bounds(key, prefix, start, start_after, end)
    tag = _fingerprint(state, element, lower, upper, reverse)
    if cursor is not None:
        last = _decode_cursor(cursor, tag)
        if last < lower or (upper is not None and last >= upper):
            raise ConfigError(f"cursor {cursor!r} lies outside the query's range")
        if reverse:
            upper = last
        else:
            lower = last + b"\x00"  # the smallest sort key after the last one returned
    scans = []
    for group in _key_groups(backend, state):
        g = group.to_bytes(2, "big")
        if upper is not None:
            group_upper: bytes | None = g + upper
        else:  # the end of this key group
            group_upper = (group + 1).to_bytes(2, "big") if group < 0xFFFF else None
        scans.append(
            (k[2:], v) for k, v in backend.iterate(state, g + lower, group_upper, reverse)
        )
    merged = heapq.merge(*scans, key=lambda t: t[0], reverse=reverse)
    entries: list[Entry] = []
    last_sort = b""
    more = False
    for sort_key, data in merged:
        if len(entries) >= limit:  # one entry past the page: there is a next page
            more = True
            break
        user_key, offset = decode_prefixed(sort_key, 0)
        rest = sort_key[offset:]
        value, metadata, expires_at = decode_entry(data)
        entries.append(Entry(user_key, decode_key(rest) if rest else None, value,
                             None if expires_at == NEVER else expires_at, metadata))
        last_sort = sort_key
    return Page(entries, _encode_cursor(tag, last_sort) if more else None)


def get_entry(
    backend: StateBackend, state: str, key: Any, map_key: Any = UNSET
) -> Entry | None:
    """The one entry of ``key`` (and ``map_key``, for MapState and ListState), or None.

    None as ``key`` or ``map_key`` is the key ``(None,)``; leave ``map_key`` UNSET for a
    ValueState, ReducingState or ListState key's own entry.

    >>> from eddies.state import InMemoryStateBackend, KeyedStateStore, MapState
    >>> store = KeyedStateStore(InMemoryStateBackend())
    >>> m = store.bind(MapState("m"))
    >>> store.set_key(("user", 7)); m.put(("d", 1), "x"); _ = store.flush()
    >>> get_entry(store.backend, "m", ("user", 7), ("d", 1)).value
    'x'
    """
    if map_key is UNSET:
        page = query_state(backend, state, key=key, limit=1)
        found = page.entries[0] if page.entries else None
        return found if found is not None and found.map_key is None else None
    want = encode_key(as_tuple(map_key))
    # A start bound also takes the keys after it: check that the first is the one asked for.
    page = query_state(backend, state, key=key, start=map_key, limit=1)
    found = page.entries[0] if page.entries else None
    if found is None or found.map_key is None or encode_key(found.map_key) != want:
        return None
    return found


def to_jsonable(value: Any) -> Any:
    """``value`` made fit for JSON: tuples as lists, bytes as ``{"$bytes": hex}``, floats
    JSON has no number for as ``{"$float": "nan"}`` (``"inf"``, ``"-inf"``), map keys that
    are not str as their JSON text.

    >>> to_jsonable({(1, "a"): b"\\x00\\xff", "n": (1, 2), "x": float("-inf")})
    {'[1, "a"]': {'$bytes': '00ff'}, 'n': [1, 2], 'x': {'$float': '-inf'}}
    """
    t = type(value)
    if t is float and not math.isfinite(value):
        return {"$float": repr(value)}
    if t in (str, int, float, bool) or value is None:
        return value
    if t in (list, tuple):
        return [to_jsonable(v) for v in value]
    if t is dict:
        return {
            (k if type(k) is str else json.dumps(to_jsonable(k))): to_jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return repr(value)  # msgpack extension types and the like: readable, not exact


def to_json_entry(entry: Entry) -> dict[str, Any]:
    """The JSON shape of an entry: keys as lists, expires_at in ms or null (never), and
    ``metadata`` only for an entry stored with some.

    >>> to_json_entry(Entry(("user", 7), ("d", 1), {"n": 1}, None))
    {'key': ['user', 7], 'map_key': ['d', 1], 'value': {'n': 1}, 'expires_at': None}
    >>> to_json_entry(Entry(("user", 7), ("d", 1), 5, 60_000, {"etag": 3}))["metadata"]
    {'etag': 3}
    """
    shape = {
        "key": to_jsonable(entry.key),
        "map_key": None if entry.map_key is None else to_jsonable(entry.map_key),
        "value": to_jsonable(entry.value),
        "expires_at": entry.expires_at,
    }
    if entry.metadata is not None:
        shape["metadata"] = to_jsonable(entry.metadata)
    return shape
