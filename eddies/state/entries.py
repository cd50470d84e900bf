"""MapState entries with metadata: the ``Entry`` users read back, and its stored layout.

An entry without metadata is stored as every state value is (``values.py``), with not one
byte more. An entry with metadata puts a marker byte and a 2-element array after the stamp::

    plain entry (unchanged)
    offset 0        8
           +--------+---------------------------------+
           | expiry | msgpack(value)                  |
           +--------+---------------------------------+

    entry with metadata
    offset 0        8      9
           +--------+------+--------------------------+
           | expiry |  c1  | msgpack([metadata, value]) |
           +--------+------+--------------------------+
           expires_at_ms, u64 little-endian; 2**64-1 means never (an absolute ``expire_at``
           is stored here as it is, like a stamp computed from a Ttl)

``c1`` is the one byte msgpack never uses, so no plain payload starts with it: old state
reads as before, and a reader that knows nothing of metadata fails loudly (msgpack refuses
``c1``) instead of taking the array for the value. Metadata comes first so that a listing of
keys with their metadata could stop before the value.

>>> encode_entry(5, None, NEVER).hex(" ")
'ff ff ff ff ff ff ff ff 05'
>>> encode_entry(5, {"v": 1}, 1_000).hex(" ")
'e8 03 00 00 00 00 00 00 c1 92 81 a1 76 01 05'
>>> decode_entry(bytes.fromhex("e8 03 00 00 00 00 00 00 c1 92 81 a1 76 01 05"))
(5, {'v': 1}, 1000)
>>> decode_entry(bytes.fromhex("ff ff ff ff ff ff ff ff 05"))
(5, None, 18446744073709551615)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from eddies.state.values import NEVER, pack, read_stamp, stamp, unpack

__all__ = [
    "METADATA_MARKER",
    "Entry",
    "decode_entry",
    "decode_payload",
    "encode_entry",
    "payload",
]

METADATA_MARKER = 0xC1
"""The byte after the stamp that says the payload is ``[metadata, value]``."""
_MARKER = bytes([METADATA_MARKER])


class Entry(NamedTuple):
    """A MapState entry read with its metadata: what ``get_with_metadata`` returns.

    ``metadata`` is what ``put(..., metadata=)`` stored (None if nothing); ``expires_at`` is
    the entry's expiry in ms on the state's TTL clock, or None if it never expires.

    >>> value, metadata, expires_at = Entry("v", {"etag": 3}, None)
    >>> metadata
    {'etag': 3}
    """

    value: Any
    metadata: Any
    expires_at: int | None


def payload(value: Any, metadata: Any) -> bytes:
    """The stored bytes after the stamp (metadata None: the plain value)."""
    if metadata is None:
        return pack(value)
    return _MARKER + pack([metadata, value])


def encode_entry(value: Any, metadata: Any, expires_at: int = NEVER) -> bytes:
    """Stored bytes of a map entry (``metadata`` None: the plain layout)."""
    return stamp(expires_at) + payload(value, metadata)


def decode_payload(data: bytes) -> tuple[Any, Any]:
    """``(value, metadata)`` of stored bytes ``data`` (stamp included)."""
    if data[8] == METADATA_MARKER:
        metadata, value = unpack(data[9:])
        return value, metadata
    return unpack(data[8:]), None


def decode_entry(data: bytes) -> tuple[Any, Any, int]:
    """``(value, metadata, expires_at_ms)`` of stored bytes (metadata None if none)."""
    value, metadata = decode_payload(data)
    return value, metadata, read_stamp(data)
