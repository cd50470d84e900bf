"""Wire format of stored state values: an expiry stamp, then the msgpack payload.

::

    offset 0        8
           +--------+----------------------+
           | expiry | msgpack payload      |
           +--------+----------------------+
           expires_at_ms, unsigned 64-bit little-endian; 2**64-1 means never

Every value carries the stamp, so TTL can be switched on or off for existing state without a
migration.

>>> encode_value(5, NEVER).hex(" ")
'ff ff ff ff ff ff ff ff 05'
>>> decode_value(encode_value({"n": 1}, 1_000))
({'n': 1}, 1000)
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = ["NEVER", "decode_value", "encode_value", "pack", "unpack", "read_stamp", "stamp"]

NEVER = 2**64 - 1
"""The expiry stamp of a value that never expires."""

_stamp = struct.Struct("<Q")
stamp = _stamp.pack
_read_stamp = _stamp.unpack_from
NEVER_STAMP = stamp(NEVER)

pack = msgpack.Packer(use_bin_type=True).pack
"""msgpack encoder used for every state value (tuples come back as lists)."""


def _hashable(item: Any) -> Any:
    return tuple(_hashable(i) for i in item) if type(item) is list else item


def _dict_with_tuple_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(k): v for k, v in pairs}


def unpack(data: bytes) -> Any:
    """Decode a msgpack payload (non-string map keys allowed).

    A dict keyed by tuples packs (msgpack writes the tuples as arrays) but its keys would come
    back as unhashable lists; such payloads are decoded again with the keys made tuples.

    >>> unpack(pack({(1, "a"): 2}))
    {(1, 'a'): 2}
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except TypeError:  # unhashable list as a map key: the slow path, only for such payloads
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, object_pairs_hook=_dict_with_tuple_keys
        )


def read_stamp(data: bytes) -> int:
    """The expires_at_ms of a stored value.

    >>> read_stamp(encode_value(1, 42))
    42
    """
    return _read_stamp(data)[0]


def encode_value(value: Any, expires_at: int = NEVER) -> bytes:
    """Stored bytes for ``value`` expiring at ``expires_at`` ms (NEVER for no TTL)."""
    return stamp(expires_at) + pack(value)


def decode_value(data: bytes) -> tuple[Any, int]:
    """Return ``(value, expires_at_ms)`` from stored bytes."""
    return unpack(data[8:]), _read_stamp(data)[0]
