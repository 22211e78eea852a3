"""`promotion.decide`: what the operator does with a shadow, given a comparison. Plain
functions, no cluster: the cases the end-to-end tests cannot reach cheaply."""

from __future__ import annotations

import datetime as dt

import pytest

from modelcycle.operator.promotion import decide, parse_duration

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
POLICY = {"minRequests": 40, "minAgreement": 0.8, "maxLatencyRatio": 4, "maxErrorRate": 0.2}
GATEWAY_POLICY = {"min_requests": 40, "min_agreement": 0.8, "max_latency_ratio": 4.0, "max_error_rate": 0.2,
                  "confidence": 0.95}


def spec(mode: str = "auto", approved: bool = False, min_duration: str = "10m") -> dict:
    return {
        "production": {"version": 3, "image": "a"},
        "shadow": {"version": 4, "image": "b", "approved": approved},
        "promotion": {"mode": mode, "minDuration": min_duration, **POLICY},
    }


def comparison(verdict: str, shadow_versions: list[str] | None = None, **policy: float) -> dict:
    return {"verdict": verdict, "reasons": [f"because {verdict}"], "shadow_versions": shadow_versions or ["4"],
            "policy": {**GATEWAY_POLICY, **policy}}


def test_auto_promotes_only_after_min_duration() -> None:
    early = decide(spec(), comparison("promote"), shadow_ready_since=NOW - dt.timedelta(minutes=4), now=NOW)
    assert early.action == "wait" and early.wait_s == pytest.approx(360)
    late = decide(spec(), comparison("promote"), shadow_ready_since=NOW - dt.timedelta(minutes=11), now=NOW)
    assert late.action == "promote"


def test_reject_removes_the_shadow_in_both_modes_and_even_if_approved() -> None:
    for mode in ("auto", "manual"):
        decision = decide(spec(mode, approved=True), comparison("reject"), shadow_ready_since=NOW, now=NOW)
        assert decision.action == "reject" and "because reject" in decision.reason


def test_manual_waits_for_approval_then_promotes_even_on_hold() -> None:
    waiting = decide(spec("manual"), comparison("promote"), shadow_ready_since=NOW, now=NOW)
    assert waiting.action == "wait" and "approval" in waiting.reason
    approved = decide(spec("manual", approved=True), comparison("hold"), shadow_ready_since=NOW, now=NOW)
    assert approved.action == "promote"


def test_an_approved_shadow_that_is_not_ready_waits() -> None:
    assert decide(spec(approved=True), None, shadow_ready_since=None, now=NOW).action == "wait"


def test_a_comparison_with_other_thresholds_is_not_acted_on() -> None:
    decision = decide(spec(), comparison("reject", min_agreement=0.99), shadow_ready_since=NOW, now=NOW)
    assert decision.action == "wait"
    assert "min_agreement is 0.99 in the gateway, 0.8 in spec.promotion.minAgreement" in decision.reason


def test_a_comparison_about_another_shadow_is_not_acted_on() -> None:
    decision = decide(spec(), comparison("reject", shadow_versions=["5"]), shadow_ready_since=NOW, now=NOW)
    assert decision.action == "wait" and "not 4" in decision.reason


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400),
                                               ("250ms", 0.25), ("0s", 0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "ten", "10 m", "1d"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 30s"):
        parse_duration(text)
