"""A regression model is monitored the same way: its predictions are the score whose drift is
tested, and its error metric is measured live against the goal's maximum."""

from __future__ import annotations

from fraud_example import regression_spec_dict
from modelcycle.lifecycle import evaluate_phase, train_phase
from modelcycle.monitoring.monitors import monitor_frame
from modelcycle.monitoring.profiles import ReferenceProfile
from modelcycle.spec import parse_spec
from modelcycle.validation import infer_schema


def test_regression_profile_drift_and_live_error(tmp_path, generate_fraud):
    spec = parse_spec(regression_spec_dict())
    frame = generate_fraud(5000)
    run = train_phase(spec, frame, 0, artifact_path=tmp_path / "candidate.joblib", n_jobs=1)
    selection = evaluate_phase(spec, frame, [run], schema=infer_schema(frame, spec),
                               artifact_path=tmp_path / "model.joblib")
    profile = ReferenceProfile.model_validate(selection.evaluation.profile)
    assert profile.score_kind == "prediction" and profile.classes is None
    assert "amount" not in [c.name for c in profile.columns]  # the target is not an input

    calm = monitor_frame(profile, generate_fraud(3000, seed=301), model=selection.model)
    (rmse,) = calm.performance.metrics
    assert rmse.metric == "rmse" and rmse.op == "<=" and rmse.low <= rmse.value <= rmse.high
    assert rmse.test_value is not None and abs(rmse.value - rmse.test_value) < 0.5 * rmse.test_value

    drifted = monitor_frame(profile, generate_fraud(3000, seed=302, drift=1.0), model=selection.model)
    # The test split's 1,000 predictions are a small sample: a p-value test, not a distance.
    assert drifted.drift.prediction is not None and drifted.drift.prediction.stattest == "ks"
    assert "channel" in drifted.drift.drifted_columns
    # Amounts grow with the drift knob, and so does the error of a model predicting them.
    assert drifted.performance.metrics[0].value > 2 * rmse.value
