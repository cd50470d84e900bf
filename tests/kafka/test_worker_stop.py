"""``eddies worker`` stopped by SIGTERM: a final checkpoint with its offsets committed, one
line, plain output without a terminal; a second signal exits at once, even from a stuck
round."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from .conftest import produce, read_topic, wait_until
from .test_worker import TARGET, env, last_per_key, make_events, reference

pytestmark = pytest.mark.kafka

# No checkpoint falls due while the worker runs: only the stop's final one can hold its work.
NO_CHECKPOINTS = ("--checkpoint-interval", "100000000", "--checkpoint-ms", "100000000")

STUCK_JOB = '''
import time
from pathlib import Path

import eddies as ed
from examples.kafka_totals import Totals

STALL = Path(__file__).parent / "stall"


class Stuck(Totals):
    def on_event(self, event, ctx):
        while STALL.exists():  # a round that never ends until the test says so
            (STALL.parent / "stalled").touch()
            time.sleep(0.05)
        return super().on_event(event, ctx)


job = ed.Job("stuck")
(job.source(ed.sources.kafka("stuck-in", key="account"), timestamp="ts",
            watermarks=ed.BoundedOutOfOrderness(5_000, idle_timeout=10_000))
    .key_by("account").process(Stuck()).sink(ed.sinks.kafka("stuck-out", key="account")))
'''


def log_lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def events_in(line: str) -> int:
    match = re.search(r": ([\d,]+) events in", line)
    assert match, line
    return int(match[1].replace(",", ""))


def test_sigterm_takes_a_final_checkpoint_commits_and_resumes_exactly(
    kafka_broker, workers, tmp_path
) -> None:
    first = make_events(tmp_path / "e1.jsonl", 40_000, 500, seed=11)
    second = make_events(tmp_path / "e2.jsonl", 40_000, 500, seed=12, t0=500_000)
    produce(kafka_broker, first, "stop-in", "account", partitions=6)
    w = workers(TARGET, kafka_broker, "w", env("stop"), *NO_CHECKPOINTS,
                "--progress-every", "0.5")
    wait_until(lambda: any(re.match(r"progress: [1-9]", line) for line in log_lines(w.log)),
               120, "a progress line with events")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(10) == 0  # a requested stop is a worker's normal end
    w.stop()
    text = w.log.read_text(errors="replace")
    lines = text.splitlines()
    assert "\x1b[" not in text  # no terminal codes in a log file
    assert "Traceback" not in text and "-INT-" not in text
    assert ("SIGTERM: stopping after the current round: final checkpoint, commit, leaving the "
            "group (SIGTERM again to exit at once)") in lines
    last = lines[-1]
    assert last.startswith("stop: stopped by SIGTERM at a final checkpoint (offsets committed, "
                           "left the group): "), last
    processed = events_in(last)
    assert processed > 0
    # Every output of the stopped worker is out (outputs go before the checkpoint's markers).
    assert len(read_topic(kafka_broker, "stop-out")) == processed

    produce(kafka_broker, second, "stop-in", "account")
    again = workers(TARGET, kafka_broker, "w", env("stop"))
    expected = reference(first, second)
    wait_until(lambda: last_per_key(kafka_broker, "stop-out") == expected, 120,
               "totals after the restart to equal the local runner's")
    assert again.stop() == 0
    # The restart took the final checkpoint: state from local RocksDB at the markers, input
    # from their offsets, so no event was processed twice (one output per event).
    after = again.restores()[-6:]
    assert {r["source"] for r in after} == {"local"}
    assert all(r["marker_offset"] is not None for r in after)
    assert len(read_topic(kafka_broker, "stop-out")) == 80_000


def test_a_second_signal_exits_at_once_from_a_stuck_round(kafka_broker, workers, tmp_path):
    events = make_events(tmp_path / "e.jsonl", 20_000, 300, seed=13)
    produce(kafka_broker, events, "stuck-in", "account", partitions=6)
    job = tmp_path / "stuckjob.py"
    job.write_text(STUCK_JOB)
    (tmp_path / "stall").touch()
    w = workers(f"{job}:job", kafka_broker, "w", {})
    wait_until(lambda: (tmp_path / "stalled").exists(), 120, "the stuck round")
    w.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: any(line.startswith("SIGTERM: stopping") for line in log_lines(w.log)),
               10, "the first signal's note")
    w.proc.send_signal(signal.SIGTERM)  # the round never ends: only this can stop the worker
    assert w.proc.wait(10) == 128 + signal.SIGTERM
    w.stop()
    lines = log_lines(w.log)
    assert lines[-1] == ("error: second signal (SIGTERM): exiting at once, without a final "
                         "checkpoint; the last checkpoint is intact and the partitions resume "
                         "from it")
    assert not any("stopped by" in line for line in lines)

    (tmp_path / "stall").unlink()
    again = workers(f"{job}:job", kafka_broker, "w", {})
    expected = reference(events)
    wait_until(lambda: last_per_key(kafka_broker, "stuck-out") == expected, 120,
               "totals after the restart to equal the local runner's")
    assert again.stop() == 0


def last_assigned(w) -> str | None:
    """The partitions the worker's last ``assigned`` log line lists (None before any)."""
    found = [line.split(": assigned ", 1)[1] for line in log_lines(w.log)
             if ": assigned " in line]
    return found[-1] if found else None


def test_a_worker_holding_no_partition_says_its_stop_took_no_checkpoint(
    kafka_broker, workers, tmp_path
) -> None:
    events = make_events(tmp_path / "e.jsonl", 2_000, 50, seed=14)
    produce(kafka_broker, events, "idle-in", "account", partitions=1)
    a = workers(TARGET, kafka_broker, "a", env("idle"))
    wait_until(lambda: a.restores(), 120, "the first worker to restore the partition")
    b = workers(TARGET, kafka_broker, "b", env("idle"))
    # One partition, two workers: after the rebalance one of them holds nothing.
    held = "[('idle-in', 0)]"
    wait_until(lambda: last_assigned(b) is not None
               and {last_assigned(a), last_assigned(b)} == {held, "[]"}, 120,
               "the rebalance to leave one worker without a partition")
    idle, busy = (a, b) if last_assigned(a) == "[]" else (b, a)

    def settled() -> bool:  # the busy worker restored the partition of each assignment
        held_lines = [line for line in log_lines(busy.log) if line.endswith(f"assigned {held}")]
        return len(busy.restores()) == len(held_lines)

    wait_until(settled, 120, "the busy worker to restore its partition")
    restores = len(busy.restores())
    idle.proc.send_signal(signal.SIGTERM)
    assert idle.proc.wait(30) == 0
    idle.stop()
    last = log_lines(idle.log)[-1]
    assert last.startswith("idle: stopped by SIGTERM holding no restored partition, so with "
                           "no final checkpoint (nothing to checkpoint; its partitions resume "
                           "from their last checkpoint; left the group): "), last
    assert "final checkpoint (offsets committed" not in idle.log.read_text(errors="replace")

    # The other worker, holding the partition again after the rebalance, takes one.
    wait_until(lambda: len(busy.restores()) > restores, 120, "the rebalance after the stop")
    busy.proc.send_signal(signal.SIGTERM)
    assert busy.proc.wait(30) == 0
    busy.stop()
    last = log_lines(busy.log)[-1]
    assert last.startswith("idle: stopped by SIGTERM at a final checkpoint (offsets committed, "
                           "left the group): "), last
    assert len(read_topic(kafka_broker, "idle-out")) == 2_000  # each event once, none lost



def count_lines(w, text: str) -> int:
    return sum(text in line for line in log_lines(w.log))


@pytest.mark.parametrize("when", ["joining", "rejoining"])
def test_a_worker_stopped_in_the_middle_of_a_rebalance_exits_promptly_and_cleanly(
    kafka_broker, workers, tmp_path, when
) -> None:
    """Stopped while the group rebalances: during its own first join (before its data task
    runs), or after it held partitions, when a third worker's join revoked them."""
    name = f"midreb-{when}"
    events = make_events(tmp_path / "e.jsonl", 30_000, 500, seed=15)
    produce(kafka_broker, events, f"{name}-in", "account", partitions=6)
    a = workers(TARGET, kafka_broker, "a", env(name))
    wait_until(lambda: len(a.restores()) == 6, 120, "the first worker to restore all partitions")
    revoked = count_lines(a, ": revoked ")
    b = workers(TARGET, kafka_broker, "b", env(name))
    if when == "joining":
        # b's join makes a revoke its partitions: b is stopped while the group rebalances.
        wait_until(lambda: count_lines(a, ": revoked ") > revoked, 120,
                   "the rebalance of the second worker's join")
    else:
        wait_until(lambda: b.restores(), 120, "the second worker to restore partitions")
        revoked = count_lines(b, ": revoked ")
        workers(TARGET, kafka_broker, "c", env(name))
        wait_until(lambda: count_lines(b, ": revoked ") > revoked, 120,
                   "the rebalance of a third worker's join")
    b.proc.send_signal(signal.SIGTERM)
    # Its stop may wait out the join in progress (stop_timeout: the session timeout + 9 s),
    # then leave the group and close: more than that is given.
    assert b.proc.wait(30) == 0
    b.stop()
    text = b.log.read_text(errors="replace")
    assert "Traceback" not in text and "Event loop is closed" not in text, text
    assert log_lines(b.log)[-1].startswith(f"{name}: stopped by SIGTERM "), text
    # The others take every partition back and end with exact totals.
    expected = reference(events)
    wait_until(lambda: last_per_key(kafka_broker, f"{name}-out") == expected, 120,
               "totals after the stop to equal the local runner's")
    assert a.stop() == 0
    assert "Traceback" not in a.log.read_text(errors="replace")
