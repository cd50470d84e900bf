"""Each example job runs over its data files and produces what plain Python says it should."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
import examples.fraud as fraud
import examples.page_views as page_views
import examples.user_counts as user_counts
from eddies.runtime.watermarks import MAX_TIME, MIN_TIME

DATA = Path(user_counts.__file__).parent / "data"


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Valid records, and the line numbers of malformed ones."""
    good, bad = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(lineno)
    return good, bad


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# -- user_counts -----------------------------------------------------------------------------
def test_user_counts(tmp_path: Path) -> None:
    clicks, bad = read_jsonl(DATA / "clicks.jsonl")
    out = tmp_path / "counts.jsonl"
    result = ed.run_local(user_counts.build(DATA / "clicks.jsonl", out),
                          dead_letters=tmp_path / "dead.jsonl")
    counts: dict[str, int] = defaultdict(int)
    totals: dict[str, float] = {}
    expected = []
    for c in clicks:
        u = c["user"]
        counts[u] += 1
        totals[u] = c["amount"] if u not in totals else round(totals[u] + c["amount"], 2)
        expected.append({"user": u, "count": counts[u], "total": totals[u], "ts": c["ts"]})
    assert lines(out) == expected
    assert len(bad) == 5 and result.stats.dead_letters == 5
    assert [d["position"]["line"] for d in lines(tmp_path / "dead.jsonl")] == bad


# -- fraud -----------------------------------------------------------------------------------
def fraud_reference(payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts, computed in file order. The input spans less than the one-hour TTL of
    ``recent``, and is never more out of order than the 5 s bound, so neither the timers nor
    the TTL can clear a flag before a payment inside its minute is seen."""
    span = max(p["ts"] for p in payments) - min(p["ts"] for p in payments)
    assert span < 3_600_000
    small_at: dict[str, int] = {}
    seen: dict[str, int] = defaultdict(int)
    alerts = []
    for p in payments:
        card, ts, amount = p["card"], p["ts"], float(p["amount"])
        seen[card] += 1
        s = small_at.get(card)
        if s is not None and amount > fraud.LARGE and 0 <= ts - s <= fraud.WINDOW_MS:
            alerts.append({"card": card, "alert": True, "small_at": s, "large_at": ts,
                           "amount": amount, "recent_payments": seen[card]})
            del small_at[card]
        if amount < fraud.SMALL:
            small_at[card] = ts
    return alerts


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_fraud_alerts(tmp_path: Path, state: str) -> None:
    payments, bad = read_jsonl(DATA / "payments.jsonl")
    assert not bad
    out = tmp_path / "alerts.jsonl"
    spec = "memory" if state == "memory" else f"rocksdb:{tmp_path / 'st'}"
    result = ed.run_local(fraud.build(DATA / "payments.jsonl", out), spec,
                          checkpoint_interval=5_000)
    expected = fraud_reference(payments)
    assert lines(out) == expected
    assert len(expected) > 20
    assert result.stats.late_events == 0 and result.stats.watermark == MAX_TIME


def test_fraud_flag_expires_after_a_minute(tmp_path: Path) -> None:
    """The TTL and the timer both end the flag: a large payment 61 s after a small one is fine,
    even when nothing else arrives in between to move the watermark far."""
    t0 = 1_700_000_000_000
    rows = [{"card": "c1", "ts": t0, "amount": 0.5},
            {"card": "c1", "ts": t0 + 61_000, "amount": 900},
            {"card": "c2", "ts": t0 + 70_000, "amount": 0.5},
            {"card": "c2", "ts": t0 + 129_000, "amount": 900}]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "a.jsonl"
    ed.run_local(fraud.build(src, out), batch_size=1)
    assert [(a["card"], a["large_at"] - a["small_at"]) for a in lines(out)] == [("c2", 59_000)]


# -- page_views (windows) --------------------------------------------------------------------
MINUTE, LATENESS, GAP, OOO = 60_000, 10_000, 30_000, 2_000


def page_views_reference(clicks: list[dict[str, Any]]) -> tuple[dict, list, dict, int]:
    """Views per (page, minute) and sessions per user, record at a time: the watermark before
    each click is the highest timestamp so far minus 2 s (and 1 ms); timers fire as it moves."""
    views: dict[tuple[str, int], int] = defaultdict(int)
    views_fire: set[tuple[int, str, int]] = set()  # (end - 1, page, start) not yet fired
    views_emitted: dict[tuple[str, int], list[int]] = defaultdict(list)
    late: list[dict[str, Any]] = []
    sessions: dict[str, list[list[Any]]] = defaultdict(list)  # user -> [[start, end, clicks]]
    session_out: dict[tuple[str, int, int], dict] = {}
    dropped = 0
    wm = MIN_TIME
    max_ts = MIN_TIME

    def advance(new: int) -> None:
        for t, page, start in sorted(f for f in views_fire if f[0] <= new):
            views_fire.discard((t, page, start))
            views_emitted[(page, start)].append(views[(page, start)])
        for user, windows in sessions.items():
            for w in [w for w in windows if w[1] - 1 <= new]:
                session_out[(user, w[0], w[1])] = page_views.session_summary(
                    user, None, w[2])
                windows.remove(w)

    for c in clicks:
        ts, page, user = c["ts"], c["page"], c["user"]
        start = ts - ts % MINUTE
        if start + MINUTE - 1 + LATENESS <= wm:
            late.append(c)
        else:
            if (page, start) not in views:
                views_fire.add((start + MINUTE - 1, page, start))
            views[(page, start)] += 1
            if start + MINUTE - 1 <= wm:  # fired already: an update within the lateness
                views_emitted[(page, start)].append(views[(page, start)])
        s, e = ts, ts + GAP
        absorbed = []
        for w in sorted(sessions[user], key=lambda w: (w[0], w[1])):
            if w[0] <= e and s <= w[1]:
                absorbed.append(w)
                s, e = min(s, w[0]), max(e, w[1])
        if e - 1 <= wm:
            dropped += 1
        else:
            merged = [x for w in absorbed for x in w[2]] + [c]
            for w in absorbed:
                sessions[user].remove(w)
            sessions[user].append([s, e, merged])
        max_ts = max(max_ts, ts)
        if max_ts - OOO - 1 > wm:
            wm = max_ts - OOO - 1
            advance(wm)
    advance(MAX_TIME)
    return views_emitted, late, session_out, dropped


def very_late_clicks(tmp_path: Path) -> Path:
    """The example's clicks with some sent again 15 to 90 s behind, to reach the lateness
    limits of both windows."""
    clicks, _ = read_jsonl(DATA / "clicks.jsonl")
    rng = random.Random(4)
    mixed = []
    for i, c in enumerate(clicks):
        mixed.append(c)
        if i > 500 and rng.random() < 0.05:
            mixed.append(dict(c, ts=c["ts"] - rng.choice([15_000, 45_000, 65_000, 90_000])))
    path = tmp_path / "late_clicks.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in mixed))
    return path


@pytest.mark.parametrize("data", ["example", "very-late"])
def test_page_views_and_sessions(tmp_path: Path, data: str) -> None:
    source = DATA / "clicks.jsonl" if data == "example" else very_late_clicks(tmp_path)
    clicks, _ = read_jsonl(source)
    views_out, sessions_out, late_out = (tmp_path / n for n in ("v.jsonl", "s.jsonl", "l.jsonl"))
    job = page_views.build(source, views_out, sessions_out, late_out)
    # One record per round, so the reference can follow the watermark record by record.
    result = ed.run_local(job, batch_size=1)
    views, late, sessions, dropped = page_views_reference(clicks)

    emitted: dict[tuple[str, int], list[int]] = defaultdict(list)
    for v in lines(views_out):
        assert v["end"] - v["start"] == MINUTE
        emitted[(v["key"], v["start"])].append(v["value"])
    assert emitted.keys() == views.keys()
    # Every window's last result is its count of on-time and allowed-late clicks, and updates
    # only ever grow.
    assert {k: v[-1] for k, v in emitted.items()} == {k: v[-1] for k, v in views.items()}
    assert all(v == sorted(v) for v in emitted.values())
    assert lines(late_out) == late
    if data == "very-late":
        assert late and dropped and any(len(v) > 1 for v in views.values())

    got_sessions = {(s["key"], s["start"], s["end"]): s["value"] for s in lines(sessions_out)}
    assert got_sessions == sessions
    assert result.stats.late_dropped == dropped


def test_page_views_click_without_page(tmp_path: Path) -> None:
    """A click with no page has no key on the views side (a dead letter there) but is still
    its user's click: the session counts it, and the job finishes."""
    source = tmp_path / "clicks.jsonl"
    clicks = [{"user": "u1", "page": "/a", "ts": 1_000, "amount": 2.5},
              {"user": "u1", "ts": 5_000, "amount": 1.0},
              {"user": "u1", "page": "/b", "ts": 9_000}]
    source.write_text("".join(json.dumps(c) + "\n" for c in clicks))
    views_out, sessions_out, late_out = (tmp_path / n for n in ("v.jsonl", "s.jsonl", "l.jsonl"))
    result = ed.run_local(page_views.build(source, views_out, sessions_out, late_out))
    assert [d["reason"] for d in result.dead_letters] == [
        "no key for operator 'views-per-minute' (field 'page'): KeyError: 'page'"]
    assert [s["value"] for s in lines(sessions_out)] == [
        {"clicks": 3, "pages": ["/a", "/b"], "spent": 3.5}]
    assert sorted((v["key"], v["value"]) for v in lines(views_out)) == [("/a", 1), ("/b", 1)]
