"""Bulk source reads: the CSV split fast path and bulk JSONL parsing agree with a line-by-line
reference on records, dead letters, positions and ``locate``, whatever the batch size."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eddies as ed

CSV_LINES = ["a,1,2.5", "b,2,3", "c,x,1", "d,3", "e,4,5,6", '"q,u",5,1.0', 'x,"6",2',
             '"bad,1,2', "", "  ", "\t", "f,7,8\r", "g\r,8,9", "é,9,1", "h,10,1\x00", ",,",
             "i,11,inf"]
JSONL_LINES = ['{"a":1}', '{"a":', "", " ", "[1,2]", '"s"', '{"a":"\\u00e9"}', '{"a":1}\r',
               "nope", "3",
               # ints beyond 64 bits stay exact ints (orjson alone gives rounded floats)
               '{"id":100000000000000000000000000001}', "[-9223372036854775809,18446744073709551617]",
               '{"s":"123456789012345678901234","n":18446744073709551615}', "-12345678901234567891"]
TYPES = [{}, {"ts": int}, {"ts": int, "amount": float}, {"zz": int}]


def reference_csv(data: bytes, types: dict[str, Any]) -> tuple[list, list]:
    """Records and dead letters (line, reason prefix), one line at a time with csv.reader."""
    lines = file_lines(data)
    header = next(csv.reader([lines[0].decode("utf-8-sig")]))
    records, dead = [], []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            row = next(csv.reader([raw.decode("utf-8")], strict=True))
        except (UnicodeDecodeError, csv.Error):
            dead.append((number, "invalid CSV"))
            continue
        if len(row) != len(header):
            dead.append((number, "CSV row has"))
            continue
        record = dict(zip(header, row, strict=True))
        try:
            for name, convert in types.items():
                record[name] = convert(record[name])
        except (ValueError, TypeError, KeyError):
            dead.append((number, "field"))
            continue
        records.append((number, record))
    return records, dead


def read_all(source: ed.sources.Source, batch: int) -> tuple[list, list]:
    reader = source.partitions()[0]
    records, dead = [], []
    while not reader.done:
        values, letters = reader.read(batch)
        for i, value in enumerate(values):
            where, raw = reader.locate(i)
            records.append((where["line"], value, where["offset"], raw))
        assert reader.locate(len(values)) is None and reader.locate(-1) is None
        dead.extend((d.position["line"], d.reason, d.position["offset"], d.raw) for d in letters)
    reader.close()
    return records, dead


def file_lines(data: bytes) -> list[bytes]:
    """Lines as a file iterates them: each ends after an LF (a lone CR is inside a line)."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    if data.endswith(b"\n"):
        lines.pop()
    else:
        lines[-1] = lines[-1][:-1]
    return lines


def offsets(data: bytes) -> dict[int, tuple[int, str]]:
    out, pos = {}, 0
    for number, raw in enumerate(file_lines(data), start=1):
        out[number] = (pos, raw.decode("utf-8", "replace").rstrip("\r\n"))
        pos += len(raw)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.sampled_from(CSV_LINES), max_size=40),
    clean=st.booleans(),
    header=st.sampled_from(["k,ts,amount", "k,ts,amount\r", "\ufeffk,ts,amount", "k,ts",
                            "k,k,amount"]),
    types=st.sampled_from(TYPES),
    batch=st.integers(1, 12),
    newline_at_end=st.booleans(),
)
def test_csv_matches_the_line_by_line_reference(tmp_path: Path, lines, clean, header, types,
                                                batch, newline_at_end) -> None:
    if clean:  # mostly the fast path: well-formed rows only
        lines = [line for line in lines if line in ("a,1,2.5", "b,2,3")]
    data = (header + "\n" + "\n".join(lines)).encode() + (b"\n" if newline_at_end else b"")
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    expected_records, expected_dead = reference_csv(data, types)
    records, dead = read_all(ed.sources.csv(path, types=types), batch)
    where = offsets(data)
    assert [(n, r) for n, r, _, _ in records] == expected_records
    assert [(n, reason.split(" ")[0]) for n, reason, _, _ in dead] == [
        (n, r.split(" ")[0]) for n, r in expected_dead]
    for n, _, offset, raw in records + dead:
        assert (offset, raw) == where[n]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.sampled_from(JSONL_LINES), max_size=40), batch=st.integers(1, 12))
def test_jsonl_matches_the_line_by_line_reference(tmp_path: Path, lines, batch) -> None:
    data = "\n".join(lines).encode() + b"\n"
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    records, dead = read_all(ed.sources.jsonl(path), batch)
    expected, expected_dead = [], []
    for number, raw in enumerate(file_lines(data), start=1):
        if not raw.strip():
            continue
        try:
            expected.append((number, json.loads(raw)))
        except ValueError:
            expected_dead.append(number)
    assert [(n, r) for n, r, _, _ in records] == expected
    assert [n for n, _, _, _ in dead] == expected_dead
    where = offsets(data)
    for n, _, offset, raw in records + dead:
        assert (offset, raw) == where[n]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.sampled_from(CSV_LINES), max_size=40),
    clean=st.booleans(),
    types=st.sampled_from(TYPES[:3]),
    batch=st.integers(1, 12),
)
def test_csv_without_a_header_reads_every_line_as_a_record(tmp_path: Path, lines, clean, types,
                                                           batch) -> None:
    """fields= gives the names: the same records as the file with that header row on top,
    one line earlier, the first line included."""
    if clean:
        lines = [line for line in lines if line in ("a,1,2.5", "b,2,3")]
    body = "\n".join(lines).encode() + b"\n"
    (tmp_path / "bare.csv").write_bytes(body)
    (tmp_path / "headed.csv").write_bytes(b"k,ts,amount\n" + body)
    records, dead = read_all(
        ed.sources.csv(tmp_path / "bare.csv", fields=["k", "ts", "amount"], types=types), batch)
    h_records, h_dead = read_all(ed.sources.csv(tmp_path / "headed.csv", types=types), batch)
    shift = len(b"k,ts,amount\n")
    assert records == [(n - 1, r, offset - shift, raw) for n, r, offset, raw in h_records]
    assert dead == [(n - 1, reason.replace("header has", "fields= has"), offset - shift, raw)
                    for n, reason, offset, raw in h_dead]


def test_csv_without_a_header_in_a_job(tmp_path: Path) -> None:
    path = tmp_path / "payments.csv"
    path.write_text("alice,1000,12.5\nbob,2000,3\nalice,3000,x\n")
    job = ed.Job("bare-csv")
    out = ed.sinks.collect()
    (job.source(ed.sources.csv(path, fields=["card", "ts", "amount"],
                               types={"ts": int, "amount": float}), timestamp="ts")
        .sink(out))
    result = ed.run_local(job)
    assert result.collected(out) == [{"card": "alice", "ts": 1000, "amount": 12.5},
                                     {"card": "bob", "ts": 2000, "amount": 3.0}]
    assert [(d["position"]["line"], d["reason"].split(":")[0]) for d in result.dead_letters] == [
        (3, "field 'amount'")]


@pytest.mark.parametrize(("fields", "types", "message"), [
    ([], {}, "non-empty list of str"),
    ("card,ts", {}, "non-empty list of str"),
    (["card", 1], {}, "non-empty list of str"),
    (["card", "ts", "card"], {}, "'card' more than once"),
    (["card", "ts"], {"amount": float}, "converts 'amount', which fields= does not name"),
])
def test_csv_fields_are_checked_when_the_source_is_made(tmp_path: Path, fields, types,
                                                        message) -> None:
    with pytest.raises(ed.errors.ConfigError, match=message):
        ed.sources.csv(tmp_path / "x.csv", fields=fields, types=types)


def test_jsonl_big_ints_stay_exact_in_state_and_output(tmp_path: Path) -> None:
    """An id beyond 64 bits goes through the source, RocksDB state and the output unrounded."""
    path = tmp_path / "in.jsonl"
    big = 100000000000000000000000000001
    path.write_text(f'{{"k":"a","id":{big},"ts":1}}\n{{"k":"a","id":7,"ts":2}}\n'
                    f'{{"k":{-big},"id":1,"ts":3}}\n')

    class Keep(ed.KeyedProcessFunction):
        first = ed.ValueState("first")

        def on_event(self, event, ctx):
            if self.first.get() is None:
                self.first.set(event["id"])
            yield {"key": ctx.key, "first": self.first.get()}

    job = ed.Job("big")
    out = ed.sinks.collect()
    (job.source(ed.sources.jsonl(path), timestamp="ts").key_by("k").process(Keep()).sink(out))
    result = ed.run_local(job, f"rocksdb:{tmp_path / 'state'}", checkpoint_interval=1,
                          batch_size=1)
    got = result.collected(out)
    assert got == [{"key": "a", "first": big}, {"key": "a", "first": big},
                   {"key": -big, "first": 1}]
    assert type(got[1]["first"]) is int


def test_jsonl_in_jsonl_out_keeps_big_ints(tmp_path: Path) -> None:
    line = '{"id":100000000000000000000000000001,"neg":-9223372036854775809,"n":1.5}\n'
    (tmp_path / "in.jsonl").write_text(line)
    job = ed.Job("copy")
    job.source(ed.sources.jsonl(tmp_path / "in.jsonl")).sink(ed.sinks.jsonl(tmp_path / "out.jsonl"))
    result = ed.run_local(job)
    assert result.dead_letters == []
    assert (tmp_path / "out.jsonl").read_text() == line


def test_json_ints_beyond_a_double_are_exact_or_dead_letters(tmp_path: Path) -> None:
    """orjson refuses ints beyond 1e308; they are valid JSON and read exactly, up to the
    digits Python converts; longer ones go to dead letters, saying why; NaN stays refused."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"n":1}\n{"n":' + "9" * 5000 + '}\n{"n":' + "7" * 400 + '}\n'
                    '{"n":NaN,"m":' + "1" * 30 + "}\n")
    reader = ed.sources.jsonl(path).partitions()[0]
    records, dead = reader.read(10)
    assert records == [{"n": 1}, {"n": int("7" * 400)}]
    assert [(d.position["line"], d.reason.split(":")[0]) for d in dead] == [
        (2, "cannot read a number exactly"), (4, "invalid JSON")]


def test_a_long_digit_run_does_not_change_what_is_refused(tmp_path: Path) -> None:
    """A 20-digit run elsewhere in a line (which makes the reader re-parse it for exact ints)
    never turns a line orjson refuses into a record: a float beyond a double's range or a lone
    surrogate stays a dead letter, and nesting too deep to re-read is one, never a crash."""
    digits = '"card":"12345678901234567890"'
    deep = "[" * 1_010 + '"12345678901234567890"' + "]" * 1_010
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([
        '{"v":1e400,' + digits + "}", '{"v":"\\ud800",' + digits + "}", '{"v":' + deep + "}",
        '{"v":1,' + digits + "}"]) + "\n")
    reader = ed.sources.jsonl(path).partitions()[0]
    records, dead = reader.read(10)
    assert records == [{"v": 1, "card": "12345678901234567890"}]
    assert [(d.position["line"], d.reason.split(":")[0]) for d in dead] == [
        (1, "invalid JSON"), (2, "invalid JSON"), (3, "cannot read a number exactly")]


def test_a_record_with_a_big_int_keeps_orjsons_rules_for_the_rest() -> None:
    """Writing an int beyond 64 bits exactly does not change how the rest of the record is
    written: NaN is null and datetimes are ISO, as in any other record."""
    import datetime

    from eddies.operators.sinks import to_json_line

    record = {"id": 2**70, "x": float("nan"), "at": datetime.datetime(2024, 1, 2, 3, 4),
              "ids": [2**64, -(2**63) - 1, 5], "by_id": {2**70: True}}
    assert to_json_line(record) == (
        b'{"id":1180591620717411303424,"x":null,"at":"2024-01-02T03:04:00",'
        b'"ids":[18446744073709551616,-9223372036854775809,5],'
        b'"by_id":{"1180591620717411303424":true}}\n')


def test_a_resumed_csv_reader_continues_exactly(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("k,v\n" + "".join(f"k{i},{i}\n" for i in range(50)))
    reader = ed.sources.csv(path, types={"v": int}).partitions()[0]
    first, _ = reader.read(7)
    position = reader.position
    reader.close()
    again = ed.sources.csv(path, types={"v": int}).partitions()[0]
    again.seek(position)
    rest = []
    while not again.done:
        rest.extend(again.read(7)[0])
    assert [r["v"] for r in first + rest] == list(range(50))


def test_kafka_json_values_keep_big_ints() -> None:
    from eddies.operators.kafka import decode, encode

    data = b'{"id":100000000000000000000000000001,"n":[-9223372036854775809,1.5]}'
    value = decode("json", data)
    assert value == {"id": 100000000000000000000000000001, "n": [-9223372036854775809, 1.5]}
    assert encode("json", value) == data


def _csv_run(path: Path, batch: int = 100, **options: Any) -> tuple[list, list]:
    job = ed.Job("csv")
    out = ed.sinks.collect()
    job.source(ed.sources.csv(path, **options)).sink(out)
    result = ed.run_local(job, batch_size=batch)
    return result.collected(out), result.dead_letters


def test_a_converter_failing_with_an_arithmetic_error_is_a_dead_letter(tmp_path: Path) -> None:
    import decimal

    path = tmp_path / "in.csv"
    path.write_text("card,amt\na,1.5\nb,oops\nc,2\n")
    records, dead = _csv_run(path, types={"amt": decimal.Decimal})
    assert records == [{"card": "a", "amt": decimal.Decimal("1.5")},
                       {"card": "c", "amt": decimal.Decimal("2")}]
    assert [d["raw"] for d in dead] == ["b,oops"]
    assert "field 'amt': cannot convert with Decimal" in dead[0]["reason"]


def test_a_bom_is_no_part_of_the_first_field_without_a_header(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfalice,1\nbob,2\n")
    records, dead = _csv_run(path, fields=["card", "n"], types={"n": int})
    assert (records, dead) == ([{"card": "alice", "n": 1}, {"card": "bob", "n": 2}], [])


@pytest.mark.parametrize("batch", [1, 2])
def test_a_field_longer_than_the_csv_modules_limit_is_read_whatever_the_batch(
        tmp_path: Path, batch: int) -> None:
    path = tmp_path / "in.csv"
    long = "x" * 200_000
    path.write_text(f'k,v\na,{long}\nb,"quoted, {long}"\n')
    records, dead = _csv_run(path, batch=batch)
    assert dead == []
    assert [len(r["v"]) for r in records] == [200_000, 200_008]


def test_a_header_that_is_not_utf8_names_the_source_and_file(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"k\xff,v\na,1\n")
    with pytest.raises(ed.EddiesError, match=r"the header row of .*in\.csv' is not UTF-8"):
        _csv_run(path)
