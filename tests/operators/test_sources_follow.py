"""File sources with ``follow=True`` read a growing file as ``tail -f``: never done, a line
without its newline waits for it, a CSV header too, and a file cut below what was read is an
error; fingerprints tell a grown file from a replaced one."""

from __future__ import annotations

from pathlib import Path

import pytest

from eddies.errors import StateIdentityError
from eddies.operators import sources


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_a_followed_jsonl_file_waits_for_the_newline_of_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}\n{"i": 2')
    reader = sources.jsonl(path, follow=True).partitions()[0]
    assert reader.follow
    assert reader.read(10) == ([{"i": 0}, {"i": 1}], [])
    assert reader.position == [18, 2] and not reader.done
    assert reader.read(10) == ([], [])  # the partial line stays unread
    append(path, "}\n\n")
    assert reader.read(10) == ([{"i": 2}], [])
    assert reader.position == [28, 4] and not reader.done
    append(path, '{"i": 3}\n{"i":')
    assert reader.read(1) == ([{"i": 3}], [])
    assert reader.read(1) == ([], [])
    append(path, ' 4}\n')
    assert reader.read(5) == ([{"i": 4}], [])
    assert not reader.done
    reader.close()


def test_without_follow_the_last_line_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}')
    reader = sources.jsonl(path).partitions()[0]
    assert reader.read(10) == ([{"i": 0}, {"i": 1}], [])
    assert reader.done
    reader.close()


def test_following_can_be_switched_on_by_the_runner_after_open(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("user,ts")  # the header is still being written
    reader = sources.csv(path, types={"ts": int}).partitions()[0]
    reader.follow = True  # as run_local(..., follow=True) does
    assert reader.read(10) == ([], []) and reader.position == [0, 0]
    append(path, "\na,1\nb,")
    assert reader.read(10) == ([{"user": "a", "ts": 1}], [])
    append(path, "2\n")
    assert reader.read(10) == ([{"user": "b", "ts": 2}], [])
    assert reader.fields == ["user", "ts"] and not reader.done
    reader.close()


def test_a_followed_csv_file_resumes_after_its_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("user,n\na,1\n")
    reader = sources.csv(path, follow=True).partitions()[0]
    assert reader.read(10) == ([{"user": "a", "n": "1"}], [])
    position = reader.position
    reader.close()
    append(path, "b,2\n")
    again = sources.csv(path, follow=True).partitions()[0]
    again.seek(position)
    assert again.read(10) == ([{"user": "b", "n": "2"}], [])
    again.close()


def test_a_followed_file_cut_below_what_was_read_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}\n')
    reader = sources.jsonl(path, name="events", follow=True).partitions()[0]
    reader.read(10)
    path.write_text('{"i": 9}\n')
    with pytest.raises(StateIdentityError, match=(
            r"source 'events': file .*events.jsonl is now 9 bytes, shorter than the 18 bytes "
            r"already read: it was cut or rewritten while followed. Following reads appends "
            r"only \(as tail -f\); restore the file, or start the job on a new state dir")):
        reader.read(10)
    reader.close()


def test_a_fingerprint_tells_a_grown_file_from_a_replaced_one(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = "".join(f'{{"i": {i}, "pad": "{"x" * 50}"}}\n' for i in range(500))
    path.write_text(lines)
    reader = sources.jsonl(path).partitions()[0]
    reader.read(300)
    fingerprint = reader.fingerprint()
    reader.close()
    assert fingerprint is not None and fingerprint["size"] == len(lines)

    def check() -> str | None:
        fresh = sources.jsonl(path).partitions()[0]
        try:
            return fresh.check_fingerprint(fingerprint)
        finally:
            fresh.close()

    append(path, '{"i": 500}\n')
    assert check() is None  # grown: the bytes read are still there
    # One byte changed after the first 4 KiB, just before the checkpointed offset.
    offset = fingerprint["offset"]
    data = bytearray(path.read_bytes())
    data[offset - 3] = ord("y")
    path.write_bytes(bytes(data))
    assert "replaced or rewritten" in (check() or "")
    path.write_text(lines[: offset - 1])
    assert "shorter than the" in (check() or "")
