"""Order-preserving encoding of structured keys (tuples), after FoundationDB's tuple layer.

Byte order of encodings equals the order of the tuples, so range reads over state are range
reads over bytes. Each element is self-delimiting, so ``("a:b",)`` and ``("a", "b")`` never
collide and no string can forge a key boundary::

    element          bytes
    None             00                    (00 FF inside a nested tuple)
    bytes            01 <data, 00 -> 00 FF> 00
    str              02 <utf-8, 00 -> 00 FF> 00
    nested tuple     05 <elements> 00
    -inf             0A
    int <= -2**64    0B <len ^ FF> <one's complement, big-endian>      (len <= 255)
    int < 0          14-n <one's complement of n bytes, big-endian>     (1 <= n <= 8)
    int 0            14
    int > 0          14+n <n bytes, big-endian>                        (1 <= n <= 8)
    int >= 2**64     1D <len> <big-endian>                             (len <= 255)
    +inf             1E
    other float x    <int of floor(x)> FE <x as a double, ordered>

Numbers follow Python: int, bool and float are one kind, and numbers equal in Python are one
encoding. A number whose value is integral is stored as that int (``1``, ``1.0`` and ``True``
are ``15 01``; ``0``, ``-0.0`` and ``False`` are ``14``; ``1e30`` is the exact int of that
double). A finite float that is not integral is the int encoding of its floor, the marker
``FE`` and the IEEE-754 double of ``x`` itself, big-endian with the sign bit flipped (positive)
or every bit flipped (negative), so that its bytes sort as ``x``::

    161.7  =  15 a1 | fe | c0 64 36 66 66 66 66 66
              floor   marker  161.7 as an ordered double

All numbers with one floor share its int bytes: the integral one is those bytes alone and
sorts first, the others follow it in the order of ``x``; the next floor's bytes are above them
all, so ints and floats interleave by value (``161 < 161.7 < 162``). ``FE`` is above every type
byte (at most 1E) and the nested-tuple terminator (00, nested None 00 FF) that may follow a
number, so it is never read as the next element, and ``(161, "x") < (161.7,)`` as in Python.
The double is ``x`` itself rather than ``x - floor(x)``, which is rounded for negatives
(``-1e-300 - (-1)`` is ``1.0`` in doubles). Decoding gives an int for integral values (``True``
and ``1.0`` come back as ``1``) and a float otherwise. NaN is refused (it is not equal to
itself). As ``1.5`` starts with the bytes of ``1``, a prefix range ends at ``prefix + FE``,
not ``prefix + FF`` (:func:`prefix_upper_bound`).

Across kinds the order follows the type byte: None < bytes < str < tuple < number. Inside a
kind it is Python's (str by code point, bytes and tuples lexicographically, a tuple before
its extensions). A bare value is the 1-tuple of itself: ``encode_key("a") == encode_key(("a",))``.

>>> encode_key(("user", 7)).hex(" ")
'02 75 73 65 72 00 15 07'
>>> decode_key(encode_key(("user", 7)))
('user', 7)
>>> encode_key("a") == encode_key(("a",))
True
>>> encode_key(("a:b",)) != encode_key(("a", "b"))
True
>>> encode_key(1) == encode_key(1.0) == encode_key(True), decode_key(encode_key(1.0))
(True, (1,))
>>> encode_key(161.7).hex(" ")
'15 a1 fe c0 64 36 66 66 66 66 66'
>>> sorted([730.5, 730, 161.7], key=encode_key)
[161.7, 730, 730.5]
"""

from __future__ import annotations

import math
import struct
from typing import Any

from eddies.errors import KeyEncodingError

__all__ = [
    "KEY_LAYOUT_VERSION",
    "Key",
    "as_tuple",
    "decode_element",
    "decode_key",
    "decode_prefixed",
    "decode_user_key",
    "encode_element",
    "encode_key",
    "prefix_upper_bound",
    "state_key",
]

Key = tuple[Any, ...]

KEY_LAYOUT_VERSION = 2
"""Version of the stored key layout drawn above. A RocksDB state dir records the version it
was written with (its ``EDDIES`` marker), and so does every checkpoint marker of a Kafka
changelog; state of another version is refused, never misread. Version 1 gave floats (21) and
bools (26, 27) type bytes of their own, so ``1``, ``1.0`` and ``True`` were three keys."""

_NULL = 0x00
_BYTES = 0x01
_STR = 0x02
_NESTED = 0x05
_NEG_INF = 0x0A
_NEG_BIG = 0x0B
_INT_ZERO = 0x14
_POS_BIG = 0x1D
_POS_INF = 0x1E
_FRACTION = 0xFE  # after an int: the number is that floor plus a fraction, an ordered double
_INF = math.inf

_pack_double = struct.Struct(">d").pack
_unpack_double = struct.Struct(">d").unpack
_INVERT = bytes(range(255, -1, -1))
_SIZE_LIMITS = [(1 << (8 * i)) - 1 for i in range(9)]


def state_key(key: Any) -> Any:
    """The form in which state caches and timers hold ``key``: a 1-tuple of a non-tuple value
    is that bare value (they encode the same), a namedtuple a plain tuple, and a bare number as
    decoding gives it back (``True`` and ``1.0`` as ``1``), so a timer's ``ctx.key`` is the same
    whether its key stayed in memory or was read back from the backend. The elements of longer
    tuples are left as given (equal keys all the same: they encode alike): checking them would
    cost every event a loop.

    Bare keys spare the hot path a tuple per event and a pointer per dict probe.

    >>> state_key(("a",)), state_key("a"), state_key(("a", 1)), state_key((("a", 1),))
    ('a', 'a', ('a', 1), (('a', 1),))
    >>> state_key(True), state_key((1.0,)), state_key(2.5)
    (1, 1, 2.5)
    """
    if type(key) is tuple:
        if len(key) == 1:
            item = key[0]
            ti = type(item)
            if ti is str or ti is int:
                return item
            return key if isinstance(item, tuple) else _decoded_number(item)
        return key
    t = type(key)
    if t is str or t is int:
        return key
    if isinstance(key, tuple):  # a namedtuple
        return state_key(tuple(key))
    return _decoded_number(key)


def _decoded_number(value: Any) -> Any:
    """``value`` as decoding gives it back if it is a bool or a float: ints for integral
    values."""
    t = type(value)
    if t is bool:
        return int(value)
    if t is float and value.is_integer():
        return int(value)
    return value


def as_tuple(key: Any) -> Key:
    """Return ``key`` as a tuple: a bare value becomes its 1-tuple, a namedtuple a tuple.

    >>> as_tuple("a"), as_tuple(("a", 1))
    (('a',), ('a', 1))
    """
    if type(key) is tuple:
        return key
    return tuple(key) if isinstance(key, tuple) else (key,)


def _encode_int(value: int, out: list[bytes]) -> None:
    if value == 0:
        out.append(b"\x14")
        return
    if value > 0:
        if value <= 0xFFFFFFFFFFFFFFFF:
            n = (value.bit_length() + 7) // 8
            out.append(bytes((_INT_ZERO + n,)) + value.to_bytes(n, "big"))
        else:
            n = (value.bit_length() + 7) // 8
            if n > 255:
                raise KeyEncodingError(f"integer key element with {n} bytes is too large (max 255)")
            out.append(bytes((_POS_BIG, n)) + value.to_bytes(n, "big"))
        return
    magnitude = -value
    n = (magnitude.bit_length() + 7) // 8
    if n <= 8:
        out.append(bytes((_INT_ZERO - n,)) + (_SIZE_LIMITS[n] + value).to_bytes(n, "big"))
    else:
        if n > 255:
            raise KeyEncodingError(f"integer key element with {n} bytes is too large (max 255)")
        out.append(bytes((_NEG_BIG, n ^ 0xFF)) + (((1 << (8 * n)) - 1) + value).to_bytes(n, "big"))


def _ordered_double(value: float) -> bytes:
    raw = _pack_double(value)
    if raw[0] & 0x80:  # negative: flip every bit, so larger magnitudes sort first
        return raw.translate(_INVERT)
    return bytes((raw[0] ^ 0x80,)) + raw[1:]


def _unordered_double(raw: bytes) -> bytes:
    if raw[0] & 0x80:
        return bytes((raw[0] ^ 0x80,)) + raw[1:]
    return raw.translate(_INVERT)


def _encode_float(value: float, out: list[bytes]) -> None:
    if value.is_integer():  # 1.0 is the key 1; -0.0 is 0; 1e30 its exact int
        _encode_int(int(value), out)
    elif value == _INF:
        out.append(b"\x1e")
    elif value == -_INF:
        out.append(b"\x0a")
    elif value != value:
        raise KeyEncodingError("NaN cannot be a key element: it is not equal to itself")
    else:
        _encode_int(math.floor(value), out)
        out.append(b"\xfe" + _ordered_double(value))


def _encode_str(value: str) -> bytes:
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise KeyEncodingError(
            f"cannot use str {value!r} in a key: it is not valid UTF-8 ({exc.reason}); "
            "remove the lone surrogates or store the text as bytes"
        ) from exc
    return b"\x02" + raw.replace(b"\x00", b"\x00\xff") + b"\x00"


def _encode_into(value: Any, out: list[bytes], nested: bool) -> None:
    t = type(value)
    if t is str:
        out.append(_encode_str(value))
    elif t is int:
        _encode_int(value, out)
    elif t is float:
        _encode_float(value, out)
    elif t is bool:  # a number, as in a dict: True is the key 1
        out.append(b"\x15\x01" if value else b"\x14")
    elif value is None:
        out.append(b"\x00\xff" if nested else b"\x00")
    elif t is bytes or t is bytearray or t is memoryview:
        out.append(b"\x01" + bytes(value).replace(b"\x00", b"\x00\xff") + b"\x00")
    elif t is tuple:
        out.append(b"\x05")
        for item in value:
            _encode_into(item, out, True)
        out.append(b"\x00")
    # Subclasses (IntEnum, str-mixin Enum, numpy.float64, namedtuple) encode as their base
    # value, so they equal the plain value as keys, as they do in Python. str(x) would give
    # "Color.RED" for a str-mixin Enum member, hence the unbound base-class calls.
    elif isinstance(value, int):
        _encode_int(int.__int__(value), out)
    elif isinstance(value, str):
        out.append(_encode_str(str.__str__(value)))
    elif isinstance(value, float):
        _encode_float(float.__float__(value), out)
    elif isinstance(value, tuple):
        _encode_into(tuple(value), out, nested)
    else:
        raise KeyEncodingError(
            f"cannot use {type(value).__name__} {value!r} in a key: keys are tuples of None, "
            "bool, int, float, str, bytes and nested tuples; convert it (e.g. str(x) or an int)"
        )


def encode_key(key: Any) -> bytes:
    """Encode a key (a tuple, or a bare value meaning its 1-tuple) to order-preserving bytes.

    >>> encode_key(("a", None, 1.5)).hex(" ")
    '02 61 00 00 15 01 fe bf f8 00 00 00 00 00 00'
    """
    t = type(key)
    if t is str:  # fast path for the most common key shape
        return _encode_str(key)
    out: list[bytes] = []
    if t is tuple or isinstance(key, tuple):  # a namedtuple key is a tuple key
        for item in key:
            _encode_into(item, out, False)
    else:
        _encode_into(key, out, False)
    return b"".join(out)


def encode_element(key: Any) -> bytes:
    """Encode ``key`` as one nested-tuple element, so it is self-delimiting as a prefix.

    State stores a map entry as ``<user key as one element><map key>``: with plain
    concatenation the user key ``("a", "b")`` plus map key ``("c",)`` would collide with user key
    ``("a",)`` plus map key ``("b", "c")``.

    >>> encode_element("a").hex(" ")
    '05 02 61 00 00'
    """
    if type(key) is str:  # the common key: one str element in the tuple
        return b"\x05" + _encode_str(key) + b"\x00"
    out: list[bytes] = []
    _encode_into(as_tuple(key), out, False)
    return b"".join(out)


def prefix_upper_bound(prefix: bytes) -> bytes:
    """The upper bound (exclusive) of the keys that extend the key encoded as ``prefix``.

    ``prefix`` ends where an element ends; what follows it in an extension is another element
    (type byte at most 1E), a nested None (00 FF) or a nested-tuple terminator, all below FE.
    FE itself continues the last element: ``1.5`` is ``1``'s bytes, FE and a double, and is
    not an extension of the key ``1``.

    >>> lower = encode_key(1)
    >>> [lower <= encode_key(k) < prefix_upper_bound(lower) for k in [(1, "a"), 1.5, 2]]
    [True, False, False]
    """
    return prefix + b"\xfe"


def _find_terminator(data: bytes, pos: int) -> int:
    while True:
        end = data.index(b"\x00", pos)
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            pos = end + 2
            continue
        return end


def _take(data: bytes, start: int, n: int) -> bytes:
    """``n`` bytes at ``start``; a short read is an error (a slice would quietly decode 0)."""
    if start + n > len(data):
        raise IndexError(f"{n} bytes needed at offset {start}, the key ends first")
    return data[start : start + n]


def _decode_fraction(data: bytes, pos: int, floor: int) -> float:
    """The float whose FE marker is at ``pos``, after the int ``floor``; checked against it."""
    value: float = _unpack_double(_unordered_double(_take(data, pos + 1, 8)))[0]
    if not math.isfinite(value) or value.is_integer() or math.floor(value) != floor:
        raise ValueError(f"float {value!r} at offset {pos + 1} does not have the floor {floor}")
    return value


def _decode_one(data: bytes, pos: int, nested: bool) -> tuple[Any, int]:
    code = data[pos]
    if code == _NULL:
        if nested:
            return None, pos + 2
        return None, pos + 1
    if code in (_BYTES, _STR):
        end = _find_terminator(data, pos + 1)
        raw = data[pos + 1 : end].replace(b"\x00\xff", b"\x00")
        return (raw if code == _BYTES else raw.decode("utf-8")), end + 1
    if code == _NESTED:
        items: list[Any] = []
        pos += 1
        while True:
            if data[pos] == 0x00 and not (pos + 1 < len(data) and data[pos + 1] == 0xFF):
                return tuple(items), pos + 1
            item, pos = _decode_one(data, pos, True)
            items.append(item)
    if _NEG_BIG <= code <= _POS_BIG:
        if code == _POS_BIG:
            n = data[pos + 1]
            value, end = int.from_bytes(_take(data, pos + 2, n), "big"), pos + 2 + n
        elif code == _NEG_BIG:
            n = data[pos + 1] ^ 0xFF
            value = int.from_bytes(_take(data, pos + 2, n), "big") - ((1 << (8 * n)) - 1)
            end = pos + 2 + n
        elif code >= _INT_ZERO:
            n = code - _INT_ZERO
            value, end = int.from_bytes(_take(data, pos + 1, n), "big"), pos + 1 + n
        else:
            n = _INT_ZERO - code
            value = int.from_bytes(_take(data, pos + 1, n), "big") - _SIZE_LIMITS[n]
            end = pos + 1 + n
        if end < len(data) and data[end] == _FRACTION:
            return _decode_fraction(data, end, value), end + 9
        return value, end
    if code == _POS_INF:
        return _INF, pos + 1
    if code == _NEG_INF:
        return -_INF, pos + 1
    raise KeyEncodingError(f"unknown type byte 0x{code:02x} at offset {pos} in key {data.hex()}")


def decode_key(data: bytes) -> Key:
    """Decode bytes made by :func:`encode_key` back into a tuple.

    >>> decode_key(bytes.fromhex("02 61 00 15 07"))
    ('a', 7)
    """
    items: list[Any] = []
    pos = 0
    try:
        while pos < len(data):
            item, pos = _decode_one(data, pos, False)
            items.append(item)
    except (IndexError, ValueError) as exc:
        raise KeyEncodingError(f"malformed key bytes {bytes(data).hex()}: {exc}") from exc
    return tuple(items)


def decode_element(data: bytes, pos: int) -> tuple[Any, int]:
    """Decode the one element at ``pos``; return it and the offset after it.

    >>> decode_element(encode_key("s") + b"rest", 0)
    ('s', 3)
    """
    try:
        return _decode_one(data, pos, False)
    except (IndexError, ValueError) as exc:
        raise KeyEncodingError(f"malformed key bytes {bytes(data).hex()}: {exc}") from exc


def decode_prefixed(data: bytes, pos: int) -> tuple[Key, int]:
    """Decode one nested-tuple element at ``pos``; return it and the offset after it."""
    value, end = decode_element(data, pos)
    if type(value) is not tuple:
        raise KeyEncodingError(f"expected a nested tuple at offset {pos} in {bytes(data).hex()}")
    return value, end


def decode_user_key(data: bytes, pos: int) -> tuple[Any, int]:
    """Decode the user key (a nested-tuple element) at ``pos`` in its :func:`state_key` form;
    return it and the offset after it.

    The common key, one str without NUL bytes (``05 02 <utf-8> 00 00``), is decoded directly
    (sweeps, timer loads and window restores decode one per entry): its first NUL ends the
    str, and a second one right after it ends the tuple unless an FF follows (``00 FF`` is a
    None inside the tuple, as in ``("a", None)``). Anything else (an escaped NUL; a tuple of
    more than the str) takes the general decode.

    >>> decode_user_key(b"\\x00\\x07" + encode_element("alice"), 2)
    ('alice', 11)
    >>> decode_user_key(encode_element(("a", 1)) + b"rest", 0)
    (('a', 1), 7)
    >>> decode_user_key(encode_element(("a", None)) + encode_key(7), 0)
    (('a', None), 7)
    """
    if data[pos:pos + 2] == b"\x05\x02":
        end = data.find(b"\x00", pos + 2)
        if (end > 0 and data[end + 1:end + 2] == b"\x00"
                and data[end + 2:end + 3] != b"\xff"):
            try:
                return data[pos + 2:end].decode("utf-8"), end + 2
            except UnicodeDecodeError as exc:
                raise KeyEncodingError(
                    f"malformed key bytes {bytes(data).hex()}: {exc}") from exc
    key, end = decode_prefixed(data, pos)
    return state_key(key), end
