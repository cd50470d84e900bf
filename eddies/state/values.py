"""Wire format of stored state values: an expiry stamp, then the msgpack payload.

::

    offset 0        8
           +--------+----------------------+
           | expiry | msgpack payload      |
           +--------+----------------------+
           expires_at_ms, unsigned 64-bit little-endian; 2**64-1 means never

Every value carries the stamp, so TTL can be switched on or off for existing state without a
migration.

The payload is plain msgpack, plus one extension type for the ints msgpack cannot hold (below
-2**63 or above 2**64-1), so that every Python int is stored exactly, never as a float::

    ext type 1, big int:  msgpack ext header (type 01) | the int, two's complement, big-endian,
                          in the fewest bytes that hold its sign (at least 9)

    2**64   = c7 09 01 | 01 00 00 00 00 00 00 00 00      (ext 8: c7 <len> <type>)
    -2**127 = d8 01    | 80 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00   (fixext 16)

>>> encode_value(5, NEVER).hex(" ")
'ff ff ff ff ff ff ff ff 05'
>>> decode_value(encode_value({"n": 1}, 1_000))
({'n': 1}, 1000)
>>> decode_value(encode_value({"id": 10**29}))
({'id': 100000000000000000000000000000}, 18446744073709551615)
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = [
    "BIG_INT_EXT",
    "NEVER",
    "decode_value",
    "encode_value",
    "pack",
    "read_stamp",
    "stamp",
    "unpack",
]

NEVER = 2**64 - 1
"""The expiry stamp of a value that never expires."""

_stamp = struct.Struct("<Q")
stamp = _stamp.pack
_read_stamp = _stamp.unpack_from
NEVER_STAMP = stamp(NEVER)

BIG_INT_EXT = 1
"""msgpack extension type code of an int beyond msgpack's 64-bit range."""


def _big_int(value: Any) -> msgpack.ExtType:
    """msgpack's ``default`` hook: called only for what msgpack cannot pack itself."""
    if isinstance(value, int):  # an int out of msgpack's range (bools and small ints pack)
        value = int(value)
        n = (value if value >= 0 else ~value).bit_length() // 8 + 1  # room for the sign bit
        return msgpack.ExtType(BIG_INT_EXT, value.to_bytes(n, "big", signed=True))
    raise TypeError(f"can not serialize {type(value).__name__!r} object")


def _ext(code: int, data: bytes) -> Any:
    if code == BIG_INT_EXT:
        return int.from_bytes(data, "big", signed=True)
    return msgpack.ExtType(code, data)


pack = msgpack.Packer(use_bin_type=True, default=_big_int).pack
"""msgpack encoder used for every state value (tuples come back as lists; ints of any size)."""


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
    >>> unpack(pack([2**64, -(2**63) - 1]))
    [18446744073709551616, -9223372036854775809]
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)
    except TypeError:  # unhashable list as a map key: the slow path, only for such payloads
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, object_pairs_hook=_dict_with_tuple_keys,
            ext_hook=_ext,
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
