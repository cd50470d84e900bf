"""A CSV source resumed from a position saved before its header existed (an empty file, or a
header still without its newline) starts at the line after the header: the header is never
read as a record."""

from __future__ import annotations

from pathlib import Path

import eddies as ed
from eddies.operators import sources


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_a_position_saved_while_the_header_had_no_newline_resumes_after_it(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("card,amount")  # the header, its newline not written yet
    reader = sources.csv(path, types={"amount": int}, follow=True).partitions()[0]
    assert reader.read(10) == ([], [])
    saved = reader.position
    assert saved == [0, 0]
    reader.close()
    append(path, "\nalice,1\nbob,2\n")
    resumed = sources.csv(path, types={"amount": int}, follow=True).partitions()[0]
    resumed.seek(saved)
    assert resumed.read(10) == ([{"card": "alice", "amount": 1},
                                 {"card": "bob", "amount": 2}], [])
    assert resumed.position == [26, 3]
    resumed.close()


def test_a_run_over_an_empty_csv_resumes_after_the_header_written_since(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("")  # the producer has not written yet

    def job() -> ed.Job:
        j = ed.Job("c")
        j.source(ed.sources.csv(src)).sink(ed.sinks.jsonl(tmp_path / "out.jsonl"))
        return j

    first = ed.run_local(job(), f"rocksdb:{tmp_path / 'st'}")
    assert first.stats.this_run("events_in") == 0
    src.write_text("card,amount\nalice,1\nbob,2\n")
    second = ed.run_local(job(), f"rocksdb:{tmp_path / 'st'}")
    assert second.stats.this_run("events_in") == 2 and second.stats.dead_letters == 0
    assert (tmp_path / "out.jsonl").read_text() == (
        '{"card":"alice","amount":"1"}\n{"card":"bob","amount":"2"}\n')


def test_a_position_past_the_header_is_kept(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("card,amount\nalice,1\nbob,2\n")
    reader = sources.csv(path).partitions()[0]
    assert reader.read(1) == ([{"card": "alice", "amount": "1"}], [])
    saved = reader.position
    reader.close()
    resumed = sources.csv(path).partitions()[0]
    resumed.seek(saved)
    assert resumed.read(10) == ([{"card": "bob", "amount": "2"}], [])
    resumed.close()
