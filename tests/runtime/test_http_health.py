"""/healthz on the inspector (the runner's health() answered on the HTTP thread) and the
consumer lag gauge; the Kafka worker's own health and lag are in tests/kafka/test_health.py."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import eddies as ed
from eddies.runtime.http import InspectorServer
from eddies.runtime.kafka.tansu import free_port
from eddies.runtime.metrics import Metrics


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers), exc.read()
    if headers.get("Content-Type") == "application/json":
        return status, headers, json.loads(body)
    return status, headers, body


def test_healthz_follows_the_runners_health() -> None:
    """503 with the runner's reason (and Retry-After) until it says ready, then 200; answered
    on the HTTP thread, so a runner that never drains the query queue (busy restoring) still
    gets its probe answered at once, not after the query timeout."""
    said: list[tuple[bool, dict[str, Any]]] = [
        (False, {"status": "restoring", "reason": "restoring 2 of 3 assigned partitions"})]
    with InspectorServer(Metrics("h"), health=lambda: said[-1], query_timeout=30) as server:
        status, headers, body = get(f"{server.url}/healthz")
        assert status == 503 and headers["Retry-After"] == "1"
        assert body == {"status": "restoring", "reason": "restoring 2 of 3 assigned partitions"}
        said.append((True, {"status": "ok", "partitions": ["in[0]"]}))
        assert get(f"{server.url}/healthz")[::2] == (200, {"status": "ok", "partitions": ["in[0]"]})
        assert "/healthz" in get(server.url)[2]["endpoints"]


def test_healthz_without_a_health_check_and_with_a_failing_one() -> None:
    with InspectorServer(Metrics("h")) as server:  # served only once ready (the local runner)
        assert get(f"{server.url}/healthz")[::2] == (200, {"status": "ok"})

    def broken() -> tuple[bool, dict[str, Any]]:
        raise KeyError("owned")

    with InspectorServer(Metrics("h"), health=broken) as server:  # never passes for healthy
        status, _, body = get(f"{server.url}/healthz")
        assert status == 503 and body["status"] == "error"
        assert "the health check failed: KeyError" in body["reason"]


def test_healthz_needs_the_token_like_every_endpoint() -> None:
    with InspectorServer(Metrics("h"), token="s3cret", health=lambda: (True, {"status": "ok"})
                         ) as server:
        assert get(f"{server.url}/healthz")[0] == 401
        assert get(f"{server.url}/healthz", token="s3cret")[0] == 200


def test_consumer_lag_gauges_per_partition_and_revoked_ones_dropped() -> None:
    from eddies.runtime.observe import lag_text

    m = Metrics("lagged")
    m.consumer_lag({("orders", 0): 120, ("orders", 1): 0})
    text = m.render().decode()
    assert 'eddies_consumer_lag{job="lagged",partition="0",topic="orders"} 120.0' in text
    assert m.value("eddies_consumer_lag", topic="orders", partition="1") == 0.0
    m.consumer_lag({("orders", 1): 5})  # partition 0 revoked
    assert m.value("eddies_consumer_lag", topic="orders", partition="0") is None
    assert m.value("eddies_consumer_lag", topic="orders", partition="1") == 5.0
    assert lag_text({("orders", 1): 5, ("orders", 2): 40}) == (
        "lag 45 (worst orders[2] 40 of 2 partitions)")


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event: Any, ctx: Any) -> None:
        self.n.set(self.n.get() + 1)


def test_healthz_on_a_local_run(tmp_path) -> None:
    """run_local serves /healthz next to /metrics once it has restored: 200 while it runs."""
    seen = threading.Event()

    def events() -> Any:
        for i in range(2_000):
            if i > 1_000:
                seen.wait(30)  # keep running until the probe was answered
            yield {"k": f"k{i % 7}", "ts": i}

    job = ed.Job("healthy")
    (job.source(ed.sources.iterable(events()), timestamp="ts").key_by("k").process(Count())
        .sink(ed.sinks.collect()))
    port = free_port()
    runner = threading.Thread(target=ed.run_local, args=(job, f"rocksdb:{tmp_path / 'db'}"),
                              kwargs={"metrics_port": port, "batch_size": 100}, daemon=True)
    runner.start()
    answer: tuple[int, dict[str, str], Any] | None = None
    deadline = time.monotonic() + 30
    while answer is None and time.monotonic() < deadline:
        try:
            answer = get(f"http://127.0.0.1:{port}/healthz")
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # not served yet
    seen.set()
    runner.join(30)
    assert answer is not None and answer[::2] == (200, {"status": "ok"})
