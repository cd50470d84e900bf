"""A worker's /healthz (503 until its partitions are restored, then 200, and 503 again while a
rebalance restores them), its consumer lag gauge (above 0 over an unprocessed backlog, 0 once
caught up, gone for a partition that moved) and its progress line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from eddies.runtime.kafka.tansu import free_port

from .conftest import ROOT, produce, wait_until
from .test_worker import make_events

pytestmark = pytest.mark.kafka


def get(url: str) -> tuple[int, Any]:
    """(status, body) of a GET; (0, None) while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, ctype, body = response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        status, ctype, body = exc.code, exc.headers["Content-Type"], exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None
    return status, json.loads(body) if ctype == "application/json" else body.decode()


def lags(base: str) -> dict[int, float]:
    """eddies_consumer_lag per partition of the input topic, as /metrics shows it now, and
    under -1 the events the keyed operator processed."""
    status, text = get(f"{base}/metrics")
    out = {}
    for line in text.splitlines() if status == 200 else []:
        if line.startswith("eddies_consumer_lag{") and 'topic="health-in"' in line:
            partition = int(line.split('partition="')[1].split('"')[0])
            out[partition] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('eddies_events_in_total{job="health",operator="Totals"}'):
            out[-1] = float(line.rsplit(" ", 1)[1])
    return out


def test_healthz_and_consumer_lag_of_a_worker(kafka_broker, workers, tmp_path):
    events = make_events(tmp_path / "e.jsonl", 3_000, 200, seed=11)
    produce(kafka_broker, events, "health-in", "account", partitions=2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    restore_gate, round_gate = tmp_path / "restore.gate", tmp_path / "round.gate"
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "kafka" / "health_worker.py"),
             str(restore_gate), str(round_gate), "worker", "examples/kafka_totals.py:job",
             "--broker", f"kafka://{kafka_broker}", "--state-dir", str(tmp_path / "w"),
             "--session-timeout", "6", "--checkpoint-ms", "300", "--metrics-port", str(port),
             "--progress-every", "0.2"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**os.environ, "EDDIES_JOB": "health", "EDDIES_INPUT": "health-in",
                 "EDDIES_OUTPUT": "health-out"})
    try:
        # Held before restoring its two partitions: not healthy, and the body says why.
        wait_until(lambda: (get(f"{base}/healthz")[1] or {}).get("status") == "restoring", 60,
                   "the worker to be assigned its partitions")
        status, body = get(f"{base}/healthz")
        assert status == 503
        assert body["restoring"] == ["health-in[0]", "health-in[1]"]
        assert body["reason"] == "restoring 2 of 2 assigned partitions"

        restore_gate.touch()
        wait_until(lambda: get(f"{base}/healthz")[0] == 200, 60, "/healthz to answer 200")
        status, body = get(f"{base}/healthz")
        assert body["status"] == "ok"
        assert body["partitions"] == ["health-in[0]", "health-in[1]"]
        # Held after its first round of 500 records: the rest of the backlog is lag.
        wait_until(lambda: {0, 1, -1} <= lags(base).keys(), 60, "the lag of both partitions")
        held = lags(base)
        processed = held.pop(-1)
        assert 0 < processed < 3_000
        assert sum(held.values()) == 3_000 - processed

        round_gate.touch()
        wait_until(lambda: lags(base) == {0: 0.0, 1: 0.0, -1: 3_000.0}, 60,
                   "the lag to drop to 0")
        assert get(f"{base}/healthz")[0] == 200
        wait_until(lambda: any("lag 0 (2 partitions)" in line
                               for line in log.read_text().splitlines()
                               if line.startswith("progress: 3,000 events in")), 30,
                   "a progress line with the lag caught up")

        # A second worker joins: the rebalance's restore is held, /healthz says so.
        restore_gate.unlink()
        other = workers("examples/kafka_totals.py:job", kafka_broker, "other",
                        {"EDDIES_JOB": "health", "EDDIES_INPUT": "health-in",
                         "EDDIES_OUTPUT": "health-out"})
        wait_until(lambda: (get(f"{base}/healthz")[1] or {}).get("status") == "restoring", 60,
                   "the rebalance to assign the first worker its share")
        status, body = get(f"{base}/healthz")
        assert status == 503 and len(body["restoring"]) == 1
        kept = int(body["restoring"][0].removeprefix("health-in[").removesuffix("]"))
        restore_gate.touch()
        wait_until(lambda: get(f"{base}/healthz")[0] == 200, 60, "/healthz to answer 200 again")
        assert get(f"{base}/healthz")[1]["partitions"] == [f"health-in[{kept}]"]
        wait_until(lambda: lags(base) == {kept: 0.0, -1: 3_000.0}, 60,
                   "the lag of the moved partition to be dropped")
        assert other.stop() == 0
    finally:
        restore_gate.touch()
        round_gate.touch()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, log.read_text()[-3_000:]
