"""has_blank_line against the regex it replaced, which tried a blank line at every position."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from eddies.operators.sources import has_blank_line

_REFERENCE = re.compile(rb"(?m)^[ \t\r\x0b\x0c]*(?:\n|\Z)")


def reference(data: bytes) -> bool:
    if not data:
        return False
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    return _REFERENCE.search(data, 0, end) is not None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b",", b"1", b"\n", b" ", b"\t", b"\r", b"\x0b", b"\x0c"]),
                max_size=30).map(b"".join))
def test_has_blank_line_agrees_with_the_regex(data: bytes) -> None:
    assert has_blank_line(data) == reference(data)


def test_blank_lines_anywhere_are_found() -> None:
    assert not has_blank_line(b"a,1\nb,2\n")
    assert not has_blank_line(b"a,1\r\nb,2")  # CRLF lines and a last line without newline
    assert has_blank_line(b"\na,1\n")  # first
    assert has_blank_line(b"a,1\n \t\nb,2\n")  # middle, spaces only
    assert has_blank_line(b"a,1\n\r\n")  # last, a bare CRLF
    assert has_blank_line(b"a,1\n  ")  # last, no newline yet
