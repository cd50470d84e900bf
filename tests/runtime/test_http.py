"""The HTTP inspector: /metrics and /state over a real socket, with a thread draining the queue
as the runner does between batches."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.http import InspectorServer, QueryQueue, QueryUnavailable
from eddies.runtime.local import LocalRunner, RunStats
from eddies.runtime.metrics import Metrics
from eddies.state import InMemoryStateBackend, KeyedStateStore, MapState, StateBackend, ValueState


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            status = response.status
            ctype = response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        body, status, ctype = exc.read(), exc.code, exc.headers["Content-Type"]
    return status, (json.loads(body) if ctype == "application/json" else body.decode())


def state_url(server: InspectorServer, state: str, **params: Any) -> str:
    query = urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
    return f"{server.url}/state/{quote(state)}" + (f"?{query}" if query else "")


class Runner:
    """Stands in for the runner thread: writes batches and drains queries in between, and
    records which threads read the backend."""

    def __init__(self, queue: QueryQueue, store: KeyedStateStore) -> None:
        self.queue = queue
        self.store = store
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.counter = store.bind(ValueState("ticks", default=0))

    def loop(self) -> None:
        while not self.stop.is_set():
            if not self.paused.is_set():
                self.store.set_key("clock")
                self.counter.set(self.counter.get() + 1)
                self.store.flush()  # a write between drains, as at a checkpoint
                self.queue.drain()
            time.sleep(0.001)


class ThreadCheckingBackend(InMemoryStateBackend):
    """Fails a test if anything but the runner thread reads it."""

    owner: int | None = None

    def iterate(self, *args: Any, **kwargs: Any) -> Iterator[tuple[bytes, bytes]]:
        if self.owner is not None:
            assert threading.get_ident() == self.owner, "state read off the runner thread"
        return super().iterate(*args, **kwargs)


@pytest.fixture
def live() -> Iterator[tuple[InspectorServer, Runner, StateBackend]]:
    backend = ThreadCheckingBackend()
    store = KeyedStateStore(backend, max_parallelism=8)
    devices = store.bind(MapState("devices"))
    for user in range(30):
        store.set_key(("user", user))
        for d in range(5):
            devices.put(("dev", d), {"user": user, "dev": d})
    store.flush()
    metrics = Metrics("live")
    server = InspectorServer(metrics, backend, query_timeout=5).start()
    runner = Runner(server.queue, store)
    runner.thread.start()
    backend.owner = runner.thread.ident
    yield server, runner, backend
    runner.stop.set()
    runner.thread.join()
    server.stop()


def test_state_queries(live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, _, _ = live
    assert get(f"{server.url}/state") == (200, {"states": ["devices", "ticks"]})
    status, body = get(state_url(server, "devices", key=["user", 7], prefix="dev",
                                 start_after=["dev", 2]))
    assert status == 200
    assert body == {"entries": [
        {"key": ["user", 7], "map_key": ["dev", d], "value": {"user": 7, "dev": d},
         "expires_at": None} for d in (3, 4)], "cursor": None}
    # Keys in JSON or bare: ["user", 7] and the bare string "clock".
    assert get(state_url(server, "ticks", key="clock"))[1]["entries"][0]["key"] == ["clock"]
    # Reverse paging through every entry.
    seen: list[Any] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": "40", "reverse": "true"}
        if cursor:
            params["cursor"] = cursor
        status, body = get(state_url(server, "devices", **params))
        assert status == 200
        seen += [(tuple(e["key"]), tuple(e["map_key"])) for e in body["entries"]]
        cursor = body["cursor"]
        if cursor is None:
            break
    assert len(seen) == 150 == len(set(seen))
    assert seen == sorted(seen, key=lambda t: (t[0][1], t[1][1]), reverse=True)
    status, body = get(state_url(server, "devices", start=["user", 28], limit="100"))
    assert {tuple(e["key"]) for e in body["entries"]} == {("user", 28), ("user", 29)}


@pytest.mark.parametrize(("params", "reason"), [
    ({"limit": "x"}, "limit='x' is not an integer"),
    ({"limit": "0"}, "limit=0"),
    ({"limit": "100000"}, "limit=100000"),
    ({"key": {"a": 1}}, "cannot"),  # a dict is no key
    ({"start": "NaN"}, "NaN"),
    ({"cursor": "garbage!"}, "cursor"),
    ({"start": "a", "start_after": "b"}, "not both"),
    ({"reverse": "maybe"}, "reverse"),
    ({"colour": "red"}, "unknown query parameter(s) colour"),
])
def test_bad_queries_are_400_and_the_job_goes_on(
        live: tuple[InspectorServer, Runner, StateBackend], params: dict[str, Any],
        reason: str) -> None:
    server, runner, _ = live
    status, body = get(state_url(server, "devices", **params))
    assert status == 400
    assert reason.lower() in body["error"].lower()
    assert runner.thread.is_alive()
    assert get(state_url(server, "devices", limit="1"))[0] == 200


def test_unknown_state_and_paths(live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, _, _ = live
    assert get(state_url(server, "nope")) == (
        400, {"error": "no state named 'nope'; states here: devices, ticks"})
    assert get(f"{server.url}/nowhere")[0] == 404
    assert get(f"{server.url}/state/a/b")[0] == 404
    request = urllib.request.Request(f"{server.url}/state", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405


def test_cursor_from_another_query_is_400(
        live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, _, _ = live
    cursor = get(state_url(server, "devices", limit="3"))[1]["cursor"]
    status, body = get(state_url(server, "devices", limit="3", reverse="1", cursor=cursor))
    assert status == 400 and "another query" in body["error"]


def test_metrics_endpoint(live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, _, _ = live
    assert server.metrics is not None
    server.metrics.late_events(3)
    status, text = get(f"{server.url}/metrics")
    assert status == 200
    assert 'eddies_late_events_total{job="live"} 3.0' in text


def test_503_when_the_runner_does_not_drain(
        live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, runner, _ = live
    server.query_timeout = 0.2
    runner.paused.set()  # a long batch: nobody drains
    status, body = get(state_url(server, "devices"))
    assert status == 503 and "did not take the query within 0.2s" in body["error"]
    assert get(f"{server.url}/metrics")[0] == 200  # metrics never wait for the runner
    runner.paused.clear()
    assert get(state_url(server, "devices", limit="1"))[0] == 200
    assert server.queue.pending == 0  # the timed-out query was dropped, never run late


def test_503_after_the_job_stopped() -> None:
    queue = QueryQueue()
    queue.close()
    with pytest.raises(QueryUnavailable, match="stopped"):
        queue.submit(lambda: 1)
    server = InspectorServer(None, InMemoryStateBackend(), queue).start()
    try:
        status, body = get(f"{server.url}/state")
        assert status == 503 and "stopped" in body["error"]
        assert get(f"{server.url}/metrics")[0] == 404  # no metrics given
    finally:
        server.stop()


def test_queue_errors_go_to_the_submitter() -> None:
    queue = QueryQueue()
    result: dict[str, Any] = {}

    def submit() -> None:
        try:
            queue.submit(lambda: 1 / 0)
        except ZeroDivisionError as exc:
            result["error"] = exc

    t = threading.Thread(target=submit)
    t.start()
    while t.is_alive():
        queue.drain()  # must not raise on the runner thread
    assert isinstance(result["error"], ZeroDivisionError)
    assert QueryQueue(inline=True).submit(lambda: 5) == 5


def test_token(live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, _, backend = live
    with pytest.raises(ConfigError, match="without a token"):
        InspectorServer(None, backend, host="0.0.0.0")
    with pytest.raises(ConfigError, match="without a token"):
        InspectorServer(None, backend, host="192.0.2.1")
    InspectorServer(None, backend, host="::1")  # loopback needs none
    secured = InspectorServer(server.metrics, backend, server.queue, host="0.0.0.0",
                              token="s3cret").start()
    try:
        url = f"http://127.0.0.1:{secured.address[1]}"
        for path in ("/state", "/metrics", "/state/devices"):
            assert get(url + path)[0] == 401
            assert get(url + path, token="wrong")[0] == 401
        status, body = get(url + "/state", token="s3cret")
        assert (status, body) == (200, {"states": ["devices", "ticks"]})
        assert get(url + "/metrics", token="s3cret")[0] == 200
    finally:
        secured.stop()  # the queue was passed in: it stays open for the others
    # A token on loopback is honoured too.
    local = InspectorServer(None, backend, server.queue, token="t").start()
    try:
        assert get(f"{local.url}/state")[0] == 401
        assert get(f"{local.url}/state", token="t")[0] == 200
    finally:
        local.stop()
    assert get(state_url(server, "devices", limit="1"))[0] == 200


def test_owner_hook_redirects(live: tuple[InspectorServer, Runner, StateBackend]) -> None:
    server, runner, _ = live
    calls: list[tuple[Any, ...]] = []

    def owner(key: tuple[Any, ...]) -> str | None:
        calls.append(key)
        assert threading.get_ident() == runner.thread.ident  # sees the runner's assignment
        return {("user", 1): "10.0.0.2:9100", ("user", 2): ""}.get(key)

    server.owner = owner
    status, body = get(state_url(server, "devices", key=["user", 1]))
    assert status == 421 and body["owner"] == "10.0.0.2:9100"
    assert "ask 10.0.0.2:9100" in body["error"]
    status, body = get(state_url(server, "devices", key=["user", 2]))
    assert status == 421 and body["owner"] is None
    assert get(state_url(server, "devices", key=["user", 3]))[0] == 200
    assert get(state_url(server, "devices", limit="5"))[0] == 200  # no key: local partitions
    assert calls == [("user", 1), ("user", 2), ("user", 3)]


class Visits(ed.KeyedProcessFunction):
    pages = ed.MapState("pages")

    def on_event(self, event: dict[str, Any], ctx: Any) -> Iterator[Any]:
        self.pages.put(("page", event["page"]), ctx.timestamp)
        yield event


def test_live_local_run(tmp_path: Path) -> None:
    """The inspector over a real local run, drained from the runner's progress callback
    (between batches), with metrics fed from its stats: queries answer while the job runs, a
    bad query leaves it running, and late events show in the late counter."""
    events = [{"user": i % 7, "page": i % 11, "ts": 10_000 + i * 10} for i in range(3_000)]
    events += [{"user": 1, "page": 99, "ts": 0}] * 4  # late: far behind the watermark
    job = ed.Job("visits")
    (job.source(ed.sources.iterable(events), timestamp="ts")
        .key_by(lambda e: ("user", e["user"])).process(Visits()).sink(ed.sinks.collect()))
    metrics = Metrics("visits")
    answers: dict[str, Any] = {}
    done = threading.Event()
    last = RunStats()
    server: InspectorServer | None = None

    def client() -> None:
        assert server is not None
        answers["states"] = get(f"{server.url}/state")
        answers["bad"] = get(state_url(server, "pages", key={"bad": 1}))
        answers["key"] = get(state_url(server, "pages", key=["user", 3], prefix="page"))
        answers["metrics"] = get(f"{server.url}/metrics")
        done.set()

    def on_progress(stats: RunStats) -> None:  # the runner thread, between batches
        metrics.events_in("visits", stats.events_in - last.events_in)
        metrics.late_events(stats.late_events - last.late_events)
        metrics.dead_letters(stats.dead_letters - last.dead_letters)
        metrics.watermark(stats.watermark)
        last.events_in, last.late_events = stats.events_in, stats.late_events
        last.dead_letters = stats.dead_letters
        if not answers:  # hold the first batch until the client is answered
            threading.Thread(target=client, daemon=True).start()
            while not done.is_set():
                server.queue.drain()  # type: ignore[union-attr]
                time.sleep(0.001)
        server.queue.drain()  # type: ignore[union-attr]

    runner = LocalRunner(job, f"rocksdb:{tmp_path / 'state'}", checkpoint_interval=500,
                         batch_size=500, on_progress=on_progress)
    server = InspectorServer(metrics, runner.backend).start()
    try:
        result = runner.run()
    finally:
        server.stop()
    assert result.stats.events_in == 3_004
    assert answers["states"] == (200, {"states": ["pages"]})
    assert answers["bad"][0] == 400
    status, body = answers["key"]
    assert status == 200 and body["cursor"] is None
    assert {tuple(e["map_key"]) for e in body["entries"]} <= {("page", p) for p in range(11)}
    assert body["entries"], "the first checkpoint holds user 3's pages"
    assert answers["metrics"][0] == 200
    assert 'eddies_events_in_total{job="visits",operator="visits"}' in answers["metrics"][1]
    assert metrics.value("eddies_late_events_total") == 4
    assert metrics.value("eddies_events_in_total", operator="visits") == 3_004
