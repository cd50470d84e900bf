"""Bad input: every malformed record lands in dead letters with its reason; nothing valid is lost."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import eddies as ed

N_VALID = 4_000
N_BAD = 1_000

# (raw line, expected reason fragment): every kind of malformed JSONL record.
BAD_JSONL: list[tuple[bytes, str]] = [
    (b'{"user": "u1", "ts": ', "invalid JSON"),
    (b"not json at all", "invalid JSON"),
    (b'{"user": "u1", "ts": 5, "amount": 1}}', "invalid JSON"),
    (b'{"user": "u1", "ts": NaN, "amount": 1}', "invalid JSON"),
    (b'{"user": "\xff\xfe", "ts": 5, "amount": 1}', "invalid JSON"),  # not UTF-8
    (b'{"ts": 1700000000000, "amount": 3.5}', "no key"),
    (b'{"usr": "u1", "ts": 1700000000000, "amount": 3.5}', "no key"),
    (b'{"user": "u2", "amount": 3.5}', "no timestamp"),
    (b'{"user": "u2", "ts": "1700000000000", "amount": 3.5}', "bad timestamp"),
    (b'{"user": "u2", "ts": null, "amount": 3.5}', "bad timestamp"),
    (b'{"user": "u2", "ts": true, "amount": 3.5}', "bad timestamp"),
    (b'{"user": "u2", "ts": 1e300, "amount": 3.5}', "bad timestamp"),
    (b'{"user": "u2", "ts": 100000000000000000000000, "amount": 3.5}', "bad timestamp"),
    (b"[1, 2, 3]", "no timestamp"),
    (b"42", "no timestamp"),
    (b'"just a string"', "no timestamp"),
    (b'{"user": ["a", "list"], "ts": 1700000000000, "amount": 3.5}', "key"),
]


class Totals(ed.KeyedProcessFunction):
    count = ed.ValueState("count", default=0)
    total = ed.ValueState("total", default=0.0)

    def on_event(self, event, ctx):
        self.count.set(self.count.get() + 1)
        self.total.set(round(self.total.get() + event["amount"], 2))
        yield {"user": ctx.key, "count": self.count.get(), "total": self.total.get()}


def reference(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    totals: dict[str, float] = {}
    out = []
    for e in valid:
        counts[e["user"]] += 1
        totals[e["user"]] = round(totals.get(e["user"], 0.0) + e["amount"], 2)
        out.append({"user": e["user"], "count": counts[e["user"]], "total": totals[e["user"]]})
    return out


def mixed_jsonl(path: Path, seed: int) -> tuple[list[dict], dict[int, tuple[bytes, str]]]:
    """Valid events with N_BAD malformed lines at random places; returns the valid events and
    {line number: (raw, reason)} of the bad ones."""
    rng = random.Random(seed)
    valid = [{"user": f"u{rng.randrange(50)}", "ts": 1_700_000_000_000 + i * 10 -
              rng.randint(0, 2_000), "amount": round(rng.uniform(1, 99), 2)}
             for i in range(N_VALID)]
    bad_at = set(rng.sample(range(N_VALID + N_BAD), N_BAD))
    lines: list[bytes] = []
    bad: dict[int, tuple[bytes, str]] = {}
    it = iter(valid)
    for i in range(N_VALID + N_BAD):
        if i in bad_at:
            raw, reason = BAD_JSONL[len(bad) % len(BAD_JSONL)]
            bad[i + 1] = (raw, reason)
            lines.append(raw)
        else:
            lines.append(json.dumps(next(it)).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return valid, bad


def jsonl_job(source: Path, out: ed.sinks.CollectSink) -> ed.Job:
    job = ed.Job("bad-input")
    (job.source(ed.sources.jsonl(source), timestamp="ts",
                watermarks=ed.BoundedOutOfOrderness(2_000))
        .key_by("user").process(Totals()).sink(out))
    return job


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_malformed_jsonl_lines_all_go_to_dead_letters(tmp_path: Path, state: str) -> None:
    source = tmp_path / "events.jsonl"
    valid, bad = mixed_jsonl(source, seed=17)
    dead_file = tmp_path / "dead.jsonl"
    out = ed.sinks.collect()
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'st'}"
    result = ed.run_local(jsonl_job(source, out), spec, dead_letters=dead_file,
                          checkpoint_interval=700)

    assert result.collected(out) == reference(valid)  # every valid record, in order
    assert result.stats.dead_letters == N_BAD
    assert result.stats.events_in == N_VALID + N_BAD
    from_file = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert from_file == result.dead_letters
    assert len(from_file) == N_BAD
    by_line = {d["position"]["line"]: d for d in from_file}
    assert by_line.keys() == bad.keys()
    offsets = _line_offsets(source.read_bytes())
    for line, (raw, reason) in bad.items():
        letter = by_line[line]
        assert reason in letter["reason"], (raw, letter)
        assert letter["raw"] == raw.decode("utf-8", "replace")  # the raw text, as it was
        assert letter["position"]["offset"] == offsets[line]
        assert letter["position"]["file"] == str(source)
        assert letter["source"] == "events.jsonl"
    assert Counter(reason for _, reason in bad.values()) == Counter(
        next(r for r in ("invalid JSON", "no key", "no timestamp", "bad timestamp", "key")
             if r in d["reason"]) for d in from_file)


def _line_offsets(data: bytes) -> dict[int, int]:
    offsets, pos = {}, 0
    for i, line in enumerate(data.splitlines(keepends=True), start=1):
        offsets[i] = pos
        pos += len(line)
    return offsets


def test_dead_letter_reasons_are_specific(tmp_path: Path) -> None:
    source = tmp_path / "few.jsonl"
    source.write_bytes(b"\n".join(raw for raw, _ in BAD_JSONL) + b"\n")
    out = ed.sinks.collect()
    result = ed.run_local(jsonl_job(source, out))
    reasons = [d["reason"] for d in result.dead_letters]
    assert len(reasons) == len(BAD_JSONL) and not result.collected(out)
    assert "no key for operator 'Totals' (field 'user'): KeyError" in reasons[5]
    assert "no timestamp (field 'ts'): KeyError" in reasons[7]
    assert "bad timestamp '1700000000000': expected int ms since epoch" in reasons[8]
    assert "out of range" in reasons[12]


# -- CSV -----------------------------------------------------------------------------------------
BAD_CSV: list[tuple[str, str]] = [
    ("u1,1700000000000", "fields, header has 3"),
    ("u1,1700000000000,3.5,extra", "fields, header has 3"),
    ("u1", "fields, header has 3"),
    ("u1,soon,3.5", "field 'ts': cannot convert with int"),
    ("u1,1700000000000,lots", "field 'amount': cannot convert with float"),
    ("u1,,3.5", "field 'ts'"),
    ('u1,"1700000000000,3.5', "invalid CSV"),  # an unterminated quote must not eat lines
    ('u1,"17"00,3.5', "invalid CSV"),
]


def test_malformed_csv_rows_all_go_to_dead_letters(tmp_path: Path) -> None:
    rng = random.Random(23)
    valid = [{"user": f"u{rng.randrange(50)}", "ts": 1_700_000_000_000 + i * 10 -
              rng.randint(0, 2_000), "amount": round(rng.uniform(1, 99), 2)}
             for i in range(N_VALID)]
    bad_at = set(rng.sample(range(N_VALID + N_BAD), N_BAD))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["user", "ts", "amount"])
    bad: dict[int, tuple[str, str]] = {}
    it = iter(valid)
    for i in range(N_VALID + N_BAD):
        if i in bad_at:
            raw, reason = BAD_CSV[len(bad) % len(BAD_CSV)]
            bad[i + 2] = (raw, reason)  # line 1 is the header
            buf.write(raw + "\n")
        else:
            e = next(it)
            writer.writerow([e["user"], e["ts"], e["amount"]])
    source = tmp_path / "events.csv"
    source.write_text(buf.getvalue())

    job = ed.Job("bad-csv")
    out = ed.sinks.collect()
    dead_file = tmp_path / "dead.jsonl"
    (job.source(ed.sources.csv(source, types={"ts": int, "amount": float}), timestamp="ts")
        .key_by("user").process(Totals()).sink(out))
    result = ed.run_local(job, dead_letters=dead_file, batch_size=300)

    assert result.collected(out) == reference(valid)
    assert result.stats.dead_letters == N_BAD
    from_file = [json.loads(line) for line in dead_file.read_text().splitlines()]
    assert from_file == result.dead_letters
    by_line = {d["position"]["line"]: d for d in from_file}
    assert by_line.keys() == bad.keys()
    for line, (raw, reason) in bad.items():
        assert reason in by_line[line]["reason"], (raw, by_line[line])
        assert by_line[line]["raw"] == raw


def test_errors_of_key_and_timestamp_functions_on_bad_records_are_dead_letters() -> None:
    records = [{"user": "u1", "ts": "1000", "amount": 1.0},
               {"user": "u1", "ts": "soon", "amount": 1.0},      # int("soon"): ValueError
               {"user": "u2", "ts": "2000", "amount": 2.0},
               {"user": None, "ts": "3000", "amount": 3.0}]     # None.upper(): AttributeError
    job = ed.Job("callables")
    out = ed.sinks.collect()
    (job.source(ed.sources.iterable(records), timestamp=lambda e: int(e["ts"]))
        .key_by(lambda e: e["user"].upper()).process(Totals()).sink(out))
    result = ed.run_local(job)
    assert result.collected(out) == [{"user": "U1", "count": 1, "total": 1.0},
                                     {"user": "U2", "count": 1, "total": 2.0}]
    assert [(d["position"], d["reason"].split(":")[0]) for d in result.dead_letters] == [
        (1, "no timestamp (<lambda>)"), (3, "no key for operator 'Totals' (<lambda>)")]
