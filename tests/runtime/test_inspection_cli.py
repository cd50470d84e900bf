"""``eddies state ls/get`` over the RocksDB dir of a real run, against MapState range reads.

One job run fills a MapState of 100 structured user keys x 100 structured map keys (10k
entries); each range option of the CLI is compared with ``MapState.entries`` over the same
dir, paging goes through all 10k entries, and the read-only view is used while another
process holds the dir.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import eddies as ed
from eddies.errors import StateDirLockedError
from eddies.runtime.cli import main
from eddies.runtime.inspection import parse_key_text
from eddies.state import KeyedStateStore, MapState, RocksDbStateBackend
from eddies.state.keys import as_tuple

SECTIONS = ("cart", "help", "home", "item")
USERS = [("user", u) for u in range(98)] + [("team", "a:b"), ("team", "a", "b")]


class Visits(ed.KeyedProcessFunction):
    visits = ed.MapState("visits")
    count = ed.ValueState("count", default=0)
    last = ed.ValueState("last", ttl=ed.Ttl(hours=1, time="processing"))

    def on_event(self, event: dict[str, Any], ctx: Any) -> None:
        self.visits.put((event["section"], event["n"]), {"ts": ctx.timestamp})
        self.count.set(self.count.get() + 1)
        self.last.set(event["n"])


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "state"
    events = [{"user": list(user), "section": s, "n": n, "ts": 1_000 + i}
              for i, (user, s, n) in enumerate(
                  (user, s, n) for n in range(25) for s in SECTIONS for user in USERS)]
    job = ed.Job("visits")
    (job.source(ed.sources.iterable(events), timestamp="ts")
        .key_by(lambda e: tuple(e["user"])).process(Visits()).sink(ed.sinks.collect()))
    result = ed.run_local(job, state=f"rocksdb:{path}", checkpoint_interval=3_000)
    assert result.stats.events_in == 10_000
    return path


@pytest.fixture(scope="module")
def visits(state_dir: Path) -> Any:
    """MapState "visits" bound over the same dir (read-only), for the reference reads."""
    db = RocksDbStateBackend(state_dir, read_only=True)
    store = KeyedStateStore(db)
    handle = store.bind(MapState("visits"))
    yield store, handle
    db.close()


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, ["state", *args])
    return result


def ls_json(state_dir: Path, *args: str) -> dict[str, Any]:
    result = cli("ls", str(state_dir), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def tupled(value: Any) -> Any:
    return parse_key_text(json.dumps(value))  # JSON lists back to tuples


def mapstate_reads(visits: Any, key: Any, **bounds: Any) -> list[tuple[Any, Any]]:
    store, handle = visits
    store.set_key(key)
    return [(as_tuple(k), v) for k, v in handle.entries(**bounds)]


def test_states_with_counts(state_dir: Path) -> None:
    result = cli("ls", str(state_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["state", "entries", "count", "100", "last", "100",
                                     "visits", "10,000"]
    assert ls_json(state_dir) == {"states": [{"name": "count", "entries": 100},
                                             {"name": "last", "entries": 100},
                                             {"name": "visits", "entries": 10_000}]}


KEYED_RANGES: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (["--prefix", "cart"], {"prefix": "cart"}),
    (["--prefix", '["item", 7]'], {"prefix": ("item", 7)}),
    (["--start", '["home", 10]'], {"start": ("home", 10)}),
    (["--start", "home"], {"start": "home"}),
    (["--start-after", '["help", 24]'], {"start_after": ("help", 24)}),
    (["--start-after", "help"], {"start_after": "help"}),  # ("help",) < ("help", 0)
    (["--end", '["help", 3]'], {"end": ("help", 3)}),
    (["--prefix", "item", "--start", '["item", 5]', "--end", '["item", 9]'],
     {"prefix": "item", "start": ("item", 5), "end": ("item", 9)}),
    (["--reverse"], {"reverse": True}),
    (["--reverse", "--prefix", "home", "--start-after", '["home", 20]'],
     {"reverse": True, "prefix": "home", "start_after": ("home", 20)}),
    (["--limit", "7", "--start", '["cart", 20]'], {"limit": 7, "start": ("cart", 20)}),
]


@pytest.mark.parametrize(("args", "bounds"), KEYED_RANGES)
@pytest.mark.parametrize("key", [("user", 7), ("team", "a:b"), ("team", "a", "b")])
def test_keyed_range_options_match_mapstate(state_dir: Path, visits: Any, key: Any,
                                            args: list[str], bounds: dict[str, Any]) -> None:
    page = ls_json(state_dir, "--state", "visits", "--key", json.dumps(key),
                   *(args if "--limit" in args else [*args, "--limit", "1000"]))
    expected = mapstate_reads(visits, key, **bounds)
    got = [(tupled(e["map_key"]), e["value"]) for e in page["entries"]]
    assert got == expected
    assert all(tuple(e["key"]) == key for e in page["entries"])
    assert all(e["expires_at"] is None for e in page["entries"])
    assert (page["cursor"] is not None) == ("--limit" in args)


def keys_in_order() -> list[tuple[Any, ...]]:
    # Tuple order of the encoding: str "team" < "user"; ("team", "a", "b") < ("team", "a:b")
    # since "a" < "a:b" element-wise.
    return [("team", "a", "b"), ("team", "a:b")] + [("user", u) for u in range(98)]


KEYLESS_RANGES: list[tuple[list[str], Any]] = [
    (["--prefix", "team"], lambda k: k[0] == "team"),
    (["--prefix", '["team", "a"]'], lambda k: k == ("team", "a", "b")),
    (["--start", '["user", 90]'], lambda k: k[0] == "user" and k[1] >= 90),
    (["--start-after", '["user", 95]'], lambda k: k[0] == "user" and k[1] > 95),
    (["--start-after", "team"], lambda k: True),  # every ("team", ...) is after ("team",)
    (["--end", '["user", 2]'], lambda k: k[0] == "team" or k[1] < 2),
    (["--prefix", "user", "--start", '["user", 10]', "--end", '["user", 13]'],
     lambda k: k[0] == "user" and 10 <= k[1] < 13),
    (["--reverse", "--start", '["user", 95]'], lambda k: k[0] == "user" and k[1] >= 95),
]


@pytest.mark.parametrize(("args", "selects"), KEYLESS_RANGES)
def test_keyless_range_options_match_mapstate(state_dir: Path, visits: Any, args: list[str],
                                              selects: Any) -> None:
    reverse = "--reverse" in args
    keys = [k for k in keys_in_order() if selects(k)]
    expected = [(k, mk, v) for k in keys for mk, v in mapstate_reads(visits, k)]
    if reverse:
        expected.reverse()
    got: list[tuple[Any, Any, Any]] = []
    cursor: list[str] = []
    while True:
        page = ls_json(state_dir, "--state", "visits", "--limit", "1000", *args, *cursor)
        got += [(tupled(e["key"]), tupled(e["map_key"]), e["value"]) for e in page["entries"]]
        if page["cursor"] is None:
            break
        cursor = ["--cursor", page["cursor"]]
    assert got == expected


def test_paging_10k_entries_with_limit_100(state_dir: Path, visits: Any) -> None:
    seen: list[tuple[Any, Any]] = []
    cursor: list[str] = []
    pages = 0
    while True:
        page = ls_json(state_dir, "--state", "visits", "--limit", "100", *cursor)
        pages += 1
        assert len(page["entries"]) == 100
        seen += [(tupled(e["key"]), tupled(e["map_key"])) for e in page["entries"]]
        if page["cursor"] is None:
            break
        cursor = ["--cursor", page["cursor"]]
    assert pages == 100  # no trailing empty page
    assert len(seen) == 10_000 == len(set(seen))
    assert seen == [(k, mk) for k in keys_in_order() for mk, _ in mapstate_reads(visits, k)]


def test_text_output(state_dir: Path) -> None:
    result = cli("ls", str(state_dir), "--state", "visits", "--key", '["user", 7]',
                 "--prefix", "cart", "--limit", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "map_key", "expires_at", "value"]
    assert lines[1].startswith("('user', 7)  ('cart', 0)  never")
    assert lines[1].split("never", 1)[1].strip().startswith("{'ts': ")
    assert lines[2].startswith("('user', 7)  ('cart', 1)  never")
    assert lines[3].startswith("next page: --cursor ")
    cursor = lines[3].split()[-1]
    more = cli("ls", str(state_dir), "--state", "visits", "--key", '["user", 7]', "--prefix",
               "cart", "--limit", "2", "--cursor", cursor)
    assert more.stdout.splitlines()[1].startswith("('user', 7)  ('cart', 2)  never")
    ttl = cli("ls", str(state_dir), "--state", "last", "--key", '["user", 7]')
    key, map_key, expires, value = re.split(r"\s{2,}", ttl.stdout.splitlines()[1])
    assert (key, map_key, value) == ("('user', 7)", "-", "24")
    ms, utc = expires.split(" ", 1)
    assert int(ms) > time.time() * 1000  # processing-time TTL: an hour from the run
    assert re.fullmatch(r"\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\)", utc)


def test_get(state_dir: Path) -> None:
    result = cli("get", str(state_dir), "--state", "count", "--key", '["team", "a:b"]')
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["key         ('team', 'a:b')", "expires_at  never",
                                          "value       100"]
    result = cli("get", str(state_dir), "--state", "visits", "--key", '["user", 3]',
                 "--map-key", '["item", 4]', "--json")
    entry = json.loads(result.stdout)
    assert entry["key"] == ["user", 3] and entry["map_key"] == ["item", 4]
    assert entry["expires_at"] is None and set(entry["value"]) == {"ts"}
    missing = cli("get", str(state_dir), "--state", "visits", "--key", '["user", 3]',
                  "--map-key", '["item", 99]')
    assert missing.exit_code == 1 and "no entry" in missing.stderr
    no_map_key = cli("get", str(state_dir), "--state", "visits", "--key", '["user", 3]')
    assert no_map_key.exit_code == 1 and "give --map-key" in no_map_key.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--state", "nope"], "no state named 'nope'; states here: count, last, visits"),
    (["--state", "visits", "--start", "a", "--start-after", "b"], "not both"),
    (["--state", "visits", "--cursor", "%%%"], "cursor"),
    (["--state", "visits", "--limit", "0"], "limit"),
    (["--state", "visits", "--key", '{"a": 1}'], "cannot"),
    (["--prefix", "user"], "need --state"),
])
def test_bad_options(state_dir: Path, args: list[str], message: str) -> None:
    result = cli("ls", str(state_dir), *args)
    assert result.exit_code == 1
    assert message in result.stderr


def test_not_a_state_dir(tmp_path: Path) -> None:
    result = cli("ls", str(tmp_path))
    assert result.exit_code == 1 and "not a RocksDB state dir" in result.stderr
    assert not any(tmp_path.iterdir())


HOLDER = """
import sys, time
from eddies.state import KeyedStateStore, RocksDbStateBackend, ValueState
db = RocksDbStateBackend(sys.argv[1])
store = KeyedStateStore(db)
extra = store.bind(ValueState("extra"))
store.set_key(("held", 1)); extra.set("in the WAL only")
store.flush()
print("ready", flush=True)
time.sleep(60)
"""


def test_read_only_view_while_another_process_holds_the_dir(state_dir: Path,
                                                            tmp_path: Path) -> None:
    held = tmp_path / "held"
    shutil.copytree(state_dir, held)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StateDirLockedError):
            RocksDbStateBackend(held)  # the holder has the lock
        done = subprocess.run(
            [sys.executable, "-m", "eddies.runtime.cli", "state", "ls", str(held), "--state",
             "extra", "--json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"entries": [
            {"key": ["held", 1], "map_key": None, "value": "in the WAL only",
             "expires_at": None}], "cursor": None}
        counts = ls_json(held)
        assert {"name": "visits", "entries": 10_000} in counts["states"]
        assert holder.poll() is None  # the holder was not disturbed
    finally:
        holder.kill()
        holder.wait(timeout=30)
