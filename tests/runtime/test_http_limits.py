"""The inspector cannot stall or kill the job: bounded connections, deadlines, a large backlog,
the token checked first, bounded query parameters, and no tracebacks from clients."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.http import MAX_KEY_DEPTH, MAX_PARAM_CHARS, InspectorServer, QueryQueue
from eddies.runtime.kafka.tansu import free_port
from eddies.state import InMemoryStateBackend, KeyedStateStore, ValueState

TOKEN = "s3cret"


def fetch(url: str, token: str | None = TOKEN, scheme: str = "Bearer") -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def outcome(url: str) -> str:
    """A scrape's outcome: its status, "refused" (the server closed or reset the connection),
    or "timeout" (the client waited 20 s: a stalled server)."""
    try:
        return str(fetch(url)[0])
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return "timeout"
        if isinstance(reason, (ConnectionError, OSError)):
            return "refused"
        raise
    except TimeoutError:
        return "timeout"
    except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
        return "refused"


def no_tracebacks(caplog: pytest.LogCaptureFixture, err: str) -> None:
    assert "Traceback" not in err, err[-3_000:]
    with_tb = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not with_tb, with_tb[0].getMessage()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- a running job under a storm of connections ------------------------------------------------

STORM_EVENTS = 60_000
SLOW = threading.Event()
"""Set while the storm lasts: the job takes a ms every 5 events, and holds its last event
until the storm is over, so the whole storm meets a running job."""


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        n = self.n.get() + 1
        self.n.set(n)
        if SLOW.is_set() and event["i"] % 5 == 0:
            time.sleep(0.001)
        while SLOW.is_set() and event["i"] == STORM_EVENTS - 1:
            time.sleep(0.01)
        yield {"k": ctx.key, "n": n}


def write_events(path: Path, n: int, keys: int) -> Counter[str]:
    expected: Counter[str] = Counter()
    with path.open("w") as f:
        for i in range(n):
            key = f"k{(i * 7919) % keys}"
            expected[key] += 1
            f.write(json.dumps({"i": i, "k": key, "ts": 1_700_000_000_000 + i}) + "\n")
    return expected


def final_counts(path: Path) -> tuple[int, dict[str, int]]:
    lines = path.read_text().splitlines()
    last: dict[str, int] = {}
    for line in lines:
        out = json.loads(line)
        last[out["k"]] = max(last.get(out["k"], 0), out["n"])
    return len(lines), last


def test_idle_connections_and_a_scrape_storm_leave_the_job_exact(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="eddies")
    n_events, keys = STORM_EVENTS, 500
    expected = write_events(tmp_path / "events.jsonl", n_events, keys)
    job = ed.Job("storm")
    (job.source(ed.sources.jsonl(tmp_path / "events.jsonl"), timestamp="ts")
        .key_by("k").process(Count()).sink(ed.sinks.jsonl(tmp_path / "out.jsonl")))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    SLOW.set()

    def run() -> None:
        try:
            result["r"] = ed.run_local(job, f"rocksdb:{tmp_path / 'db'}", metrics_port=port,
                                       token=TOKEN, checkpoint_interval=5_000, batch_size=500)
        except BaseException as exc:  # reported by the asserts below
            result["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        while True:  # the inspector serves from the start of the run
            assert runner.is_alive(), result
            try:
                if fetch(f"{base}/metrics")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        idle = []
        for _ in range(500):
            # A full backlog may refuse a connect: never the job's problem.
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        urls = [f"{base}/metrics", f"{base}/state", f"{base}/state/n?key=k1"] * 66
        urls += [f"{base}/state/n?key={quote(nested(3_000))}"] * 2
        with ThreadPoolExecutor(max_workers=200) as pool:
            outcomes = Counter(pool.map(outcome, urls))
        alive_after_storm = runner.is_alive()
        for sock in idle:
            sock.close()
        # Answered or refused, never left waiting; a deeply nested key is a 400.
        assert set(outcomes) <= {"200", "400", "503", "refused"}, outcomes
        assert alive_after_storm, result
        while True:  # once the idle clients are gone, scrapes are answered again
            status, body = fetch(f"{base}/state")
            if status == 200:
                break
            assert status == 503 and runner.is_alive(), (status, body)
            time.sleep(0.1)
        assert json.loads(body)["states"] == ["n"]
    finally:
        SLOW.clear()
        runner.join(120)
    assert not runner.is_alive()
    assert "error" not in result, result.get("error")
    stats = result["r"].stats
    assert stats.events_in == n_events and stats.checkpoints >= n_events // 5_000
    lines, last = final_counts(tmp_path / "out.jsonl")
    assert lines == n_events
    assert last == dict(expected)
    no_tracebacks(caplog, capfd.readouterr().err)


JOB_UNDER_LIMIT = """
import json, os, resource, sys, time
from collections import Counter
from pathlib import Path
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
import eddies as ed

events, out, db, flag, port, audit = sys.argv[1:7]

class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        n = self.n.get() + 1
        self.n.set(n)
        if event["i"] % 250 == 0:  # a job that opens files as it runs
            with open(audit, "a") as f:
                f.write(f"{event['i']}\\n")
        if event["i"] % 10 == 0 and os.path.exists(flag):  # slow while the clients come
            time.sleep(0.01)
        yield {"k": ctx.key, "n": n}

job = ed.Job("limited")
(job.source(ed.sources.jsonl(events), timestamp="ts")
    .key_by("k").process(Count()).sink(ed.sinks.jsonl(out)))
result = ed.run_local(job, f"rocksdb:{db}", metrics_port=int(port), checkpoint_interval=500,
                      batch_size=100)
print(json.dumps({"events_in": result.stats.events_in,
                  "checkpoints": result.stats.checkpoints}))
"""


def test_idle_connections_under_a_low_descriptor_limit_cannot_kill_the_job(
        tmp_path: Path) -> None:
    n_events = 40_000
    expected = write_events(tmp_path / "events.jsonl", n_events, 300)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB_UNDER_LIMIT))
    flag = tmp_path / "slow"
    flag.touch()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "events.jsonl"), str(tmp_path / "out.jsonl"),
         str(tmp_path / "db"), str(flag), str(port), str(tmp_path / "audit.txt")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held: deque[socket.socket] = deque()
    connected = 0
    try:
        while connected < 1_000 and proc.poll() is None:  # up to 300 idle at a time
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                connected += 1
            except OSError:
                time.sleep(0.01)  # not listening yet, or the backlog is full
            if len(held) > 300:
                held.popleft().close()
        time.sleep(3)  # the job checkpoints and opens files while the clients hold on
        flag.unlink()  # the job may now run to its end
        out, err = proc.communicate(timeout=180)
    finally:
        for sock in held:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3_000:]
    assert connected == 1_000, "the job ended before the clients came: make it longer"
    assert "Too many open files" not in err and "Traceback" not in err, err[-3_000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats == {"events_in": n_events, "checkpoints": n_events // 500 + 1}
    lines, last = final_counts(tmp_path / "out.jsonl")
    assert lines == n_events and last == dict(expected)
    assert len((tmp_path / "audit.txt").read_text().splitlines()) == n_events // 250


# -- one server, driven as the runner does ------------------------------------------------------

class Drainer:
    """Drains the server's queue as a runner does between batches, and counts the queries."""

    def __init__(self, queue: QueryQueue) -> None:
        self.queue = queue
        self.ran = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            self.ran += self.queue.drain()
            time.sleep(0.001)


@pytest.fixture
def served() -> Iterator[tuple[InspectorServer, Drainer]]:
    store = KeyedStateStore(InMemoryStateBackend(), max_parallelism=8)
    counter = store.bind(ValueState("n", default=0))
    for key in ("a", "b"):
        store.set_key(key)
        counter.set(1)
    store.flush()
    server = InspectorServer(None, store.backend, token=TOKEN, max_connections=4,
                             request_timeout=0.5).start()
    drainer = Drainer(server.queue)
    yield server, drainer
    drainer.stop.set()
    drainer.thread.join()
    server.stop()


@pytest.mark.parametrize("key", [
    nested(3_000),                       # json raises RecursionError on this
    nested(MAX_KEY_DEPTH + 1),
    '{"a": ' * 40 + "1" + "}" * 40,
    "x" * (MAX_PARAM_CHARS + 1),
    json.dumps(["user", "y" * 20_000]),
])
def test_deep_or_long_keys_are_400_without_a_traceback(
        served: tuple[InspectorServer, Drainer], key: str, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="eddies")
    server, drainer = served
    for param in ("key", "start", "prefix"):
        status, body = fetch(f"{server.url}/state/n?{param}={quote(key)}")
        assert status == 400, body[:300]
        error = json.loads(body)["error"]
        assert param in error and ("deep" in error or "characters long" in error), error
        assert len(error) < 300
    assert drainer.ran == 0  # refused before reaching the job's thread
    no_tracebacks(caplog, capfd.readouterr().err)


def test_keys_within_the_limits_are_answered(served: tuple[InspectorServer, Drainer]) -> None:
    server, _ = served
    status, body = fetch(f"{server.url}/state/n?key=a")
    assert status == 200 and json.loads(body)["entries"][0]["value"] == 1
    # Deep but within the limit, and brackets inside strings do not count as nesting.
    deep = '["' + "[" * 100 + '", ' + nested(MAX_KEY_DEPTH - 1) + "]"
    status, body = fetch(f"{server.url}/state/n?key={quote(deep)}")
    assert (status, json.loads(body)["entries"]) == (200, [])
    status, _ = fetch(f"{server.url}/state/n?key={quote('z' * MAX_PARAM_CHARS)}")
    assert status == 200


def test_bearer_scheme_in_any_case(served: tuple[InspectorServer, Drainer]) -> None:
    server, _ = served
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert fetch(f"{server.url}/state", scheme=scheme)[0] == 200, scheme
    assert fetch(f"{server.url}/state", scheme="Basic")[0] == 401
    assert fetch(f"{server.url}/state", token=None)[0] == 401


def test_a_wrong_token_is_refused_before_the_query_is_read_or_run(
        served: tuple[InspectorServer, Drainer]) -> None:
    server, drainer = served
    for url in (f"{server.url}/state", f"{server.url}/state/n?key=a",
                f"{server.url}/state/n?key={quote(nested(3_000))}",
                f"{server.url}/state/n?colour=red"):
        status, body = fetch(url, token="wrong")
        assert status == 401 and b"token" in body
    request = urllib.request.Request(f"{server.url}/state", method="POST", data=b"x" * 1_000)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=20)
    assert info.value.code == 401  # the token first, then "read-only"
    assert drainer.ran == 0


def open_idle(server: InspectorServer) -> socket.socket:
    return socket.create_connection(server.address, timeout=20)


def test_connections_beyond_the_cap_get_503_at_once(
        served: tuple[InspectorServer, Drainer]) -> None:
    server, _ = served
    idle = [open_idle(server) for _ in range(4)]  # max_connections=4, all held
    try:
        while server.refused == 0:
            extra = open_idle(server)
            extra.sendall(b"GET /state HTTP/1.0\r\n\r\n")
            reply = extra.recv(4_096)
            extra.close()
            if reply:  # else one of the idle ones was dropped meanwhile and this one served
                assert reply.startswith(b"HTTP/1.0 503") and b"Retry-After: 1" in reply
    finally:
        for sock in idle:
            sock.close()


def test_idle_and_slow_clients_are_dropped(served: tuple[InspectorServer, Drainer]) -> None:
    server, _ = served
    idle = open_idle(server)
    assert idle.recv(1) == b""  # closed by the server after request_timeout (0.5 s)
    idle.close()
    slow = open_idle(server)
    dropped = False
    try:
        for byte in b"GET /state HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n":
            slow.sendall(bytes([byte]))  # each byte within the socket timeout, the whole not
            time.sleep(0.05)
    except OSError:
        dropped = True
    if not dropped:
        reply = slow.recv(4_096)
        assert reply == b"" or not reply.startswith(b"HTTP/1.0 200"), reply
    slow.close()
    # The slots are free again.
    assert fetch(f"{server.url}/state")[0] == 200


def test_the_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        InspectorServer(None, None, max_connections=0)
    with pytest.raises(ConfigError, match="request_timeout"):
        InspectorServer(None, None, request_timeout=0)
    default = InspectorServer(None, None)
    assert 4 <= default.max_connections <= 64
