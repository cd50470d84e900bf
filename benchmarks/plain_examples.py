"""Plain-Python twins of the example jobs (``examples/*.py``): the yardstick of ``--examples``.

Each twin is a hand-written loop over the same JSONL input (``json.loads`` per line, state in
dicts, output written with ``json.dumps``) that must give exactly what the example gives when
run as ``ed.run_local(build(...), "memory")``: the same output lines in every output file
(late side output included), the same dead letters (by line) and the same count of dropped
late events. ``benchmarks/examples.py`` checks that on every run.

The runtime rules they follow (``eddies/runtime/local.py``, ``executor.py``, ``keyed.py``):

- Input is read in micro-batches of ``batch`` non-blank lines (2,000: ``run_local``'s
  default); a malformed line counts in its batch. Results do not depend on the batches:
  every event is handled with the watermark the events before it left, ``max timestamp so
  far - max_out_of_orderness - 1``, and only when it rises do event-time timers fire, in time
  order. At the end of input it is +infinity.
- A line that is not JSON, a record without a usable timestamp (an int, or a finite float
  taken as int, within 2**62 of the epoch) or without a storable key is a dead letter.
- An event-time TTL entry written at record time ``t`` reads as absent once the watermark
  reaches ``t + ttl``.

Decisions:

- fraud: the one-minute timer clears a flag only when ``small_at + 60 s <= timer time``, but
  by then the flag's 60 s TTL (stamped ``small_at + 60 s``) already hides it from the timer's
  read, so the timer never changes anything; the twin reads the flag as absent once the
  watermark reaches ``small_at + 60 s`` and keeps no timers. ``recent`` (1 h TTL) is a deque
  of expiry times per card, expired ones dropped from the front, counted exactly when an
  alert needs the length. The source's ``idle_timeout`` (30 s of wall time without events)
  never triggers on a file read in one go, so the twin has no idleness.
- page_views: a minute window fires (emits) at the first watermark rise that reaches its last
  millisecond, and is forgotten once the watermark reaches that millisecond + 10 s (the
  lateness); clicks for a forgotten window go to the late output, clicks for a fired one
  re-emit it at once.
  A window first opened by a click already behind its end is emitted with each of its
  clicks and never at a watermark rise (Flink's event-time trigger). Sessions merge as the
  runtime does: the user's sessions in start order, absorbing every one that overlaps or
  touches the growing interval, clicks kept in that order (float sums depend on it); a
  click whose merged session would already be closed is dropped and counted.
- broadcast_rules: two sources, read as the runner does, one micro-batch of each per round,
  rules first (they are the job's first source): rules update the versions at once,
  payments wait until the smaller of the two watermarks (rules: ``max ts - 1``, payments:
  ``max ts - 2 s - 1``) reaches their time and are then judged against the versions read so
  far. With the example's four rules in one file, they are all read in the first round.
- ``json.loads`` is not ``orjson.loads``: NaN/Infinity literals and escaped lone surrogates
  parse here and are dead letters in eddies, integers beyond 64 bits are ints here and
  floats there, and the file is read as strict UTF-8 (invalid UTF-8 stops the twin with an
  error instead of a dead letter). The generated inputs hold none of these. Keys are used as
  dict keys, so ``1``, ``1.0`` and ``True`` would share state here and not in eddies; the
  inputs' keys are all str.
- The twins run at Python's default GC thresholds (``run_local`` raises the young
  generation's to 100,000 while it runs), like the twins of ``benchmarks/jobs.py``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

__all__ = ["BATCH", "PLAIN", "broadcast_rules", "fraud", "page_views", "user_counts"]

BATCH = 2_000
MIN_TIME = -(2**63)
MAX_TIME = 2**63 - 1
TS_LIMIT = 2**62
BLANK = " \t\r\n\x0b\x0c"  # what counts as a blank line (bytes.strip's whitespace)
RECORD_ERRORS = (KeyError, TypeError, IndexError, AttributeError, ValueError)
KEY_TYPES = (type(None), bool, int, float, str, bytes)
MISSING: Any = object()

Counts = dict[str, Any]
"""What a twin returns: ``events`` (non-blank lines read), ``dead_letters`` (their
``[source file name, line]``) and ``late_dropped``."""


def _timestamp(ts: Any) -> int | None:
    """The event time of a record whose ``ts`` is not a plain int, or None (a dead letter)."""
    if type(ts) is float and math.isfinite(ts):
        ts = int(ts)
    elif type(ts) is not int:
        return None
    return ts if -TS_LIMIT <= ts <= TS_LIMIT else None


def _storable(key: Any) -> bool:
    """Whether eddies can store ``key``, a JSON value that is not a str."""
    return type(key) in KEY_TYPES


def _open(path: Path) -> Any:
    return open(path, encoding="utf-8", newline="\n")  # lines end at \n only, as in eddies


def _write(path: Path) -> Any:
    return open(path, "w", encoding="utf-8")


# -- user_counts -------------------------------------------------------------------------------
def user_counts(source: Path, output: Path, batch: int = BATCH) -> Counts:
    """A running count and total amount per user, one output line per click."""
    loads, dumps = json.loads, json.dumps
    count: dict[Any, int] = {}
    total: dict[Any, Any] = {}
    dead: list[list[Any]] = []
    events = 0
    name = source.name
    with _open(source) as f, _write(output) as out:
        write = out.write
        for lineno, line in enumerate(f, 1):
            try:
                event = loads(line)
            except ValueError:
                if line.strip(BLANK):
                    events += 1
                    dead.append([name, lineno])
                continue
            events += 1
            try:
                ts = event["ts"]
                user = event["user"]
            except RECORD_ERRORS:
                dead.append([name, lineno])
                continue
            if type(ts) is not int or not -TS_LIMIT <= ts <= TS_LIMIT:
                ts = _timestamp(ts)
                if ts is None:
                    dead.append([name, lineno])
                    continue
            if type(user) is not str and not _storable(user):
                dead.append([name, lineno])
                continue
            n = count.get(user, 0) + 1
            count[user] = n
            amount = event.get("amount", 0)
            t = total.get(user)
            t = total[user] = amount if t is None else round(t + amount, 2)
            write(dumps({"user": user, "count": n, "total": t, "ts": ts}))
            write("\n")
    return {"events": events, "dead_letters": dead, "late_dropped": 0}


# -- fraud -------------------------------------------------------------------------------------
SMALL, LARGE, WINDOW_MS, HOUR_MS, FRAUD_DELAY = 1.00, 500.00, 60_000, 3_600_000, 5_000


def fraud(source: Path, output: Path, batch: int = BATCH) -> Counts:
    """A tiny payment followed within a minute of event time by a large one raises an alert."""
    loads, dumps = json.loads, json.dumps
    small_at: dict[Any, int] = {}  # card -> ts of its tiny payment (expires 60 s later)
    recent: dict[Any, deque[int]] = {}  # card -> expiry times of its payments (1 h)
    dead: list[list[Any]] = []
    events = 0
    name = source.name
    wm = max_ts = MIN_TIME
    with _open(source) as f, _write(output) as out:
        write = out.write
        for lineno, line in enumerate(f, 1):
            try:
                event = loads(line)
            except ValueError:
                if line.strip(BLANK):
                    events += 1
                    dead.append([name, lineno])
                continue
            events += 1
            try:
                ts = event["ts"]
            except RECORD_ERRORS:
                dead.append([name, lineno])
                continue
            if type(ts) is not int or not -TS_LIMIT <= ts <= TS_LIMIT:
                ts = _timestamp(ts)
                if ts is None:
                    dead.append([name, lineno])
                    continue
            watermark = wm  # this event's; the next one sees the watermark it moves
            if ts > max_ts:
                max_ts = ts
                if ts - FRAUD_DELAY - 1 > wm:
                    wm = ts - FRAUD_DELAY - 1
            try:
                card = event["card"]
            except RECORD_ERRORS:
                dead.append([name, lineno])
                continue
            if type(card) is not str and not _storable(card):
                dead.append([name, lineno])
                continue
            amount = float(event["amount"])
            payments = recent.get(card)
            if payments is None:
                payments = recent[card] = deque()
            payments.append(ts + HOUR_MS)
            while payments and payments[0] <= watermark:
                payments.popleft()
            s = small_at.get(card)
            if s is not None:
                if s + WINDOW_MS <= watermark:  # expired
                    del small_at[card]
                elif amount > LARGE and 0 <= ts - s <= WINDOW_MS:
                    write(dumps({"card": card, "alert": True, "small_at": s, "large_at": ts,
                                 "amount": amount,
                                 "recent_payments": sum(1 for e in payments
                                                        if e > watermark)}))
                    write("\n")
                    del small_at[card]
            if amount < SMALL:
                small_at[card] = ts
    return {"events": events, "dead_letters": dead, "late_dropped": 0}


# -- page_views --------------------------------------------------------------------------------
MINUTE_MS, LATENESS_MS, GAP_MS, VIEWS_DELAY = 60_000, 10_000, 30_000, 2_000


def page_views(source: Path, views_out: Path, sessions_out: Path, late_out: Path,
               batch: int = BATCH) -> Counts:
    """Views per page per minute (10 s lateness, late clicks to their own output) and user
    sessions closed after 30 s without a click."""
    loads, dumps = json.loads, json.dumps
    windows: dict[tuple[Any, int], list[Any]] = {}  # (page, start) -> [count, fired]
    sessions: dict[Any, list[list[Any]]] = {}  # user -> [[start, end, clicks]] by start
    dead: list[list[Any]] = []
    events = dropped = 0
    name = source.name
    wm = max_ts = MIN_TIME
    due = MAX_TIME  # at or below the next watermark anything fires or closes at
    with (_open(source) as f, _write(views_out) as vout, _write(sessions_out) as sout,
          _write(late_out) as lout):
        vwrite, swrite, lwrite = vout.write, sout.write, lout.write

        def advance(wm: int) -> int:
            """Fire and close what the watermark reached; returns the next due time."""
            due = MAX_TIME
            for (page, start), w in list(windows.items()):
                last = start + MINUTE_MS - 1
                if last <= wm and not w[1]:
                    w[1] = True
                    vwrite(dumps({"key": page, "start": start, "end": start + MINUTE_MS,
                                  "value": w[0]}) + "\n")
                if last + LATENESS_MS <= wm:
                    del windows[(page, start)]
                else:
                    due = min(due, last if not w[1] else last + LATENESS_MS)
            for user in [u for u, ws in sessions.items() if ws[0][1] - 1 <= wm]:
                ws = sessions[user]
                while ws and ws[0][1] - 1 <= wm:  # by start is by end: sessions are disjoint
                    start, end, clicks = ws.pop(0)
                    summary = {"clicks": len(clicks),
                               "pages": sorted({str(c["page"]) for c in clicks
                                                if c.get("page") is not None}),
                               "spent": round(sum(c.get("amount", 0) for c in clicks), 2)}
                    swrite(dumps({"key": user, "start": start, "end": end,
                                  "value": summary}) + "\n")
                if not ws:
                    del sessions[user]
            for ws in sessions.values():
                due = min(due, ws[0][1] - 1)
            return due

        for lineno, line in enumerate(f, 1):
            if max_ts - VIEWS_DELAY - 1 > wm:  # the watermark the events so far left
                wm = max_ts - VIEWS_DELAY - 1
                if wm >= due:
                    due = advance(wm)
            try:
                event = loads(line)
            except ValueError:
                if line.strip(BLANK):
                    events += 1
                    dead.append([name, lineno])
                continue
            events += 1
            try:
                ts = event["ts"]
            except RECORD_ERRORS:
                dead.append([name, lineno])
                continue
            if type(ts) is not int or not -TS_LIMIT <= ts <= TS_LIMIT:
                ts = _timestamp(ts)
                if ts is None:
                    dead.append([name, lineno])
                    continue
            if ts > max_ts:
                max_ts = ts
            # Views per page and minute (the event is a dict: it had a "ts").
            page = event.get("page", MISSING)
            if page is MISSING or (type(page) is not str and not _storable(page)):
                dead.append([name, lineno])  # a dead letter of this operator; sessions run on
            else:
                start = ts - ts % MINUTE_MS
                last = start + MINUTE_MS - 1
                if last + LATENESS_MS <= wm:
                    lwrite(dumps(event) + "\n")
                else:
                    w = windows.get((page, start))
                    if w is None:
                        w = windows[(page, start)] = [0, last <= wm]
                        due = min(due, last + LATENESS_MS if last <= wm else last)
                    w[0] += 1
                    if last <= wm:  # fired already: an update within the lateness
                        vwrite(dumps({"key": page, "start": start, "end": start + MINUTE_MS,
                                      "value": w[0]}) + "\n")
            # Sessions per user.
            user = event.get("user", MISSING)
            if user is MISSING or (type(user) is not str and not _storable(user)):
                dead.append([name, lineno])
                continue
            lo, hi = ts, ts + GAP_MS
            ws = sessions.get(user)
            absorbed = []
            if ws:
                for w in ws:
                    if w[0] <= hi and lo <= w[1]:
                        absorbed.append(w)
                        if w[0] < lo:
                            lo = w[0]
                        if w[1] > hi:
                            hi = w[1]
            if hi - 1 <= wm:
                dropped += 1
                continue
            if ws is None:
                ws = sessions[user] = []
            clicks = []
            for w in absorbed:
                clicks += w[2]
                ws.remove(w)
            clicks.append(event)
            at = 0
            while at < len(ws) and ws[at][0] < lo:
                at += 1
            ws.insert(at, [lo, hi, clicks])
            due = min(due, hi - 1)
        advance(MAX_TIME)
    return {"events": events, "dead_letters": dead, "late_dropped": dropped}


# -- broadcast_rules ---------------------------------------------------------------------------
PAYMENTS_DELAY = 2_000


def _batches(f: Any, batch: int) -> Iterator[tuple[list[str], bool]]:
    """The lines of each read of eddies' file reader, and whether it found the end: ``batch``
    lines, topped up to ``batch`` non-blank ones if any was blank; the end is a short read."""
    while True:
        lines = list(islice(f, batch))
        done = len(lines) < batch
        if not done and any(not raw.strip(BLANK) for raw in lines):
            count = sum(1 for raw in lines if raw.strip(BLANK))
            while count < batch:
                raw = f.readline()
                if not raw:
                    done = True
                    break
                lines.append(raw)
                if raw.strip(BLANK):
                    count += 1
        yield lines, done
        if done:
            return


def broadcast_rules(payments: Path, rules: Path, output: Path, batch: int = BATCH) -> Counts:
    """Each payment judged by its category's limit in force at its event time, once both
    inputs' watermarks have passed that time."""
    loads, dumps = json.loads, json.dumps
    heappush, heappop = heapq.heappush, heapq.heappop
    versions: dict[Any, list[list[Any]]] = {}  # category -> [[valid_from, limit]] sorted
    pending: dict[tuple[Any, int, Any], Any] = {}  # (card, ts, id) -> payment
    due: list[tuple[int, int, tuple[Any, int, Any]]] = []  # heap of (ts, seq, pending key)
    dead: list[list[Any]] = []
    events = 0
    wm = rules_wm = payments_wm = rules_max = payments_max = MIN_TIME
    seq = 0
    with _open(rules) as rf, _open(payments) as pf, _write(output) as out:
        write = out.write
        rule_reads, payment_reads = _batches(rf, batch), _batches(pf, batch)
        rules_line = payments_line = 0
        rules_done = payments_done = False
        while not (rules_done and payments_done):
            if not rules_done:
                lines, rules_done = next(rule_reads)
                for line in lines:
                    rules_line += 1
                    try:
                        rule = loads(line)
                    except ValueError:
                        if line.strip(BLANK):
                            events += 1
                            dead.append([rules.name, rules_line])
                        continue
                    events += 1
                    try:
                        ts = rule["ts"]
                    except RECORD_ERRORS:
                        dead.append([rules.name, rules_line])
                        continue
                    if type(ts) is not int or not -TS_LIMIT <= ts <= TS_LIMIT:
                        ts = _timestamp(ts)
                        if ts is None:
                            dead.append([rules.name, rules_line])
                            continue
                    rules_max = max(rules_max, ts)
                    category_versions = list(versions.get(rule["category"], []))
                    category_versions.append([rule["ts"], rule["limit"]])
                    category_versions.sort()
                    versions[rule["category"]] = category_versions
                rules_wm = MAX_TIME if rules_done else max(rules_wm, rules_max - 1)
            if not payments_done:
                lines, payments_done = next(payment_reads)
                for line in lines:
                    payments_line += 1
                    try:
                        payment = loads(line)
                    except ValueError:
                        if line.strip(BLANK):
                            events += 1
                            dead.append([payments.name, payments_line])
                        continue
                    events += 1
                    try:
                        ts = payment["ts"]
                    except RECORD_ERRORS:
                        dead.append([payments.name, payments_line])
                        continue
                    if type(ts) is not int or not -TS_LIMIT <= ts <= TS_LIMIT:
                        ts = _timestamp(ts)
                        if ts is None:
                            dead.append([payments.name, payments_line])
                            continue
                    if ts > payments_max:
                        payments_max = ts
                    try:
                        card = payment["card"]
                    except RECORD_ERRORS:
                        dead.append([payments.name, payments_line])
                        continue
                    if type(card) is not str and not _storable(card):
                        dead.append([payments.name, payments_line])
                        continue
                    key = (card, ts, payment["id"])
                    pending[key] = payment
                    seq += 1
                    heappush(due, (ts, seq, key))
                payments_wm = (MAX_TIME if payments_done
                               else max(payments_wm, payments_max - PAYMENTS_DELAY - 1))
            new = min(rules_wm, payments_wm)
            if new <= wm:
                continue
            wm = new
            while due and due[0][0] <= wm:
                key = heappop(due)[2]
                payment = pending.pop(key, None)
                if payment is None:  # judged already (a second payment with the same key)
                    continue
                card, ts, _ = key
                limit = None
                for valid_from, value in versions.get(payment["category"], []):
                    if valid_from <= ts:
                        limit = value
                if limit is not None and payment["amount"] > limit:
                    write(dumps({"card": card, "payment": payment["id"], "ts": ts,
                                 "category": payment["category"], "amount": payment["amount"],
                                 "limit": limit}))
                    write("\n")
    return {"events": events, "dead_letters": dead, "late_dropped": 0}


PLAIN: dict[str, Callable[..., Counts]] = {
    "user_counts": user_counts,
    "fraud": fraud,
    "page_views": page_views,
    "broadcast_rules": broadcast_rules,
}
