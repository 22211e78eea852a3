"""A regression model's bento over real HTTP: numbers for predictions, null probabilities.

A ridge regression of the transaction amount, trained on the example's data, registered,
packaged and served by `bentoml serve` on 127.0.0.1; its answers equal its in-process
predictions on both routes.
"""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
from fraud_example import regression_spec_dict

from modelcycle.registry import Registry
from modelcycle.serving.local import serve_bento, stop_process, wait_ready
from modelcycle.serving.packaging import package
from modelcycle.spec import parse_spec
from modelcycle.training import split_data, train_candidate
from modelcycle.validation import infer_schema

PASSED = [{"name": "test.rmse", "metric": "rmse", "op": "<=", "threshold": 1000, "value": 10, "passed": True}]


@pytest.fixture(scope="module")
def regression_server(tmp_path_factory, fraud_frame):
    workdir = tmp_path_factory.mktemp("regression-serving")
    data = regression_spec_dict()
    data["training"]["candidates"][0]["search_space"] = {}
    spec = parse_spec(data)
    splits = split_data(fraud_frame, spec)
    model, _ = train_candidate(spec, spec.training.candidates[0], splits.train, artifact_path=str(workdir / "r.joblib"))
    model.schema = infer_schema(splits.train, spec)
    registry = Registry(workdir / "registry")
    registry.register("amount", model, lineage={"data_version": "test"}, params={"algorithm": "ridge"},
                      metrics={}, gates=PASSED)
    server = serve_bento(package(registry, "amount@1", workdir=workdir), role="regression", workdir=workdir)
    test = splits.test.drop(columns=[spec.data.target]).head(6)
    records = json.loads(test.to_json(orient="records", date_format="iso"))
    try:
        wait_ready(server)
        yield server.url, model, records
    finally:
        stop_process(server)


def test_a_regression_bento_answers_numbers_and_no_probabilities(regression_server):
    url, model, records = regression_server
    want = [float(v) for v in model.predict(pd.DataFrame(records))]
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post("/predict", json={"records": records}, headers={"X-Request-ID": "reg-1"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["model_version"], body["request_id"]) == ("amount", "1", "reg-1")
        assert body["probabilities"] is None
        assert body["predictions"] == pytest.approx(want, rel=1e-9)
        assert len(set(body["predictions"])) > 1, "a constant model would pass anything"

        batched = http.post("/predict_batch", json={"records": records[:2]})
        assert batched.status_code == 200, batched.text
        assert [a["probabilities"] for a in batched.json()] == [None, None]
        assert [a["prediction"] for a in batched.json()] == pytest.approx(want[:2], rel=1e-9)

        bad = http.post("/predict", json={**records[0], "customer_age": "old"})
        assert bad.status_code == 422 and bad.json()["field"] == "customer_age"
