"""The bento's fast path: ONNX Runtime answers when the start-up parity check passes, the
scikit-learn pipeline otherwise, with the same answers either way."""

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from export.trained import records
from modelcycle.export import PARITY_TOLERANCE
from modelcycle.serving.fastpath import FastPath, probe_records
from modelcycle.serving.requests import RecordChecker


def _answers_agree(fast, slow):
    (p1, q1), (p2, q2) = fast, slow
    if q2 is None:
        assert q1 is None
        np.testing.assert_allclose(p1, p2, rtol=1e-5)
        return
    np.testing.assert_allclose([list(q.values()) for q in q1], [list(q.values()) for q in q2], atol=PARITY_TOLERANCE)
    assert [list(q) for q in q1] == [list(q) for q in q2]
    assert np.mean(np.asarray(p1) == np.asarray(p2)) > 0.99


@pytest.mark.parametrize("name", ["fraud", "amount"])
def test_a_convertible_model_is_served_through_onnx_with_the_same_answers(project_dir, name, monkeypatch):
    model = project_dir.registry.load(name, 1)
    fast = FastPath.start(model, what=name)
    assert fast.path == "onnx" and fast.max_difference <= PARITY_TOLERANCE
    monkeypatch.setenv("MODELCYCLE_FAST_PATH", "0")
    slow = FastPath.start(model, what=name)
    assert slow.path == "sklearn" and "MODELCYCLE_FAST_PATH=0" in slow.reason

    checker = RecordChecker(model.schema)
    sent = records(project_dir.test_split(name).drop(columns=[model.target]).head(300))
    sent[0]["merchant_category"], sent[1]["country"] = None, "ZZ"  # a null and an unseen category: warnings, answered
    checker.check(sent)
    _answers_agree(fast.predict(sent, checker.frame), slow.predict(sent, checker.frame))
    _answers_agree(fast.predict(sent[:1], checker.frame), slow.predict(sent[:1], checker.frame))


def test_a_model_that_does_not_convert_is_served_by_scikit_learn(project_dir):
    model = project_dir.registry.load("fraud", 1)
    model.pipeline.steps[-1] = ("model", DummyClassifier(strategy="prior").fit(np.zeros((4, 1)), [0, 1, 0, 0]))
    fast = FastPath.start(model, what="dummy")
    assert fast.path == "sklearn" and "DummyClassifier" in fast.reason
    checker = RecordChecker(model.schema)
    sent = records(project_dir.test_split("fraud").drop(columns=["is_fraud"]).head(3))
    predictions, proba = fast.predict(sent, checker.frame)
    assert predictions == [0, 0, 0] and proba[0] == {"0": 0.75, "1": 0.25}


def test_probe_records_pass_the_bentos_checks_and_cover_every_category(project_dir):
    schema = project_dir.registry.load("fraud", 1).schema
    probes = probe_records(schema, n=512)
    checker = RecordChecker(schema)
    checker.check(probes.astype(object).where(probes.notna(), None).to_dict(orient="records"))
    for rule in schema.feature_rules():
        if rule.kind == "categorical":
            assert set(rule.categories or rule.observed_categories) <= set(probes[rule.name].dropna())
    assert probes.isna().any().any()
    assert isinstance(pd.Timestamp(probes["ts"].dropna().iloc[0]), pd.Timestamp)
