"""Sources: where a job's records come from, read in batches from checkpointable positions.

A source has one or more partitions; each partition reader reads a batch of records, reports
malformed ones as dead letters (with raw text, position and reason) and exposes a position
that a checkpoint stores and a resumed run seeks back to.

>>> src = iterable([{"k": "a"}, {"k": "b"}])
>>> reader = src.partitions()[0]
>>> reader.read(10)
([{'k': 'a'}, {'k': 'b'}], [])
>>> reader.position, reader.done
(2, True)

File sources read a fixed file to its end, where the partition's watermark jumps to +infinity.
With ``follow=True`` (or ``eddies run --follow``) they read a growing file as ``tail -f``
does: never done, a last line without its newline waits for it, and a quiet file is idle
under ``idle_timeout`` as any input. Following keeps the file opened at the start (a file
renamed away and replaced is not reopened); a file cut below what was read is an error.

A checkpoint stores each file partition's :meth:`SourceReader.fingerprint` next to its
position (the path, the offset, the file's size and a digest of the bytes before the
offset), so that a run resuming on a replaced or rewritten file stops instead of reading
from an offset that means nothing in it.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import json
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from pathlib import Path
from typing import Any

import orjson

from eddies.errors import ConfigError, StateIdentityError

__all__ = ["DeadLetter", "Source", "SourceReader", "csv", "iterable", "jsonl", "kafka"]


@dataclass
class DeadLetter:
    """A record that could not be processed: where it came from, its raw text, and why."""

    source: str
    position: Any
    raw: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "position": self.position, "raw": self.raw,
                "reason": self.reason}


class SourceReader(ABC):
    """Reads one partition of a source in batches."""

    partition: int = 0
    done: bool = False
    can_follow: bool = False
    """Whether :attr:`follow` can be set: the reader can wait for input to grow."""
    follow: bool = False
    """Read on as the input grows instead of ending at its end (file readers; set by the
    source's ``follow=True`` or by the runner's ``follow`` option)."""

    @property
    @abstractmethod
    def position(self) -> Any:
        """Where the next read starts; msgpack-able, stored in checkpoints."""

    @abstractmethod
    def seek(self, position: Any) -> None:
        """Continue from a checkpointed ``position``."""

    @abstractmethod
    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        """Up to ``max_records`` records (fewer at the end), plus dead letters met on the way."""

    def size_hint(self) -> int | None:
        """Total size in position units if known (for progress), else None."""
        return None

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        """Where the ``index``-th record of the last ``read`` came from, for dead letters:
        ``(position, raw text or None)``, or None if unknown."""
        return None

    def fingerprint(self) -> dict[str, Any] | None:
        """What identifies the input read up to :attr:`position` (msgpack-able), stored with
        the position at each checkpoint; None when the input cannot be told apart."""
        return None

    def check_fingerprint(self, stored: dict[str, Any]) -> str | None:
        """Why a position checkpointed with fingerprint ``stored`` means nothing in the input
        as it is now (it was replaced, rewritten or cut), or None when it still fits."""
        return None

    def pending(self, position: Any) -> int | None:
        """How much input lies beyond ``position`` now (bytes for files), None if unknown."""
        return None

    def close(self) -> None:
        """Release files or connections."""
        return None


class Source(ABC):
    """A named, partitioned input."""

    name: str = "source"
    kind: str = "source"
    """What reads it (``"jsonl"``, ``"csv"``, ``"iterable"``), stored in a state dir's
    identity: a source read by another kind of reader under the same name is another input."""
    bounded: bool = True

    @abstractmethod
    def partitions(self) -> list[SourceReader]:
        """Readers for every partition, positioned at the start."""


# -- files ---------------------------------------------------------------------------------------
# Blank (whitespace-only) lines are skipped, not records.
_LINE_SPACE = b" \t\r\x0b\x0c"
_CONVERT_ERRORS = (ValueError, TypeError, KeyError, ArithmeticError)
"""What a converter of a malformed field raises (``int``, ``float``, ``decimal.Decimal``'s
InvalidOperation, which is an ArithmeticError): the row goes to dead letters."""

_DIGEST_SPAN = 4096
"""A file's fingerprint digests this many bytes at its start and as many before the
checkpointed offset: enough to tell a grown file from a replaced or rewritten one at the
cost of two small reads per checkpoint."""


def has_blank_line(data: bytes) -> bool:
    """Whether the lines in ``data`` (the last one maybe without its newline) include a blank
    one: empty or only spaces, tabs, CR, VT or FF.

    With those deleted, a blank line is a newline at the start or right after another one.
    Each test is a C-level pass (memchr for the single bytes); a regex trying ``^`` at every
    position cost nearly half as much as parsing the rows of a CSV batch.

    >>> has_blank_line(b"a,1\\nb,2\\n"), has_blank_line(b"a,1\\n \\r\\nb,2\\n")
    (False, True)
    >>> has_blank_line(b"a,1\\r\\nb,2\\r\\n"), has_blank_line(b"a,1\\n\\t"), has_blank_line(b"\\n")
    (False, True, True)
    """
    if not data:
        return False
    s = data
    if b" " in s or b"\t" in s or b"\r" in s or b"\x0b" in s or b"\x0c" in s:
        s = s.translate(None, _LINE_SPACE)
    if not data.endswith(b"\n"):  # the last line is blank when nothing is left of it
        s += b"\n"
    return s.startswith(b"\n") or b"\n\n" in s


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each newline, as iterating over a binary file cuts it.

    >>> split_lines(b"a\\r\\nb\\n\\nc")
    [b'a\\r\\n', b'b\\n', b'\\n', b'c']
    """
    parts = data.split(b"\n")
    last = parts.pop()
    lines = list(map(bytes.__add__, parts, repeat(b"\n")))
    if last:
        lines.append(last)
    return lines


def _line_end(buf: bytes, n: int, total: int) -> int:
    """The offset just after the ``n``-th newline of ``buf``, which holds ``total >= n``:
    guessed from the mean line length, then walked to by a few finds."""
    p = len(buf) * n // total
    c = buf.count(b"\n", 0, p)
    if c >= n:
        while c >= n:  # step back over the last newline before p
            p = buf.rfind(b"\n", 0, p)
            c -= 1
        return p + 1
    while c < n:
        p = buf.find(b"\n", p) + 1
        c += 1
    return p


def _read_lines(f: Any, n: int) -> tuple[bytes, int]:
    """Up to ``n`` lines of the buffered binary file ``f`` as one bytes, and how many; the
    last one lacks its newline only at the end of the file. The file is left right after
    them.

    Lines are cut in what the file holds buffered (``peek``), never one object per line:
    iterating over the file made a bytes per line, joined again at once (about 410
    instructions a line, against 210). A larger buffer than the default 8 KiB is no faster:
    ``bytes.count`` takes about 5 instructions a byte, and the part of a buffer a read
    leaves is counted again by the next.
    """
    chunks: list[bytes] = []
    need = n
    while need:
        buf = f.peek()
        if not buf:
            break
        k = buf.count(b"\n")
        if k < need:
            chunks.append(f.read(len(buf)))
            need -= k
        else:
            chunks.append(f.read(_line_end(buf, need, k)))
            need = 0
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    count = n - need
    if need and data and not data.endswith(b"\n"):
        count += 1  # the file's last line, without a newline
    return data, count


def file_digest(fd: int, offset: int) -> bytes:
    """blake2b (16 bytes) of the first ``min(offset, 4096)`` bytes of the file open as ``fd``
    followed by the ``min(offset, 4096)`` bytes before ``offset``.

    >>> import os, tempfile
    >>> fd, path = tempfile.mkstemp()
    >>> _ = os.write(fd, b'{"a": 1}\\n')
    >>> file_digest(fd, 9) == hashlib.blake2b(b'{"a": 1}\\n' * 2, digest_size=16).digest()
    True
    >>> os.close(fd); os.unlink(path)
    """
    span = min(offset, _DIGEST_SPAN)
    h = hashlib.blake2b(digest_size=16)
    h.update(os.pread(fd, span, 0))
    h.update(os.pread(fd, span, offset - span))
    return h.digest()


class _LineReader(SourceReader):
    """Lines of a file by byte offset; subclasses parse them.

    A read takes its lines in bulk, as one bytes cut from the file's buffer
    (:func:`_read_lines`), and remembers it with the batch's starting offset; the lines one by
    one, and the offset and line number of a single line, needed only for dead letters and
    for batches with blank lines, are worked out when asked for.
    """

    can_follow = True

    def __init__(self, source: _FileSource) -> None:
        self.source = source
        self.path = source.path
        self.follow = source.follow
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise ConfigError(f"source {source.name!r}: cannot open {self.path}: {exc}") from exc
        self._offset = 0
        self._line = 0
        self.done = False
        # The bytes of the last read and its raw lines (blank ones included; split from the
        # bytes when first asked for), the offset and line number before the first of them,
        # and for each returned record the index of its line (None: record i is line i).
        self._batch_data = b""
        self._batch: list[bytes] | None = []
        self._batch_offset = 0
        self._batch_line = 0
        self._records: list[int] | None = None
        self._n_records = 0
        self._offsets: list[int] | None = None
        self.start()

    def start(self) -> None:
        """Hook run at open (CSV reads its header here)."""

    @property
    def position(self) -> Any:
        return [self._offset, self._line]

    def seek(self, position: Any) -> None:
        offset, line = position
        self._file.seek(offset)
        self._offset, self._line = offset, line
        self.done = False

    def size_hint(self) -> int | None:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return None

    def fingerprint(self) -> dict[str, Any] | None:
        """``{"path", "offset", "size", "digest"}``: the file, the offset read up to, the
        file's size now and :func:`file_digest` at the offset.

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.jsonl"
        >>> _ = path.write_bytes(b'{"a": 1}\\n{"a": 2}\\n')
        >>> reader = jsonl(path).partitions()[0]
        >>> _ = reader.read(1)
        >>> fp = reader.fingerprint()
        >>> fp["offset"], fp["size"], fp["digest"] == file_digest(reader.fileno(), 9)
        (9, 18, True)
        >>> reader.check_fingerprint(fp) is None
        True
        >>> reader.close()
        """
        fd = self._file.fileno()
        return {"path": os.path.abspath(self.path), "offset": self._offset,
                "size": os.fstat(fd).st_size, "digest": file_digest(fd, self._offset)}

    def fileno(self) -> int:
        """The descriptor of the file being read."""
        return self._file.fileno()

    def check_fingerprint(self, stored: dict[str, Any]) -> str | None:
        offset = stored["offset"]
        fd = self._file.fileno()
        size = os.fstat(fd).st_size
        was = f"{stored['path']}" + ("" if stored["path"] == os.path.abspath(self.path)
                                     else f", now {os.path.abspath(self.path)}")
        if size < offset:
            return (f"file {was} is {size:,} bytes, shorter than the {offset:,} bytes the "
                    "checkpoint read: it was replaced, rewritten or cut since")
        if file_digest(fd, offset) != stored["digest"]:
            return (f"the first {offset:,} bytes of file {was} are not those the checkpoint "
                    "read (its start, or the bytes before its position, differ): it was "
                    "replaced or rewritten since")
        return None

    def pending(self, position: Any) -> int | None:
        size = self.size_hint()
        return None if size is None else max(0, size - position[0])

    def _cut_check(self) -> None:
        """A followed file that got shorter than what was read: its positions mean nothing."""
        size = os.fstat(self._file.fileno()).st_size
        if size < self._offset:
            raise StateIdentityError(
                f"source {self.source.name!r}: file {self.path} is now {size:,} bytes, shorter "
                f"than the {self._offset:,} bytes already read: it was cut or rewritten while "
                "followed. Following reads appends only (as tail -f); restore the file, or "
                "start the job on a new state dir (--state rocksdb:NEW_DIR)")

    def _take(self, max_records: int) -> tuple[bytes, int, bool]:
        """Read lines holding up to ``max_records`` non-blank ones; returns their bytes, the
        number of lines, and whether any of them is blank. Following, a last line without
        its newline is left unread until the newline arrives."""
        f = self._file
        data, count = _read_lines(f, max_records)
        at_end = count < max_records
        lines = None
        blank = has_blank_line(data)
        if blank:  # rare: top up with line-by-line reads until max_records non-blank lines
            lines = split_lines(data)
            count = sum(1 for raw in lines if raw.strip())
            readline = f.readline
            while count < max_records and not at_end:
                raw = readline()
                if not raw:
                    at_end = True
                    break
                lines.append(raw)
                if raw.strip():
                    count += 1
            data = b"".join(lines)
            count = len(lines)
        if self.follow:
            if data and not data.endswith(b"\n"):
                # A line still being written: read it again once its newline is there.
                data = data[: data.rfind(b"\n") + 1]
                count -= 1
                if lines is not None:
                    lines.pop()
                f.seek(self._offset + len(data))
                blank = has_blank_line(data)
            if not count:
                self._cut_check()
        elif at_end:
            self.done = True
        self._batch_data = data
        self._batch = lines
        self._batch_offset = self._offset
        self._batch_line = self._line
        self._records = None
        self._n_records = 0
        self._offsets = None
        self._offset += len(data)
        self._line += count
        return data, count, blank

    def _lines(self) -> list[bytes]:
        """The raw lines of the last read, each with its newline (the last maybe without)."""
        lines = self._batch
        if lines is None:
            lines = self._batch = split_lines(self._batch_data)
        return lines

    def _located(self, j: int) -> tuple[int, int]:
        """(offset, line number) of line ``j`` of the last batch."""
        offsets = self._offsets
        if offsets is None:
            offsets = self._offsets = list(
                accumulate(map(len, self._lines()), initial=self._batch_offset))
        return offsets[j], self._batch_line + j + 1

    def _slow(self, parse: Callable[[bytes, int, int], Any]) -> tuple[list[Any], list[DeadLetter]]:
        """Parse the last batch line by line with ``parse(raw, offset, line)``, which returns a
        record or a DeadLetter; blank lines are skipped."""
        out: list[Any] = []
        dead: list[DeadLetter] = []
        records: list[int] = []
        offset = self._batch_offset
        line = self._batch_line
        for j, raw in enumerate(self._lines()):
            line += 1
            if raw.strip():
                result = parse(raw, offset, line)
                if type(result) is DeadLetter:
                    dead.append(result)
                else:
                    out.append(result)
                    records.append(j)
            offset += len(raw)
        self._records = records
        self._n_records = len(out)
        return out, dead

    def _where(self, offset: int, line: int) -> dict[str, Any]:
        return {"file": str(self.path), "offset": offset, "line": line}

    def dead(self, raw: bytes, offset: int, line: int, reason: str) -> DeadLetter:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        return DeadLetter(self.source.name, self._where(offset, line), text, reason)

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        if not 0 <= index < self._n_records:
            return None
        j = index if self._records is None else self._records[index]
        offset, line = self._located(j)
        return self._where(offset, line), self._lines()[j].decode("utf-8", "replace").rstrip("\r\n")

    def close(self) -> None:
        self._file.close()


# A JSON int orjson cannot hold (above 2**64-1: 20 digits; below -2**63: a minus and 19) comes
# back from it as a float, rounded. Text with such a run of digits (and minus signs) is parsed
# again with ``json``, which keeps ints exact; a run inside a string or a long fraction only
# costs that re-parse. Runs are found by C-level passes (slice, translate, find; a regex is
# several times slower), first over every 4th byte: a run of 20 leaves 5 in a row there, and
# only runs of 17 or more can, so text without long numbers (13-digit ms timestamps, 16-digit
# card numbers) pays for a quarter of a scan.
_DIGIT_MASK = bytes(0x30 if 0x30 <= b <= 0x39 or b == 0x2D else 0x20 for b in range(256))
_LONG_RUN = b"0" * 20
_SAMPLED_RUN = b"0" * 5


def may_hold_a_long_int(data: bytes) -> bool:
    """Whether ``data`` (JSON text) may hold an int that orjson would round (beyond 64 bits,
    written as a run of 20 digits or minus signs); False proves it holds none.

    >>> may_hold_a_long_int(b'{"ts": 1700000000000}'), may_hold_a_long_int(b"[18446744073709551616]")
    (False, True)
    """
    if _SAMPLED_RUN not in data[::4].translate(_DIGIT_MASK):
        return False
    return _LONG_RUN in data.translate(_DIGIT_MASK)


def loads_exact(raw: bytes) -> Any:
    """Parse one JSON document as ``orjson.loads`` does, except that ints beyond 64 bits stay
    exact ints (orjson would round them to floats).

    Raises ``orjson.JSONDecodeError`` for what orjson refuses (invalid JSON, a float beyond a
    double's range, a lone surrogate), whatever else the text holds, and ``ValueError`` for an
    int of more digits than Python converts (``sys.get_int_max_str_digits()``) or one nested
    too deep to re-read exactly.

    >>> loads_exact(b'{"id": 100000000000000000000000000001, "n": 1.5}')
    {'id': 100000000000000000000000000001, 'n': 1.5}
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not may_hold_a_long_int(raw):
            raise
        # orjson also refuses ints beyond a double's range (a 310-digit int), which are valid
        # JSON; anything else it refuses stays refused.
        try:
            value = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)
            _check_text(value)
        except (json.JSONDecodeError, _NotJson, UnicodeError, RecursionError):
            raise exc from None  # invalid after all: orjson's message
        # (a ValueError of an int too long to convert goes on: never rounded, never dropped)
        return value
    if may_hold_a_long_int(raw):
        return reparse_exact(raw)
    return value


def reparse_exact(raw: bytes) -> Any:
    """``json.loads`` of text orjson has read (so valid JSON): its ints come back exact.
    Nesting deeper than ``json`` reads (about 1,000 levels) is a ``ValueError``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deep to read its long ints exactly") from None


class _NotJson(ValueError):
    pass


def _not_json(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"{text} is beyond a double's range")
    return value


def _check_text(value: Any) -> None:
    """Refuse strings that are not valid UTF-8 (a lone surrogate from a ``\\ud800`` escape),
    as orjson does."""
    stack = [value]
    while stack:
        item = stack.pop()
        t = type(item)
        if t is str:
            item.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif t is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif t is list:
            stack.extend(item)


class _JsonlReader(_LineReader):
    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        data, _, blank = self._take(max_records)
        if not blank:
            lines = self._lines()
            try:
                out = list(map(orjson.loads, lines))
                if may_hold_a_long_int(data):  # rare: then find the lines
                    for i, raw in enumerate(lines):
                        if may_hold_a_long_int(raw):
                            out[i] = reparse_exact(raw)
            except ValueError:  # orjson.JSONDecodeError is one
                pass  # some line is bad: the line-by-line pass says which
            else:
                self._n_records = len(out)
                return out, []
        return self._slow(self._parse)

    def _parse(self, raw: bytes, offset: int, line: int) -> Any:
        try:
            return loads_exact(raw)
        except orjson.JSONDecodeError as exc:
            return self.dead(raw, offset, line, f"invalid JSON: {exc}")
        except ValueError as exc:  # an int too long to convert: never rounded, never dropped
            return self.dead(raw, offset, line, f"cannot read a number exactly: {exc}")


def _rows_function(fields: list[str], types: dict[str, Callable[[str], Any]]) -> Any:
    """``rows(lines) -> list[dict]`` for unquoted CSV lines: split, convert, build the dicts.

    Generated so that a row costs one split, one call per converter and one dict display in
    a comprehension (no Python call per row); a line of the wrong width fails the unpacking
    (ValueError). Field names and converters are passed in as arguments' defaults, never
    spliced into the source.

    >>> rows = _rows_function(["card", "ts"], {"ts": int})
    >>> rows(["a,1", "b,2"])
    [{'card': 'a', 'ts': 1}, {'card': 'b', 'ts': 2}]
    >>> rows(["a,1,2"])
    Traceback (most recent call last):
    ...
    ValueError: too many values to unpack (expected 2)
    """
    n = len(fields)
    convs = {name: i for i, name in enumerate(types)}
    params = "".join(f", _n{i}=_names[{i}]" for i in range(n))
    params += "".join(f", _c{i}=_convs[{i}]" for i in range(len(types)))
    items = ", ".join(
        f"_n{i}: _c{convs[name]}(_f{i})" if name in convs else f"_n{i}: _f{i}"
        for i, name in enumerate(fields)
    )
    unpack = ", ".join(f"_f{i}" for i in range(n)) + ","
    src = (f"def rows(lines{params}):\n"
           f"    return [{{{items}}} for {unpack} in _map(_split, lines, _repeat(','))]\n")
    namespace: dict[str, Any] = {"_names": list(fields), "_convs": list(types.values()),
                                 "_map": map, "_split": str.split, "_repeat": repeat}
    exec(compile(src, "<eddies csv rows>", "exec"), namespace)  # noqa: S102
    return namespace["rows"]


class _CsvReader(_LineReader):
    def start(self) -> None:
        self._rows: Any = None
        self._types: dict[str, Callable[[str], Any]] = getattr(self.source, "types", {})
        given: list[str] | None = getattr(self.source, "fields", None)
        self._width_of = "header" if given is None else "fields="
        self.fields: list[str] = [] if given is None else list(given)
        # A header row still being written (no newline yet) is read at the first read: by
        # then the reader knows whether it follows the file (and waits for the newline).
        self._header_pending = given is None
        self._header_end = 0  # the offset after the header row (or a BOM), once it is read
        self._header_lines = 1 if given is None else 0
        if given is None:
            header = self._file.readline()
            self._file.seek(0)
            if header.endswith(b"\n"):
                self._read_header()
        else:
            # A UTF-8 BOM (Excel's "CSV UTF-8") is no part of the first field, as it is no
            # part of a header row's first name.
            if self._file.read(3) == b"\xef\xbb\xbf":
                self._offset = self._header_end = 3
            self._file.seek(self._offset)
            self._fast_path()

    def _read_header(self) -> bool:
        """Read the header row; False when following and its newline is not there yet."""
        header = self._file.readline()
        if self.follow and not header.endswith(b"\n"):
            self._file.seek(0)
            return False
        self._header_pending = False
        if not header:  # an empty file
            return True
        self._offset = self._header_end = len(header)
        self._line = 1
        try:
            text = header.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"CSV source {self.source.name!r}: the header row of {str(self.path)!r} is not "
                f"UTF-8 ({exc}); save the file as UTF-8, or give fields= for a file without "
                "a header row") from None
        self.fields = next(_csv.reader([text]))
        self._fast_path()
        return True

    def _fast_path(self) -> None:
        # The split fast path needs >= 2 distinct fields (a blank line must not pass as a row
        # of one empty field) and converters only for fields the header has.
        if (len(self.fields) >= 2 and len(set(self.fields)) == len(self.fields)
                and all(name in self.fields for name in self._types)):
            self._rows = _rows_function(self.fields, self._types)

    def seek(self, position: Any) -> None:
        if self._header_pending:
            self._read_header()
        if position[0] < self._header_end:
            # Saved before the header was there (an empty file, or a header still without
            # its newline): the first record is the line after the header.
            position = [self._header_end, self._header_lines]
        super().seek(position)

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        if self._header_pending and not self._read_header():
            return [], []
        data, count, blank = self._take(max_records)
        if not count:
            return [], []
        rows = self._rows
        # Fast path: no quotes and no lone CR in the batch, so a row is line.split(",") as
        # csv.reader would split it. Any failure (a bad row somewhere) re-reads the batch
        # line by line, which gives each bad line its own dead letter and reason.
        if rows is not None and not blank and b'"' not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None and "\r" in text:
                text = text.replace("\r\n", "\n")
                if "\r" in text:
                    text = None
            if text is not None:
                if text.endswith("\n"):
                    text = text[:-1]
                try:
                    out = rows(text.split("\n"))
                except Exception:  # noqa: BLE001 - the slow pass reports it exactly
                    pass
                else:
                    self._n_records = len(out)
                    return out, []
        return self._read_slow(self._lines())

    def _read_slow(self, lines: list[bytes]) -> tuple[list[Any], list[DeadLetter]]:
        # A field is as long as its line, as on the split fast path: under the csv module's
        # limit (128 KiB) a long quoted field would be a dead letter.
        limit = _csv.field_size_limit(sys.maxsize)
        try:
            return self._parse_slow(lines)
        finally:
            _csv.field_size_limit(limit)

    def _parse_slow(self, lines: list[bytes]) -> tuple[list[Any], list[DeadLetter]]:
        rows: list[list[str]] | None
        try:
            rows = list(_csv.reader([raw.decode("utf-8") for raw in lines if raw.strip()],
                                    strict=True))
        except (UnicodeDecodeError, _csv.Error):
            rows = None
        if rows is not None and len(rows) != sum(1 for raw in lines if raw.strip()):
            # A stray quote made the reader join lines into one row: parse line by line so
            # each row stays tied to its own line (and the bad one alone goes to dead letters).
            rows = None
        it = iter(rows) if rows is not None else None
        fields = self.fields
        width = len(fields)
        types = self._types

        def parse(raw: bytes, offset: int, line: int) -> Any:
            if it is None:
                try:
                    row = next(_csv.reader([raw.decode("utf-8")], strict=True))
                except (UnicodeDecodeError, _csv.Error) as exc:
                    return self.dead(raw, offset, line, f"invalid CSV: {exc}")
            else:
                row = next(it)
            if len(row) != width:
                return self.dead(raw, offset, line,
                                 f"CSV row has {len(row)} fields, {self._width_of} has {width}")
            record = dict(zip(fields, row, strict=True))
            if types:
                try:
                    for name, convert in types.items():
                        record[name] = convert(record[name])
                except _CONVERT_ERRORS as exc:
                    return self.dead(raw, offset, line,
                                     f"field {name!r}: cannot convert with "
                                     f"{getattr(convert, '__name__', convert)}: {exc}")
            return record

        return self._slow(parse)


class _FileSource(Source):
    reader: type[_LineReader]

    def __init__(self, path: str | os.PathLike[str], name: str | None = None,
                 follow: bool = False) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.follow = bool(follow)
        self.bounded = not self.follow

    def partitions(self) -> list[SourceReader]:
        return [self.reader(self)]

    def __repr__(self) -> str:
        follow = ", follow=True" if self.follow else ""
        return f"{type(self).__name__.lstrip('_')}({str(self.path)!r}{follow})"


class _Jsonl(_FileSource):
    reader = _JsonlReader
    kind = "jsonl"


class _Csv(_FileSource):
    reader = _CsvReader
    kind = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        types: dict[str, Callable[[str], Any]] | None = None,
        fields: Sequence[str] | None = None,
        follow: bool = False,
    ) -> None:
        super().__init__(path, name, follow)
        self.types = dict(types or {})
        self.fields = None if fields is None else self._checked(fields)

    def _checked(self, given: Sequence[str]) -> list[str]:
        where = f"sources.csv({str(self.path)!r})"
        fields = [] if isinstance(given, str) else list(given)
        if not fields or not all(type(f) is str for f in fields):
            raise ConfigError(f"{where}: fields= takes the column names in file order, a "
                              'non-empty list of str such as ["card", "ts", "amount"]')
        twice = sorted({f for f in fields if fields.count(f) > 1})
        if twice:
            raise ConfigError(f"{where}: fields= names {', '.join(map(repr, twice))} more than "
                              "once; give each column its own name")
        unknown = [name for name in self.types if name not in fields]
        if unknown:
            raise ConfigError(f"{where}: types= converts {', '.join(map(repr, unknown))}, which "
                              f"fields= does not name (fields: {', '.join(fields)})")
        return fields


def jsonl(path: str | os.PathLike[str], *, name: str | None = None,
          follow: bool = False) -> Source:
    """One JSON value per line. Bad JSON goes to dead letters with its line and offset.

    ``follow=True`` keeps reading as the file grows (as ``tail -f``; see the module
    docstring): the job runs until stopped, and its event time never jumps to the end.

    >>> jsonl("payments.jsonl")
    Jsonl('payments.jsonl')
    >>> jsonl("payments.jsonl", follow=True)
    Jsonl('payments.jsonl', follow=True)
    """
    return _Jsonl(path, name, follow)


def csv(
    path: str | os.PathLike[str],
    *,
    types: dict[str, Callable[[str], Any]] | None = None,
    fields: Sequence[str] | None = None,
    name: str | None = None,
    follow: bool = False,
) -> Source:
    """A CSV file; each row becomes a dict of str, keyed by the header row's names.

    ``types`` converts fields, e.g. ``{"ts": int, "amount": float}``; a failed conversion or a
    row of the wrong width goes to dead letters. ``fields`` names the columns of a file
    without a header row: every line, the first included, is then a record. ``follow=True``
    keeps reading as the file grows, as :func:`jsonl` does (a header waits for its newline).

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "payments.csv"
    >>> _ = path.write_text("alice,1000,12.5\\nbob,2000,3\\n")
    >>> src = csv(path, fields=["card", "ts", "amount"], types={"ts": int, "amount": float})
    >>> reader = src.partitions()[0]
    >>> reader.read(10)
    ([{'card': 'alice', 'ts': 1000, 'amount': 12.5}, {'card': 'bob', 'ts': 2000, 'amount': 3.0}], [])
    >>> reader.close()
    """
    return _Csv(path, name, types, fields, follow)


# -- in-memory -----------------------------------------------------------------------------------
class _IterableReader(SourceReader):
    def __init__(self, source: _Iterable) -> None:
        self.source = source
        self._it = iter(source.items)
        self._count = 0
        self._last = 0
        self.done = False

    @property
    def position(self) -> Any:
        return self._count

    def seek(self, position: Any) -> None:
        for _ in range(position - self._count):
            next(self._it, None)
        self._count = position

    def locate(self, index: int) -> tuple[Any, str | None] | None:
        start = self._count - self._last
        return (start + index, None) if 0 <= index < self._last else None

    def read(self, max_records: int) -> tuple[list[Any], list[DeadLetter]]:
        out = []
        it = self._it
        for _ in range(max_records):
            try:
                out.append(next(it))
            except StopIteration:
                self.done = True
                break
        self._count += len(out)
        self._last = len(out)
        if len(out) < max_records:
            self.done = True
        return out, []

    def size_hint(self) -> int | None:
        items = self.source.items
        return len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]

    def pending(self, position: Any) -> int | None:
        size = self.size_hint()
        return None if size is None else max(0, size - position)


class _Iterable(Source):
    kind = "iterable"

    def __init__(self, items: Iterable[Any], name: str) -> None:
        self.items = items
        self.name = name

    def partitions(self) -> list[SourceReader]:
        return [_IterableReader(self)]


def iterable(items: Iterable[Any], *, name: str = "iterable") -> Source:
    """Records from a Python iterable (a list in tests).

    Its position is a count of records, so resuming replays correctly only when the iterable
    yields the same records again (a list does; a generator is consumed once).
    """
    return _Iterable(items, name)

def kafka(topic: str, *, key: str | None = None, value_format: str = "json",
          name: str | None = None, isolation_level: str = "read_uncommitted") -> Source:
    """Read Kafka ``topic`` under ``eddies worker``; ``key`` is the field it is partitioned
    by (a key_by on it needs no repartition); ``isolation_level="read_committed"`` reads
    another job's exactly-once output. See ``eddies.operators.kafka``."""
    from eddies.operators.kafka import kafka_source

    return kafka_source(topic, key=key, value_format=value_format, name=name,
                        isolation_level=isolation_level)
