"""Splits keep the test and out-of-time rows apart; every candidate is a tracked run."""

import pandas as pd
import pytest

from modelcycle import artifacts
from modelcycle.spec import parse_spec
from modelcycle.training import distributions, refit, split_data, train_candidate
from fraud_example import regression_spec_dict, small_spec_dict


def test_splits_are_disjoint_and_out_of_time_is_latest(fraud_frame, spec):
    s = split_data(fraud_frame, spec)
    ids = [set(part.transaction_id) for part in (s.train, s.validation, s.test, s.out_of_time)]
    assert sum(map(len, ids)) == len(fraud_frame) == len(set().union(*ids))
    assert s.out_of_time.ts.min() >= max(s.train.ts.max(), s.test.ts.max(), s.validation.ts.max())
    assert abs(len(s.out_of_time) / len(fraud_frame) - 0.15) < 0.01
    # Stratified: the rare class is in every split.
    assert all(part.is_fraud.sum() > 0 for part in (s.train, s.validation, s.test))
    again = split_data(fraud_frame.sample(frac=1, random_state=1).sort_index(), spec)
    assert set(again.test.transaction_id) == ids[2]


@pytest.mark.parametrize("algorithm", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_candidate_search_is_tracked(tmp_path, fraud_frame, spec, algorithm):
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == algorithm]
    splits = split_data(fraud_frame, spec)
    model, run = train_candidate(spec, candidate, splits.train, artifact_path=str(tmp_path / "m.joblib"))
    assert run.algorithm == algorithm
    assert len(run.cv_results) == spec.training.search_iterations
    assert set(candidate.search_space) <= set(run.params)
    assert 0.5 < run.cv_mean <= 1.0 and run.cv_std >= 0 and run.cv_folds == spec.training.cv_folds
    assert run.train_rows == len(splits.train) and run.fit_seconds > 0
    loaded = artifacts.load(run.artifact, sha256=run.sha256)
    pd.testing.assert_series_equal(
        pd.Series(loaded.predict_proba(splits.test)[:, 1]), pd.Series(model.predict_proba(splits.test)[:, 1])
    )
    assert set(model.predict(splits.test.head(20))) <= {0, 1}


def test_refit_on_the_development_rows_uses_the_chosen_parameters(tmp_path, fraud_frame, spec):
    splits = split_data(fraud_frame, spec)
    development = splits.development
    assert len(development) == len(splits.train) + len(splits.validation)
    assert not set(development.transaction_id) & (set(splits.test.transaction_id) | set(splits.out_of_time.transaction_id))
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == "random_forest"]
    trained, run = train_candidate(spec, candidate, splits.train, artifact_path=str(tmp_path / "m.joblib"))
    model = refit(spec, run, development)
    assert (model.algorithm, model.params, model.classes) == (trained.algorithm, trained.params, trained.classes)
    forest = model.pipeline.named_steps["model"]
    assert {k: forest.get_params()[k] for k in run.params} == run.params
    # Each tree's root holds its bootstrap sample, as many draws as there were rows to fit on.
    assert forest.estimators_[0].tree_.weighted_n_node_samples[0] == len(development)
    assert trained.pipeline.named_steps["model"].estimators_[0].tree_.weighted_n_node_samples[0] == len(splits.train)


def test_search_space_forms():
    data = small_spec_dict()
    data["training"]["candidates"][0]["search_space"] = {"C": {"loguniform": [0.1, 1]}, "penalty": ["l2"], "max_iter": {"randint": [100, 200]}}
    spec = parse_spec(data)
    space = distributions(spec.training.candidates[0])
    assert 0.1 <= space["model__C"].rvs(random_state=0) <= 1
    assert space["model__penalty"] == ["l2"]
    data["training"]["candidates"][0]["search_space"] = {"C": {"normal": [0, 1]}}
    with pytest.raises(ValueError, match="search_space.C: expected uniform, loguniform or randint"):
        distributions(parse_spec(data).training.candidates[0])


def test_regression_task(tmp_path, fraud_frame):
    spec = parse_spec(regression_spec_dict())
    splits = split_data(fraud_frame, spec)
    model, run = train_candidate(spec, spec.training.candidates[0], splits.train, artifact_path=str(tmp_path / "r.joblib"))
    assert model.predict_proba(splits.test) is None
    assert run.cv_mean > 0  # rmse, sign restored
