"""Range queries over stored state, for ``eddies state ls/get`` and the live HTTP inspector.

Stored keys lead with a 2-byte key group, so one state's entries are ordered by key group
first. A query merges one range scan per key group present, ordered by ``(user key, map
key)``, which makes listings ordered by key whatever the key groups are (local hash groups or
Kafka partitions).

- With ``key``: the entries of that one user key; ``prefix``/``start``/``start_after``/``end``
  apply to map keys (list indexes for ListState), exactly as ``MapState.entries`` does.
- Without ``key``: every entry; the range options apply to user keys.

Pages end with an opaque cursor: pass it back to continue after the last entry returned.
"""

from __future__ import annotations

import base64
import heapq
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eddies.errors import ConfigError, StateError
from eddies.state.backend import StateBackend
from eddies.state.keys import as_tuple, decode_key, decode_prefixed, encode_element
from eddies.state.maps import range_bounds
from eddies.state.values import NEVER, decode_value

__all__ = ["Entry", "Page", "list_states", "query_state", "to_json_entry"]


@dataclass
class Entry:
    """One stored entry: its user key, map key (or list index) if any, value and expiry."""

    key: tuple[Any, ...]
    map_key: tuple[Any, ...] | None
    value: Any
    expires_at: int | None


@dataclass
class Page:
    entries: list[Entry]
    cursor: str | None


def list_states(backend: StateBackend) -> list[str]:
    """Names of the user states in ``backend`` (internal column families left out)."""
    return [cf for cf in backend.column_families() if not cf.startswith("__") and cf != "default"]


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


def _fingerprint(state: str, key: Any) -> int:
    return zlib.crc32(repr((state, key)).encode())


def _encode_cursor(state: str, key: Any, last: bytes) -> str:
    tag = _fingerprint(state, key).to_bytes(4, "big")
    return base64.urlsafe_b64encode(tag + last).decode().rstrip("=")


def _decode_cursor(cursor: str, state: str, key: Any) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"malformed cursor {cursor!r}") from exc
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != _fingerprint(state, key):
        raise ConfigError("this cursor belongs to another query (state or key differ)")
    return raw[4:]


def query_state(
    backend: StateBackend,
    state: str,
    *,
    key: Any = None,
    prefix: Any = None,
    start: Any = None,
    start_after: Any = None,
    end: Any = None,
    reverse: bool = False,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """One page of ``state``'s entries, ordered by (user key, map key).

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
    >>> [e.map_key for e in query_state(store.backend, "m", cursor=page.cursor).entries]
    [('y', 2)]
    """
    if limit <= 0:
        raise ConfigError("limit must be positive")
    if state not in backend.column_families():
        known = ", ".join(list_states(backend)) or "none"
        raise StateError(f"no state named {state!r}; states here: {known}")
    if key is not None:
        element = encode_element(as_tuple(key))
        lo, hi = range_bounds(prefix, start, start_after, end)
        lower = element + (lo or b"")
        upper = element + hi if hi is not None else element + b"\xff"
    else:
        lower, upper = b"", None
        if start is not None and start_after is not None:
            raise ConfigError("give start= (inclusive) or start_after= (exclusive), not both")
        if start is not None:
            lower = encode_element(as_tuple(start))
        elif start_after is not None:
            lower = encode_element(as_tuple(start_after)) + b"\xff"
        if end is not None:
            upper = encode_element(as_tuple(end))
        if prefix is not None:
            p = encode_element(as_tuple(prefix))[:-1]  # the nested tuple, still open
            lower = max(lower, p)
            upper = p + b"\xff" if upper is None else min(upper, p + b"\xff")
    if cursor is not None:
        last = _decode_cursor(cursor, state, key)
        if reverse:
            upper = last if upper is None else min(upper, last)
        else:
            lower = max(lower, last + b"\x00")
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
    for sort_key, data in merged:
        user_key, offset = decode_prefixed(sort_key, 0)
        rest = sort_key[offset:]
        value, expires_at = decode_value(data)
        entries.append(Entry(user_key, decode_key(rest) if rest else None, value,
                             None if expires_at == NEVER else expires_at))
        last_sort = sort_key
        if len(entries) >= limit:
            break
    more = len(entries) >= limit
    return Page(entries, _encode_cursor(state, key, last_sort) if more else None)


def to_json_entry(entry: Entry) -> dict[str, Any]:
    """The JSON shape of an entry: keys as lists."""
    return {
        "key": list(entry.key),
        "map_key": None if entry.map_key is None else list(entry.map_key),
        "value": entry.value,
        "expires_at": entry.expires_at,
    }
