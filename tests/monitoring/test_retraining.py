"""The guard rails of the closed loop: when a breach may start a retraining, and the ledger
that keeps the attempts across processes."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest

from modelcycle.monitoring.retraining import Attempt, RetrainBusy, RetrainLedger, admit, breach
from modelcycle.spec import RetrainSpec

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def _attempt(hours_ago: float, outcome: str = "promoted", version: int | None = None) -> Attempt:
    return Attempt(trigger="drift", started_at=NOW - dt.timedelta(hours=hours_ago), outcome=outcome, version=version)


def test_a_breach_needs_an_allowed_trigger_and_enough_rows() -> None:
    policy = RetrainSpec(triggers=["drift"], min_rows=100)
    assert breach("drift", 100, policy) == "drift"
    assert breach("drift", 99, policy) is None  # too few live rows to trust
    assert breach("performance", 1000, policy) is None  # not a trigger of this policy
    assert breach("ok", 1000, policy) is None
    assert breach("performance", 1000, RetrainSpec()) == "performance"


def test_admission_when_nothing_ran() -> None:
    assert admit([], RetrainSpec(), now=NOW).allowed


@pytest.mark.parametrize("outcome", ["training", "shadow"])
def test_one_retraining_at_a_time(outcome: str) -> None:
    # Even a day later: a retraining still running (or its version still in shadow) blocks the next.
    decision = admit([_attempt(30, outcome, version=4)], RetrainSpec(cooldown="1h"), now=NOW)
    assert not decision.allowed
    assert "one retraining at a time" in decision.reason
    if outcome == "shadow":
        assert "version 4 is serving as shadow" in decision.reason


def test_cooldown_counts_from_the_last_start() -> None:
    policy = RetrainSpec(cooldown="6h", max_per_day=10)
    decision = admit([_attempt(10), _attempt(2, "rejected")], policy, now=NOW)
    assert not decision.allowed
    assert decision.reason.startswith("cooldown:") and "6h" in decision.reason
    assert decision.next_allowed_at == NOW + dt.timedelta(hours=4)
    assert admit([_attempt(6)], policy, now=NOW).allowed


def test_daily_cap_over_any_24_hours() -> None:
    policy = RetrainSpec(cooldown="1m", max_per_day=2)
    history = [_attempt(23), _attempt(1, "invalid_data"), _attempt(30)]
    decision = admit(history, policy, now=NOW)
    assert not decision.allowed
    assert "daily cap: 2 retrainings" in decision.reason and "max_per_day is 2" in decision.reason
    assert decision.next_allowed_at == NOW + dt.timedelta(hours=1)  # when the one 23 h ago leaves the window
    assert admit([_attempt(25), _attempt(1)], policy, now=NOW).allowed


def test_the_ledger_keeps_attempts_and_the_lock(tmp_path: Path) -> None:
    ledger = RetrainLedger(tmp_path / "fraud.json")
    attempt = ledger.begin("drift", ["prediction drift"], now=NOW)
    assert [a.outcome for a in RetrainLedger(tmp_path / "fraud.json").attempts()] == ["training"]
    # A second process cannot begin while this one trains.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_try_begin, (str(tmp_path / "fraud.json"),)) == "busy"
    attempt = ledger.update(attempt, outcome="shadow", version=2)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_try_begin, (str(tmp_path / "fraud.json"),)) == "busy"  # shadow still holds it
    ledger.update(attempt, outcome="promoted", finished_at=NOW)
    assert [(a.outcome, a.version) for a in ledger.attempts()] == [("promoted", 2)]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_try_begin, (str(tmp_path / "fraud.json"),)) == "began"


def test_an_attempt_left_training_by_a_dead_process_is_marked_failed(tmp_path: Path) -> None:
    path = tmp_path / "fraud.json"
    process = multiprocessing.get_context("spawn").Process(target=_begin_and_die, args=(str(path),))
    process.start()
    process.join(60)
    assert process.exitcode == 3
    attempts = RetrainLedger(path).attempts()
    assert [a.outcome for a in attempts] == ["failed"]
    assert "stopped before it ended" in attempts[0].message
    # ...and it no longer blocks the next one (the cooldown aside).
    assert admit(attempts, RetrainSpec(cooldown="1s"), now=attempts[0].started_at + dt.timedelta(seconds=2)).allowed


def _try_begin(path: str) -> str:
    try:
        RetrainLedger(path).begin("drift", [], now=NOW)
    except RetrainBusy:
        return "busy"
    return "began"


def _begin_and_die(path: str) -> None:
    import os

    RetrainLedger(path).begin("performance", ["recall under the goal"], now=NOW)
    os._exit(3)
