"""Metrics, the cost-based threshold, gates and the report."""

import numpy as np
import pytest
from sklearn import metrics as skm

from modelcycle.evaluation import choose_threshold, evaluate_model, gates, leaderboard
from modelcycle.report import render_report
from modelcycle.training import split_data, train_candidate


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


def test_report_has_verdict_plots_and_tables(trained):
    spec, splits, model, run = trained
    ev = evaluate_model(model, spec, validation=splits.validation, test=splits.test,
                        out_of_time=splits.out_of_time, artifact_bytes=run.size_bytes)
    board = leaderboard(spec, {"0-logistic_regression": model}, splits.validation)
    page = render_report(spec, ev, leaderboard=board, data_version="abc123def456", splits=splits.sizes())
    assert page.count("data:image/png;base64,") >= 6
    assert "Gates" in page and "test.roc_auc" in page and "logistic_regression" in page
    assert ("registered as <b>rejected</b>" in page) == (not ev.passed)
