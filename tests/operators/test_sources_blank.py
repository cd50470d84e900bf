"""The file readers' bulk line handling: has_blank_line against the regex it replaced, lines
cut from the file's buffer against iterating over the file."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from eddies.operators.sources import _read_lines, csv, has_blank_line, split_lines

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


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b"a,1\n", b"bb,22\n", b"\n", b" \r\n", b"ccc,333\r\n",
                                    b"x" * 40 + b"\n"]), max_size=40),
    tail=st.sampled_from([b"", b"d,4", b"  "]),
    buffering=st.sampled_from([2, 7, 64, 1 << 16]),
    n=st.integers(1, 9),
)
def test_read_lines_cuts_the_lines_iteration_would(tmp_path_factory, lines, tail, buffering,
                                                   n) -> None:
    path = tmp_path_factory.mktemp("lines") / "f.csv"
    path.write_bytes(b"".join(lines) + tail)
    with open(path, "rb") as f:
        expected = list(f)  # what iterating over the file gives
    got: list[bytes] = []
    with open(path, "rb", buffering=buffering) as f:
        while True:
            data, count = _read_lines(f, n)
            assert split_lines(data) == expected[len(got):len(got) + count]
            assert count <= n and f.tell() == sum(map(len, got)) + len(data)
            got.extend(split_lines(data))
            if count < n:
                break
    assert got == expected


def test_a_csv_larger_than_the_read_buffer_keeps_lines_and_offsets(tmp_path) -> None:
    # Bad rows far past the first buffer of the file: their dead letters name their own
    # line and offset, and every good row comes back once, in order.
    rows = [f"user{i},{1000 + i},{i % 97}.5" for i in range(20_000)]
    rows[9_000] = "user9000,notanint,1.0"
    rows[15_001] = "user15001,1,2,3"
    text = "key,ts,amount\n" + "\n".join(rows) + "\n"
    path = tmp_path / "big.csv"
    path.write_text(text)
    reader = csv(path, types={"ts": int, "amount": float}).partitions()[0]
    records, dead = [], []
    while not reader.done:
        out, bad = reader.read(2_000)
        records.extend(out)
        dead.extend(bad)
    assert len(records) == 19_998
    assert records[0] == {"key": "user0", "ts": 1000, "amount": 0.5}
    assert records[-1] == {"key": "user19999", "ts": 20999, "amount": 19999 % 97 + 0.5}
    assert [d.raw for d in dead] == [rows[9_000], rows[15_001]]
    for letter, i in zip(dead, (9_000, 15_001), strict=True):
        assert letter.position["line"] == i + 2  # the header is line 1
        assert letter.position["offset"] == text.index(rows[i] + "\n")
    assert reader.position == [len(text), 20_001]
    reader.close()
