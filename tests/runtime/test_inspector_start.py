"""The inspector from a job's start: states known before the first checkpoint, answers that
say as of which checkpoint, a bad address refused before anything is created, and
per-operator metrics for user operators."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import eddies as ed
from eddies.errors import ConfigError
from eddies.runtime.kafka.tansu import free_port
from eddies.runtime.local import LocalRunner, RunStats
from eddies.runtime.metrics import Metrics

END = 2**62


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Visits(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)
    pages = ed.MapState("pages")

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)
        self.pages.put(event["page"], ctx.timestamp)
        ctx.timers.register_event_time(END)  # one summary per key at the end of input
        yield event

    def on_timer(self, timestamp, ctx):
        yield {"user": ctx.key, "visits": self.n.get()}


def events(n: int, users: int) -> list[dict[str, Any]]:
    return [{"user": f"u{i % users}", "page": i % 5, "ts": 1_000 + i} for i in range(n)]


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_states_are_known_before_the_first_checkpoint(tmp_path: Path, backend: str) -> None:
    job = ed.Job("visits")
    (job.source(ed.sources.iterable(events(3_000, 7)), timestamp="ts")
        .key_by("user").process(Visits()).sink(ed.sinks.collect()))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    answers: list[tuple[int, dict[str, Any]]] = []
    runner: LocalRunner | None = None

    def between_batches(stats: RunStats) -> None:  # the runner thread, after a round
        # Before the first checkpoint, then right after it: hold the job between two rounds
        # while a client asks, answering its queries as the runner does.
        phase = len(answers) // 2
        if phase > 1 or stats.checkpoints != phase:
            return
        assert runner is not None and runner.observer is not None
        queries = ([f"{base}/state", f"{base}/state/n?key=u3"] if stats.checkpoints == 0
                   else [f"{base}/state", f"{base}/state/pages?key=u3"])
        got: list[tuple[int, dict[str, Any]]] = []
        client = threading.Thread(target=lambda: got.extend(get(q) for q in queries))
        client.start()
        while client.is_alive():
            runner.observer.after_batch()  # drains the queries
            time.sleep(0.001)
        answers.extend(got)

    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'db'}"
    runner = LocalRunner(job, state, checkpoint_interval=1_000, batch_size=500,
                         metrics_port=port, on_progress=between_batches)
    result = runner.run()
    assert result.stats.checkpoints == 4
    assert len(answers) == 4, answers
    # Before the first checkpoint: both states listed, an empty page, checkpoint 0.
    assert answers[0] == (200, {"states": ["n", "pages"], "checkpoint": 0})
    assert answers[1] == (200, {"entries": [], "cursor": None, "checkpoint": 0})
    # After it: what it holds, and which checkpoint that is.
    assert answers[2] == (200, {"states": ["n", "pages"], "checkpoint": 1})
    status, body = answers[3]
    assert status == 200 and body["checkpoint"] == 1
    assert sorted(e["map_key"][0] for e in body["entries"]) == [0, 1, 2, 3, 4]
    assert get_unknown_state_error(job, tmp_path) == "no state named 'nope'; states here: n, pages"


def get_unknown_state_error(job: ed.Job, tmp_path: Path) -> str:
    """An unknown state is a 400 that lists the declared states, checkpointed or not."""
    port = free_port()
    found: dict[str, Any] = {}
    runner: LocalRunner | None = None

    def ask(stats: RunStats) -> None:
        if found:
            return
        assert runner is not None and runner.observer is not None
        client = threading.Thread(target=lambda: found.update(
            r=get(f"http://127.0.0.1:{port}/state/nope")))
        client.start()
        while client.is_alive():
            runner.observer.after_batch()
            time.sleep(0.001)

    job2 = ed.Job("visits-2")
    (job2.source(ed.sources.iterable(events(1_000, 3)), timestamp="ts")
        .key_by("user").process(Visits()).sink(ed.sinks.collect()))
    runner = LocalRunner(job2, "memory", checkpoint_interval=10_000, batch_size=500,
                         metrics_port=port, on_progress=ask)
    runner.run()
    status, body = found["r"]
    assert status == 400
    return str(body["error"])


# -- refusing a bad address before anything exists --------------------------------------------

def file_job(tmp_path: Path) -> ed.Job:
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events(100, 3)))
    job = ed.Job("files")
    (job.source(ed.sources.jsonl(tmp_path / "events.jsonl"), timestamp="ts")
        .key_by("user").process(Visits()).sink(ed.sinks.jsonl(tmp_path / "out.jsonl")))
    return job


def test_a_public_bind_without_token_is_refused_before_any_file_exists(tmp_path: Path) -> None:
    job = file_job(tmp_path)
    with pytest.raises(ConfigError, match=r"without a token; pass token=") as info:
        ed.run_local(job, f"rocksdb:{tmp_path / 'db'}", metrics_port=free_port(),
                     bind="0.0.0.0")
    assert "127.0.0.1" in str(info.value)
    assert not (tmp_path / "db").exists()
    assert not (tmp_path / "out.jsonl").exists()


def test_a_port_in_use_is_refused_before_any_file_exists(tmp_path: Path) -> None:
    job = file_job(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            ed.run_local(job, f"rocksdb:{tmp_path / 'db'}", metrics_port=port)
    assert not (tmp_path / "db").exists()
    assert not (tmp_path / "out.jsonl").exists()
    # The port free again, the same call runs.
    result = ed.run_local(job, f"rocksdb:{tmp_path / 'db'}", metrics_port=port)
    assert result.stats.events_in == 100


CLI_JOB = '''
import eddies as ed
from pathlib import Path

HERE = Path(__file__).parent


class Count(ed.KeyedProcessFunction):
    n = ed.ValueState("n", default=0)

    def on_event(self, event, ctx):
        self.n.set(self.n.get() + 1)
        yield {"user": ctx.key, "n": self.n.get()}


job = ed.Job("cli")
(job.source(ed.sources.jsonl(HERE / "events.jsonl"), timestamp="ts")
    .key_by("user").process(Count()).sink(ed.sinks.jsonl(HERE / "out.jsonl")))
'''


def test_cli_refuses_a_public_bind_without_token_naming_its_options(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events(50, 3)))
    (tmp_path / "job.py").write_text(CLI_JOB)
    env = {k: v for k, v in os.environ.items() if k != "EDDIES_TOKEN"}
    args = [sys.executable, "-m", "eddies.runtime.cli", "run", "job.py:job", "--quiet",
            "--state", f"rocksdb:{tmp_path / 'db'}", "--metrics-port", str(free_port()),
            "--bind", "0.0.0.0"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--token" in proc.stderr and "EDDIES_TOKEN" in proc.stderr, proc.stderr
    assert "token=" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "db").exists()
    assert not (tmp_path / "out.jsonl").exists()
    # With the token from the environment, the same command runs.
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**env, "EDDIES_TOKEN": "s3cret"})
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50


# -- per-operator metrics -----------------------------------------------------------------------

class Echo(ed.KeyedProcessFunction):
    seen = ed.ValueState("seen", default=0)

    def on_event(self, event, ctx):
        self.seen.set(self.seen.get() + 1)
        return [event, event]  # two outputs per event


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_metrics_per_user_operator(tmp_path: Path, backend: str) -> None:
    n, users = 2_000, 7
    job = ed.Job("ops")
    (job.source(ed.sources.iterable(events(n, users)), timestamp="ts", name="visits-in")
        .key_by("user").process(Visits(), name="Visits").sink(ed.sinks.collect()))
    # Through a map first: the per-event path, not a source's batch.
    (job.source(ed.sources.iterable(events(500, 3)), timestamp="ts", name="echo-in")
        .map(lambda e: {**e, "user": e["user"].upper()})
        .key_by("user").process(Echo(), name="Echo").sink(ed.sinks.collect()))
    metrics: list[Metrics] = []
    runner: LocalRunner | None = None

    def keep(stats: RunStats) -> None:
        if not metrics and runner is not None and runner.observer is not None:
            metrics.append(runner.observer.metrics)

    state = "memory" if backend == "memory" else f"rocksdb:{tmp_path / 'db'}"
    runner = LocalRunner(job, state, checkpoint_interval=500, batch_size=250,
                         metrics_port=free_port(), on_progress=keep)
    runner.run()
    m = metrics[0]
    assert m.value("eddies_events_in_total", operator="Visits") == n
    assert m.value("eddies_events_out_total", operator="Visits") == n + users  # + on_timer
    assert m.value("eddies_events_in_total", operator="Echo") == 500
    assert m.value("eddies_events_out_total", operator="Echo") == 1_000
    assert m.value("eddies_events_in_total", operator="visits-in") == n  # sources as before
    for op in ("Visits", "Echo"):  # Echo's per-event path times one event in 64
        assert (m.value("eddies_on_event_seconds_count", operator=op) or 0) >= 1
        assert (m.value("eddies_on_event_seconds_sum", operator=op) or 0) > 0
        assert (m.value("eddies_on_event_busy_seconds_total", operator=op) or 0) > 0
    # Each key's first read misses; every other event finds it cached.
    assert m.value("eddies_state_cache_misses_total", state="n") == users
    assert m.value("eddies_state_cache_hits_total", state="n") == n - users
    assert m.value("eddies_state_cache_misses_total", state="seen") == 3
    assert m.value("eddies_state_cache_hits_total", state="seen") == 500 - 3
    per_state = [m.value("eddies_state_cache_hits_total", state=s) or 0
                 for s in ("n", "pages", "seen")]
    assert m.value("eddies_cache_hits_total") == sum(per_state)
    ratio = m.value("eddies_cache_hit_ratio")
    assert ratio is not None and 0.99 < ratio < 1
    entries = m.value("eddies_state_entries", state="n")
    if backend == "memory":
        assert entries == users
    else:
        assert entries is not None and entries > 0  # RocksDB's estimate


def test_kafka_worker_refuses_a_public_bind_before_any_file_exists(tmp_path: Path) -> None:
    pytest.importorskip("faust")
    from eddies.runtime.kafka.worker import KafkaWorker

    job = ed.Job("kafka-visits")
    (job.source(ed.sources.kafka("visits", value_format="json"), timestamp="ts")
        .key_by("user").process(Visits()).sink(ed.sinks.kafka("counts")))
    with pytest.raises(ConfigError, match=r"without a token; pass token="):
        KafkaWorker(job, "kafka://127.0.0.1:9", tmp_path / "worker", metrics_port=free_port(),
                    bind="0.0.0.0")
    assert not (tmp_path / "worker").exists()
