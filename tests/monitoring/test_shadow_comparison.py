"""Shadow comparison verdicts on prediction logs with a known disagreement, latency and errors.

The logs are written with PredictionLogWriter and read back, as the gateway's would be.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from modelcycle.monitoring.predictions import PredictionLogWriter, UpstreamAnswer, read_prediction_log
from modelcycle.monitoring.shadow import (
    ShadowPolicy,
    compare_followed_log,
    compare_shadow,
    render_shadow_report,
    wilson_interval,
)

POLICY = ShadowPolicy(min_requests=500, min_agreement=0.95, max_latency_ratio=1.5, max_error_rate=0.01)


def _binary(version: str, label: int, positive: float, latency_ms: float, status: int = 200) -> UpstreamAnswer:
    if status != 200:
        return {"model": "m", "version": version, "predictions": None, "probabilities": None,
                "latency_ms": latency_ms, "status": status, "error": "failed"}
    return {"model": "m", "version": version, "predictions": [label],
            "probabilities": [{"0": 1 - positive, "1": positive}], "latency_ms": latency_ms,
            "status": status, "error": None}


def write_log(
    log_dir: Path,
    *,
    requests: int,
    disagreements: int = 0,
    latency_factor: float = 1.0,
    shadow_errors: int = 0,
    client_errors: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """A log of binary predictions where exactly `disagreements` rows get the other class from
    the shadow, `shadow_errors` mirrors get a 500 and `client_errors` requests are refused by
    both sides; shadow latency is production's times `latency_factor`."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(requests)
    disagree = set(chosen[:disagreements])
    failing = set(chosen[disagreements:disagreements + shadow_errors])
    refused = set(chosen[disagreements + shadow_errors:disagreements + shadow_errors + client_errors])
    with PredictionLogWriter(log_dir) as log:
        for n in range(requests):
            positive = float(rng.uniform(0.05, 0.95))
            label = int(positive > 0.5)
            latency = float(rng.gamma(9, 0.25))
            request_id = f"r{n}"
            production = _binary("1", label, positive, latency, status=422 if n in refused else 200)
            log.write_request(request_id=request_id, records=[{"x": positive}], production=production,
                              mirrored=True, shadow_reason="pending", ts=1_764_000_000.0 + n)
            if n in disagree:
                shadow_positive = 0.4 if label else 0.6
            else:
                low, high = (0.51, 1.0) if label else (0.0, 0.5)
                shadow_positive = float(np.clip(positive + rng.normal(0, 0.02), low, high))
            status = 422 if n in refused else 500 if n in failing else 200
            shadow = _binary("2", int(shadow_positive > 0.5), shadow_positive, latency * latency_factor, status)
            log.write_shadow(request_id=request_id, shadow=shadow, ts=1_764_000_000.0 + n + 0.5)
    return read_prediction_log(log_dir)


def test_two_percent_disagreement_promotes(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, disagreements=20), policy=POLICY)
    assert comparison.verdict == "promote", comparison.reasons
    assert comparison.agreement.value == pytest.approx(0.98)
    assert comparison.agreement.low < 0.98 < comparison.agreement.high
    assert comparison.agreement.low > 0.95
    assert comparison.compared_requests == 1000
    assert comparison.task == "classification" and comparison.score_kind == "positive_class_probability"
    assert comparison.production_versions == ["1"] and comparison.shadow_versions == ["2"]
    assert comparison.latency_ratio_p50.value == pytest.approx(1.0)
    assert all(check.outcome == "pass" for check in comparison.checks)


def test_a_followed_log_compares_like_the_whole_log(tmp_path: Path) -> None:
    write_log(tmp_path / "log", requests=300, disagreements=6, seed=1)
    early = compare_followed_log(tmp_path / "log", policy=POLICY)
    assert early.verdict == "hold" and early.requests == 300
    # A second writer logs r0..r699 again: ids already logged keep their first entries
    # (what a retried write leaves), followed or read whole.
    write_log(tmp_path / "log", requests=700, disagreements=150, seed=2)
    later = compare_followed_log(tmp_path / "log", policy=POLICY)
    whole = compare_shadow(read_prediction_log(tmp_path / "log"), policy=POLICY)
    assert later.model_dump(exclude={"computed_at"}) == whole.model_dump(exclude={"computed_at"})
    assert later.verdict == "reject"


def test_twenty_percent_disagreement_rejects(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, disagreements=200), policy=POLICY)
    assert comparison.verdict == "reject"
    assert comparison.agreement.value == pytest.approx(0.80)
    assert [check.name for check in comparison.checks if check.outcome == "fail"] == ["agreement"]
    assert any("agreement 0.800" in reason and "breaches" in reason for reason in comparison.reasons)


def test_too_few_requests_hold_even_when_they_look_good(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=60), policy=POLICY)
    assert comparison.verdict == "hold"
    assert comparison.reasons[0] == "60 of the 500 compared requests the policy needs"


def test_disagreement_at_the_threshold_holds_until_the_data_can_tell(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, disagreements=50), policy=POLICY)
    assert comparison.verdict == "hold"
    assert comparison.agreement.low < 0.95 < comparison.agreement.high
    assert any("cannot yet be told from" in reason for reason in comparison.reasons)


def test_a_slow_shadow_rejects_on_latency_ratio(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, latency_factor=3.0), policy=POLICY)
    assert comparison.verdict == "reject"
    assert comparison.latency_ratio_p50.value == pytest.approx(3.0)
    assert comparison.latency_ratio_p50.low > 1.5
    assert comparison.latency_ratio_p95 == pytest.approx(3.0)
    assert [check.name for check in comparison.checks if check.outcome == "fail"] == ["latency_ratio"]


def test_shadow_errors_reject(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, shadow_errors=100), policy=POLICY)
    assert comparison.verdict == "reject"
    assert comparison.shadow_error_rate.value == pytest.approx(0.10)
    assert comparison.compared_requests == 900
    assert [check.name for check in comparison.checks if check.outcome == "fail"] == ["error_rate"]


def test_a_shadow_that_fails_everything_is_rejected_before_min_requests(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=20, shadow_errors=20), policy=POLICY)
    assert comparison.verdict == "reject"
    assert comparison.compared_requests == 0


def test_inputs_both_sides_refuse_are_not_held_against_the_shadow(tmp_path: Path) -> None:
    comparison = compare_shadow(write_log(tmp_path, requests=1000, client_errors=100), policy=POLICY)
    assert comparison.verdict == "promote", comparison.reasons
    assert comparison.shadow_error_rate.value == 0
    assert comparison.production_error_rate.value == pytest.approx(0.10)


def test_an_empty_log_holds(tmp_path: Path) -> None:
    comparison = compare_shadow(read_prediction_log(tmp_path), policy=POLICY)
    assert comparison.verdict == "hold" and comparison.requests == 0
    assert comparison.agreement is None and comparison.latency_ratio_p50 is None


def test_dropped_and_pending_mirrors_are_counted_but_not_compared(tmp_path: Path) -> None:
    answer = _binary("1", 1, 0.9, 2.0)
    with PredictionLogWriter(tmp_path) as log:
        log.write_request(request_id="dropped", records=None, production=answer, mirrored=True,
                          shadow_reason="dropped: mirror queue full")
        log.write_request(request_id="pending", records=None, production=answer, mirrored=True, shadow_reason="pending")
        log.write_request(request_id="out", records=None, production=answer, mirrored=False, shadow_reason="not sampled")
        for done in ("done-1", "done-2"):
            log.write_request(request_id=done, records=None, production=answer, mirrored=True, shadow_reason="pending")
            log.write_shadow(request_id=done, shadow=_binary("2", 1, 0.8, 2.0))
    comparison = compare_shadow(read_prediction_log(tmp_path), policy=POLICY)
    assert (comparison.requests, comparison.mirrored, comparison.dropped) == (5, 4, 1)
    assert (comparison.shadow_calls, comparison.compared_requests) == (2, 2)
    assert comparison.mean_abs_score_delta.value == pytest.approx(0.1)


def test_regression_compares_predictions_and_tests_their_distribution(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with PredictionLogWriter(tmp_path) as log:
        for n in range(600):
            value = float(rng.normal(100, 10))
            for side, shift in (("production", 0.0), ("shadow", 5.0)):
                answer: UpstreamAnswer = {"model": "m", "version": side, "predictions": [value + shift],
                                          "probabilities": None, "latency_ms": 2.0, "status": 200, "error": None}
                if side == "production":
                    log.write_request(request_id=f"r{n}", records=None, production=answer, mirrored=True)
                else:
                    log.write_shadow(request_id=f"r{n}", shadow=answer)
    comparison = compare_shadow(read_prediction_log(tmp_path), policy=POLICY)
    assert comparison.task == "regression" and comparison.score_kind == "prediction"
    assert comparison.mean_abs_score_delta.value == pytest.approx(5.0)
    assert comparison.agreement is None
    assert [check.name for check in comparison.checks] == ["latency_ratio", "error_rate"]
    assert comparison.verdict == "promote"
    assert comparison.ks_pvalue < 0.01


def test_multiclass_deltas_are_total_variation_distances(tmp_path: Path) -> None:
    production = {"a": 0.6, "b": 0.3, "c": 0.1}
    shadow = {"a": 0.5, "b": 0.4, "c": 0.1}
    with PredictionLogWriter(tmp_path) as log:
        for n in range(10):
            log.write_request(request_id=f"r{n}", records=None, mirrored=True, production={
                "model": "m", "version": "1", "predictions": ["a"], "probabilities": [production],
                "latency_ms": 1.0, "status": 200, "error": None})
            log.write_shadow(request_id=f"r{n}", shadow={
                "model": "m", "version": "2", "predictions": ["a"], "probabilities": [shadow],
                "latency_ms": 1.0, "status": 200, "error": None})
    comparison = compare_shadow(read_prediction_log(tmp_path), policy=POLICY)
    assert comparison.score_kind == "total_variation"
    assert comparison.mean_abs_score_delta.value == pytest.approx(0.1)
    assert comparison.agreement.value == 1.0


def test_a_frame_that_is_not_a_prediction_log_is_refused_naming_the_columns() -> None:
    with pytest.raises(ValueError, match="missing columns.*shadow_prediction"):
        compare_shadow(pd.DataFrame({"request_id": ["a"], "production_prediction": [1]}))


def test_wilson_interval_matches_scipy() -> None:
    for successes, n in ((98, 100), (0, 30), (30, 30), (500, 1000)):
        expected = stats.binomtest(successes, n).proportion_ci(confidence_level=0.9, method="wilson")
        assert wilson_interval(successes, n, confidence=0.9) == pytest.approx((expected.low, expected.high))


def test_policy_rejects_thresholds_no_sample_can_show() -> None:
    with pytest.raises(ValueError, match="min_agreement"):
        ShadowPolicy(min_agreement=1.0)
    with pytest.raises(ValueError, match="max_error_rate"):
        ShadowPolicy(max_error_rate=0.0)


def test_report_is_a_self_contained_page_with_the_plots(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", requests=300, disagreements=30)
    comparison = compare_shadow(log, policy=POLICY)
    path = render_shadow_report(comparison, log, tmp_path / "report" / "shadow.html")
    page = path.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert comparison.verdict in page and "Agreement over time" in page
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert not list((tmp_path / "report").glob(".*.tmp"))
