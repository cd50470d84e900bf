"""/metrics and /state served by a running local job (run_local(metrics_port=...))."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import eddies as ed
from eddies.runtime.kafka.tansu import free_port


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)


def slow_events(n: int, hold: threading.Event | None = None):
    for i in range(n):
        time.sleep(0.001)  # a job that runs for a few seconds, draining queries as it goes
        if hold is not None and i == n - 100:
            hold.wait(60)  # the last events wait until the test has queried the running job
        # every 10th event is 10 s behind the others: late once the watermark moved on
        yield {"k": f"k{i % 7}", "ts": i * 100 - (10_000 if i % 10 == 9 else 0)}


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sample(text: bytes, name: bytes) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(b" ", 1)[1])
    raise AssertionError(f"{name!r} not in metrics")


def test_metrics_and_state_during_a_local_run(tmp_path):
    job = ed.Job("live")
    queried = threading.Event()
    (job.source(ed.sources.iterable(slow_events(4_000, queried)), timestamp="ts")
        .key_by("k").process(Count()).sink(ed.sinks.collect()))
    port = free_port()
    result = {}
    runner = threading.Thread(target=lambda: result.update(r=ed.run_local(
        job, f"rocksdb:{tmp_path / 'db'}", metrics_port=port, token="s3cret", batch_size=100,
        checkpoint_interval=500)))
    runner.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the server starts with the run
            try:
                status, text = get(f"{base}/metrics", "s3cret")
                # late events seen, and a checkpoint written (queries read checkpointed state)
                if (status == 200 and sample(text, b'eddies_late_events_total{job="live"}') > 0
                        and sample(text, b'eddies_checkpoint_duration_seconds_count') > 0):
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(0.05)
        status, text = get(f"{base}/metrics", "s3cret")
        assert status == 200
        late_mid = sample(text, b'eddies_late_events_total{job="live"}')
        assert late_mid > 0
        assert sample(text, b'eddies_startup_phase_seconds{job="live",phase="preload"}') >= 0
        assert sample(text, b'eddies_startup_phase_seconds{job="live",phase="first_event"}') >= 0
        assert 0 < sample(text, b'eddies_events_in_total{job="live"') < 4_000  # mid-run
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", "wrong")[0] == 401
        status, body = get(f"{base}/state/nope", "s3cret")
        assert status == 400 and b"nope" in body
        status, body = get(f"{base}/state/n?key=k3", "s3cret")
        assert status == 200
        entries = json.loads(body)["entries"]
        assert [e["key"] for e in entries] == [["k3"]] and entries[0]["value"] > 0
    finally:
        queried.set()  # the job goes on, failed assertions or not
    runner.join(60)  # the job went on after the bad queries, to the end
    assert not runner.is_alive()
    stats = result["r"].stats
    assert stats.events_in == 4_000
    assert stats.late_events > late_mid
