"""Metrics: every method the runner calls moves the exposition text as documented."""

from __future__ import annotations

import math
import re
import threading

import pytest

from eddies.errors import ConfigError
from eddies.runtime.metrics import STARTUP_PHASES, Metrics

MAX_TIME = 2**63 - 1
MIN_TIME = -(2**63)


def samples(m: Metrics) -> dict[str, float]:
    """``{'name{labels}': value}`` parsed from the text exposition, as a scraper sees it."""
    out = {}
    for line in m.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture
def now() -> list[float]:
    return [1_000_000.0]


@pytest.fixture
def m(now: list[float]) -> Metrics:
    return Metrics("fraud", clock=lambda: now[0])


def test_render_is_prometheus_text_with_job_label_and_prefix(m: Metrics) -> None:
    text = m.render().decode()
    assert m.content_type.startswith("text/plain")
    names = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert all(name.startswith("eddies_") for name, _ in names)
    assert ("eddies_dead_letters_total", "counter") in names
    assert ("eddies_checkpoint_duration_seconds", "histogram") in names
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert 'job="fraud"' in line, line
    assert "_created" not in text  # left out: they would double every scrape


def test_own_registry_per_instance() -> None:
    a, b = Metrics("a"), Metrics("a")  # same job name, two registries: no duplicate error
    a.dead_letters(3)
    assert a.value("eddies_dead_letters_total") == 3
    assert b.value("eddies_dead_letters_total") == 0


def test_counters_accumulate_increments(m: Metrics) -> None:
    m.events_in("parse", 10)
    m.events_in("parse", 5)
    m.events_in("count", 7)
    m.events_out("count", 2)
    m.dead_letters(1)
    m.dead_letters(2)
    m.late_events(4)
    m.late_dropped(1)
    m.ttl_expired(30)
    m.sweeps(2)
    s = samples(m)
    assert s['eddies_events_in_total{job="fraud",operator="parse"}'] == 15
    assert s['eddies_events_in_total{job="fraud",operator="count"}'] == 7
    assert s['eddies_events_out_total{job="fraud",operator="count"}'] == 2
    assert s['eddies_dead_letters_total{job="fraud"}'] == 3
    assert s['eddies_late_events_total{job="fraud"}'] == 4
    assert s['eddies_late_dropped_total{job="fraud"}'] == 1
    assert s['eddies_ttl_expired_total{job="fraud"}'] == 30
    assert s['eddies_ttl_sweeps_total{job="fraud"}'] == 2


def test_watermark_and_lag_computed_at_scrape(m: Metrics, now: list[float]) -> None:
    s = samples(m)
    assert math.isnan(s['eddies_watermark_ms{job="fraud"}'])  # before the first watermark
    assert math.isnan(s['eddies_watermark_lag_ms{job="fraud"}'])
    m.watermark(990_000)
    s = samples(m)
    assert s['eddies_watermark_ms{job="fraud"}'] == 990_000
    assert s['eddies_watermark_lag_ms{job="fraud"}'] == 10_000
    now[0] += 5_000  # the watermark is stuck: the lag grows without another call
    assert samples(m)['eddies_watermark_lag_ms{job="fraud"}'] == 15_000
    m.watermark(MAX_TIME)  # end of bounded input
    s = samples(m)
    assert s['eddies_watermark_ms{job="fraud"}'] == math.inf
    assert s['eddies_watermark_lag_ms{job="fraud"}'] == 0
    m.watermark(MIN_TIME)
    assert math.isnan(samples(m)['eddies_watermark_ms{job="fraud"}'])


def test_state_size_is_absolute(m: Metrics) -> None:
    m.state_size("seen", 100, 4_096)
    m.state_size("seen", 80, 3_000)
    m.state_size("devices", 5, 200)
    s = samples(m)
    assert s['eddies_state_entries{job="fraud",state="seen"}'] == 80
    assert s['eddies_state_bytes{job="fraud",state="seen"}'] == 3_000
    assert s['eddies_state_entries{job="fraud",state="devices"}'] == 5


def test_checkpoints(m: Metrics) -> None:
    m.checkpoint(0.02, 1_000)
    m.checkpoint(0.3, 5_000)
    s = samples(m)
    assert s['eddies_checkpoint_duration_seconds_count{job="fraud"}'] == 2
    assert s['eddies_checkpoint_duration_seconds_sum{job="fraud"}'] == pytest.approx(0.32)
    assert s['eddies_checkpoint_duration_seconds_bucket{job="fraud",le="0.025"}'] == 1
    assert s['eddies_checkpoint_duration_seconds_bucket{job="fraud",le="+Inf"}'] == 2
    assert s['eddies_checkpoint_size_bytes{job="fraud"}'] == 5_000
    assert s['eddies_checkpoint_bytes_total{job="fraud"}'] == 6_000


def test_cache_hit_ratio(m: Metrics) -> None:
    assert math.isnan(samples(m)['eddies_cache_hit_ratio{job="fraud"}'])
    m.cache(hits=3, misses=1)
    assert samples(m)['eddies_cache_hit_ratio{job="fraud"}'] == 0.75
    m.cache(hits=0, misses=4)
    s = samples(m)
    assert s['eddies_cache_hit_ratio{job="fraud"}'] == 3 / 8
    assert s['eddies_cache_hits_total{job="fraud"}'] == 3
    assert s['eddies_cache_misses_total{job="fraud"}'] == 5


def test_startup_phases_and_round_trips(m: Metrics) -> None:
    assert "eddies_startup_phase_seconds{" not in m.render().decode()  # none recorded yet
    for i, phase in enumerate(STARTUP_PHASES):
        m.startup_phase(phase, 0.5 * (i + 1))
    m.startup_phase("restore", 0.25)  # a second restore (a rebalance) replaces the value
    m.backend_round_trips(12, phase="startup")
    m.backend_round_trips(3)
    m.backend_round_trips(4)
    s = samples(m)
    assert s['eddies_startup_phase_seconds{job="fraud",phase="open"}'] == 0.5
    assert s['eddies_startup_phase_seconds{job="fraud",phase="restore"}'] == 0.25
    assert s['eddies_startup_phase_seconds{job="fraud",phase="preload"}'] == 1.5
    assert s['eddies_startup_phase_seconds{job="fraud",phase="first_event"}'] == 2.0
    assert s['eddies_backend_round_trips_total{job="fraud",phase="startup"}'] == 12
    assert s['eddies_backend_round_trips_total{job="fraud",phase="run"}'] == 7
    with pytest.raises(ConfigError, match="lower_snake_case"):
        m.startup_phase("First Event", 1.0)


def test_labels_are_escaped(m: Metrics) -> None:
    m.events_in('we"ird\nop', 1)
    assert r'operator="we\"ird\nop"' in m.render().decode()


def test_thread_safe_counts(m: Metrics) -> None:
    def work() -> None:
        for _ in range(2_000):
            m.events_in("op", 1)
            m.cache(1, 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.value("eddies_events_in_total", operator="op") == 8_000
    assert m.value("eddies_cache_hit_ratio") == 0.5


def test_state_cache_per_state(m: Metrics) -> None:
    m.state_cache("seen", 90, 10)
    m.state_cache("seen", 5, 0)
    m.state_cache("totals", 0, 3)
    s = samples(m)
    assert s['eddies_state_cache_hits_total{job="fraud",state="seen"}'] == 95
    assert s['eddies_state_cache_misses_total{job="fraud",state="seen"}'] == 10
    assert s['eddies_state_cache_misses_total{job="fraud",state="totals"}'] == 3


def test_on_event_latency_is_a_histogram_per_operator(m: Metrics) -> None:
    m.on_event_latency("Fraud", 2e-6, events=1_000)  # one batch: 2 µs per event on average
    m.on_event_latency("Fraud", 40e-6, events=500)
    m.on_event_latency("Dedup", 1e-6, events=10)
    s = samples(m)
    assert s['eddies_on_event_seconds_count{job="fraud",operator="Fraud"}'] == 2
    assert s['eddies_on_event_seconds_bucket{job="fraud",le="2.5e-06",operator="Fraud"}'] == 1
    assert s['eddies_on_event_seconds_bucket{job="fraud",le="5e-05",operator="Fraud"}'] == 2
    assert math.isclose(s['eddies_on_event_busy_seconds_total{job="fraud",operator="Fraud"}'],
                        2e-6 * 1_000 + 40e-6 * 500)
    assert s['eddies_on_event_seconds_count{job="fraud",operator="Dedup"}'] == 1
