"""Selection on cross-validation, metrics, the cost-based threshold, gates, baselines and the report."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelcycle import artifacts
from modelcycle.evaluation import (
    Baseline,
    choose_threshold,
    evaluate_model,
    evaluate_set,
    gates,
    measure_baseline,
    select_candidate,
)
from modelcycle.lifecycle import evaluate_phase
from modelcycle.report import render_report
from modelcycle.spec import MetricThreshold, parse_spec
from modelcycle.training import CandidateRun, refit, split_data, train_candidate
from modelcycle.validation import infer_schema


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    fraud_frame = request.getfixturevalue("fraud_frame")
    from fraud_example import small_spec_dict
    from modelcycle.spec import parse_spec

    spec = parse_spec(small_spec_dict())
    splits = split_data(fraud_frame, spec)
    path = tmp_path_factory.mktemp("m") / "m.joblib"
    model, run = train_candidate(spec, spec.training.candidates[0], splits.train, artifact_path=str(path))
    return spec, splits, model, run


def test_metrics_match_sklearn_on_the_test_set(trained):
    spec, splits, model, run = trained
    ev = evaluate_model(model, spec, validation=splits.validation, test=splits.test,
                        out_of_time=splits.out_of_time, artifact_bytes=run.size_bytes)
    y = splits.test.is_fraud
    score = model.predict_proba(splits.test)[:, 1]
    test = ev.sets["test"]
    assert test.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert test.metrics["recall"] == pytest.approx(skm.recall_score(y, (score >= ev.threshold).astype(int)))
    assert np.sum(test.confusion_matrix) == len(splits.test)
    assert set(ev.sets) == {"validation", "test", "out_of_time"}
    assert test.roc and test.pr and test.calibration
    assert list(ev.importance)[0] in spec.features.input_columns
    assert ev.latency.p95_ms >= ev.latency.p50_ms > 0
    names = [g.name for g in ev.gates]
    assert "test.roc_auc" in names and "out_of_time.roc_auc" in names and "budget.latency" in names


def test_threshold_minimises_business_cost(trained):
    spec, splits, model, _ = trained
    threshold, curve = choose_threshold(model, splits.validation, spec)
    y = splits.validation.is_fraud.to_numpy()
    score = model.predict_proba(splits.validation)[:, 1]

    def cost(t):
        pred = score >= t
        return (spec.goal.cost.false_positive * np.sum(pred & (y == 0)) + spec.goal.cost.false_negative * np.sum(~pred & (y == 1))) / len(y)

    assert min(curve["cost_per_row"]) == pytest.approx(cost(threshold))
    assert all(cost(threshold) <= cost(t) + 1e-12 for t in np.linspace(0, 1, 51))
    # Misses cost 25x a false alarm, so the threshold sits well below 0.5.
    assert threshold < 0.3


def test_gates_fail_on_an_impossible_goal(trained):
    spec, splits, model, run = trained
    ev = evaluate_model(model, spec, validation=splits.validation, test=splits.test, out_of_time=None,
                        artifact_bytes=run.size_bytes)
    strict = spec.model_copy(update={"goal": spec.goal.model_copy(update={
        "primary": spec.goal.primary.model_copy(update={"min": 0.999})})})
    result = {g.name: g for g in gates(strict, ev.sets, ev.latency, 10**12)}
    assert not result["test.roc_auc"].passed and result["test.roc_auc"].value == ev.sets["test"].metrics["roc_auc"]
    assert not result["budget.artifact"].passed
    # A rejection says where its threshold came from: the spec's key, and the spec's note when it has one.
    assert result["test.roc_auc"].source == "goal.primary.min in the spec"
    assert result["budget.artifact"].source == "budget.max_artifact_mb in the spec"
    assert result["test.recall"].source == "goal.secondary[1].min in the spec"
    noted = strict.model_copy(update={"goal": strict.goal.model_copy(update={
        "primary": MetricThreshold(metric="roc_auc", min=0.999, note="what the fraud team signed off")})})
    gate = {g.name: g for g in gates(noted, ev.sets, ev.latency, 1)}["test.roc_auc"]
    assert gate.source == "goal.primary.min (what the fraud team signed off)"
    assert gate.describe().startswith("FAIL test.roc_auc") and "set by goal.primary.min (what the fraud team" in gate.describe()


def test_report_has_verdict_plots_and_tables(trained):
    spec, splits, model, run = trained
    ev = evaluate_model(model, spec, validation=splits.validation, test=splits.test,
                        out_of_time=splits.out_of_time, artifact_bytes=run.size_bytes)
    winner, scores, why = select_candidate(spec, [run])
    ev = ev.model_copy(update={"candidates": scores, "selection": why, "fit_rows": 1234})
    page = render_report(spec, ev, data_version="abc123def456", splits=splits.sizes())
    assert page.count("data:image/png;base64,") >= 6
    assert "Gates" in page and "test.roc_auc" in page and "logistic_regression" in page
    assert "threshold from" in page and "goal.primary.min in the spec" in page
    assert "Candidates (cross-validation on the training rows)" in page and f"{run.cv_mean:.4f}" in page
    assert "refit on 1,234 rows (training and validation)" in page
    assert ("<b>Rejected</b>" in page) == (not ev.passed) and ("<b>registered</b>" in page) == ev.passed
    assert "candidate</b>" not in page  # the status words are registered and rejected
    rejected = ev.model_copy(update={"gates": gates(spec.model_copy(update={"goal": spec.goal.model_copy(update={
        "primary": MetricThreshold(metric="roc_auc", min=0.999, note="signed off by the fraud team")})}),
        ev.sets, ev.latency, 1)})
    page = render_report(spec, rejected, data_version="abc123def456", splits=splits.sizes())
    assert "<b>Rejected</b>" in page and "FAIL test.roc_auc" in page and "signed off by the fraud team" in page


def _run(algorithm: str, mean: float, std: float, *, folds: int = 3, metric: str = "roc_auc") -> CandidateRun:
    return CandidateRun(algorithm=algorithm, params={}, cv_metric=metric, cv_mean=mean, cv_std=std, cv_folds=folds,
                        cv_results=[], search_rows=1000, train_rows=1000, fit_seconds=1.0, search_seconds=1.0,
                        artifact="unused", sha256="0" * 64, size_bytes=1)


def test_one_standard_error_rule(spec):
    # One standard error of the best: its fold scores' std over sqrt(folds) = 0.02 / sqrt(3) = 0.0115.
    runs = [_run("random_forest", 0.900, 0.020), _run("logistic_regression", 0.895, 0.010),
            _run("hist_gradient_boosting", 0.850, 0.010)]
    winner, scores, why = select_candidate(spec, runs)
    assert winner == 1 and [s.selected for s in scores] == [False, True, False]
    assert "random_forest has the best mean" in why and "within one standard error (0.0115)" in why
    assert [(s.algorithm, s.cv_mean, s.cv_std, s.cv_folds, s.cv_rows) for s in scores] == [
        (r.algorithm, r.cv_mean, r.cv_std, 3, 1000) for r in runs]
    # The folds agree more closely: the linear model is now outside the noise, and the best mean wins.
    runs[0] = _run("random_forest", 0.900, 0.002)
    assert select_candidate(spec, runs)[0] == 0
    # Between two ensembles within noise of each other, the better mean wins, whatever their order.
    ensembles = [_run("random_forest", 0.899, 0.02), _run("hist_gradient_boosting", 0.900, 0.02)]
    assert select_candidate(spec, ensembles)[0] == 1
    # A candidate without a score cannot win; with none scored, the selection says so.
    assert select_candidate(spec, [_run("logistic_regression", math.nan, 0.0), _run("random_forest", 0.7, 0.01)])[0] == 1
    with pytest.raises(ValueError, match="none of the 1 candidate"):
        select_candidate(spec, [_run("random_forest", math.nan, 0.0)])


def test_one_standard_error_rule_for_an_error_metric(spec):
    rmse = spec.model_copy(update={"task": "regression", "goal": spec.goal.model_copy(update={
        "primary": MetricThreshold(metric="rmse", max=100), "secondary": [], "cost": None})})
    noisy = [_run("random_forest", 10.0, 0.9, metric="rmse"), _run("ridge", 10.5, 0.1, metric="rmse")]
    assert select_candidate(rmse, noisy)[0] == 1  # 10.5 is within 0.9 / sqrt(3) = 0.52 of 10.0
    steady = [_run("random_forest", 10.0, 0.3, metric="rmse"), _run("ridge", 10.5, 0.1, metric="rmse")]
    assert select_candidate(rmse, steady)[0] == 0  # lower is better, and 0.5 > 0.3 / sqrt(3)


@pytest.fixture(scope="module")
def forest(tmp_path_factory, trained):
    spec, splits, _, _ = trained
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == "random_forest"]
    path = tmp_path_factory.mktemp("m") / "forest.joblib"
    _, run = train_candidate(spec, candidate, splits.train, artifact_path=str(path))
    return run


def test_selection_follows_cross_validation_when_the_validation_split_disagrees(trained, forest, fraud_frame, tmp_path):
    """The user's case: one 15% validation split ranks the candidates one way, the search's
    cross-validation the other way. The CV ranking decides; the winner is refit on the training
    and validation rows, and its threshold is chosen on validation by the fit that never saw them."""
    spec, splits, _, linear = trained
    runs = [linear, forest]
    on_validation = [evaluate_set(artifacts.load(r.artifact, sha256=r.sha256), splits.validation,
                                  curves=False).metrics["roc_auc"] for r in runs]
    validation_loser = int(np.argmin(on_validation))
    # Make the cross-validation rank the validation split's loser first, far beyond the folds' noise.
    runs = [r.model_copy(update={"cv_mean": 0.99 if i == validation_loser else 0.60, "cv_std": 0.001})
            for i, r in enumerate(runs)]
    selection = evaluate_phase(spec, fraud_frame, runs, schema=infer_schema(fraud_frame, spec),
                               artifact_path=tmp_path / "best.joblib")
    ev = selection.evaluation
    assert ev.algorithm == runs[validation_loser].algorithm
    assert [c.selected for c in ev.candidates] == [i == validation_loser for i in range(2)]
    assert [(c.cv_mean, c.cv_std) for c in ev.candidates] == [(r.cv_mean, r.cv_std) for r in runs]
    assert runs[validation_loser].algorithm in ev.selection and "0.9900 ± 0.0010" in ev.selection

    # Refit on every row that is neither test nor out-of-time, with the parameters the search chose.
    development = pd.concat([splits.train, splits.validation])
    assert ev.fit_rows == len(development) == len(fraud_frame) - len(splits.test) - len(splits.out_of_time)
    by_hand = refit(spec, runs[validation_loser], development)
    np.testing.assert_allclose(selection.model.predict_proba(splits.test), by_hand.predict_proba(splits.test), rtol=1e-6)
    assert selection.model.params == runs[validation_loser].params

    # The threshold and the validation figures come from the fit on the training rows only.
    held_out = artifacts.load(runs[validation_loser].artifact, sha256=runs[validation_loser].sha256)
    threshold, _ = choose_threshold(held_out, splits.validation, spec)
    assert ev.threshold == selection.model.threshold == threshold
    assert ev.sets["validation"].metrics["roc_auc"] == pytest.approx(on_validation[validation_loser])
    stored = artifacts.load(tmp_path / "best.joblib", sha256=selection.sha256)
    assert stored.threshold == threshold and stored.schema is not None


def test_baseline_of_a_dummy_and_a_linear_model(spec, fraud_frame):
    baseline = measure_baseline(spec, fraud_frame, folds=3)
    assert baseline.metric == "roc_auc" and baseline.rows == len(fraud_frame) and baseline.folds == 3
    assert baseline.dummy_mean == pytest.approx(0.5) and baseline.linear == "logistic_regression"
    assert baseline.linear_mean > 0.6 and baseline.learns
    proposed = baseline.proposed_threshold()
    assert proposed.metric == "roc_auc" and proposed.max is None
    assert proposed.min == math.floor((baseline.dummy_mean + baseline.linear_mean) / 2 * 1000) / 1000
    assert "halfway" in proposed.note and f"{baseline.linear_mean:.3f}" in proposed.note
    assert measure_baseline(spec, fraud_frame, max_rows=1000).rows == 1000


def test_proposed_threshold_for_an_error_metric_and_for_no_signal():
    common = dict(rows=100, folds=3, dummy="dummy (mean)", dummy_std=0.1, linear="ridge", linear_std=0.1)
    rmse = Baseline(metric="rmse", dummy_mean=12.0, linear_mean=8.0001, **common).proposed_threshold()
    assert (rmse.min, rmse.max) == (None, 10.001)  # rounded towards the dummy
    flat = Baseline(metric="r2", dummy_mean=-0.002, linear_mean=-0.01, **common)
    assert not flat.learns and flat.proposed_threshold().min == -0.002 and "did no better" in flat.proposed_threshold().note
