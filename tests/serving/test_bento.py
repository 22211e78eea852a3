"""The bento over real HTTP: `bentoml serve` on a packaged model version, on 127.0.0.1.

Answers follow the serving contract and equal the model's own in-process predictions; bad
input gets a 4xx that names the field, never a 500; every response carries the request id
and the model version; adaptive batching keeps each request's answers its own.
"""

from __future__ import annotations

import asyncio
import json
import math
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def _close(answer: list[dict[str, float]], want: list[dict[str, float]]) -> bool:
    return len(answer) == len(want) and all(
        a.keys() == w.keys() and all(abs(a[k] - w[k]) < 1e-9 for k in a) for a, w in zip(answer, want))


def test_predict_many_records_matches_the_model(client, served, in_process):
    records = served.records[:25]
    response = client.post("/predict", json={"records": records}, headers={"X-Request-ID": "req-many-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "model_version", "request_id", "predictions", "probabilities", "warnings"}
    assert (body["model"], body["model_version"], body["request_id"]) == ("fraud", "1", "req-many-1")
    assert response.headers["x-request-id"] == "req-many-1"
    assert response.headers["x-model-version"] == "1"
    predictions, probabilities = in_process(1, records)
    assert body["predictions"] == predictions
    assert _close(body["probabilities"], probabilities)


def test_one_bare_record_and_a_generated_request_id(client, served, in_process):
    record = served.records[0]
    response = client.post("/predict", json=record)
    assert response.status_code == 200, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["predictions"] == in_process(1, [record])[0]
    assert math.isclose(sum(body["probabilities"][0].values()), 1.0)


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


BAD_RECORDS = {
    "missing field": (lambda r: _without(r, "amount"), "amount", "required field is missing"),
    "not a number": (lambda r: {**r, "customer_age": "old"}, "customer_age", "expected a number"),
    "a boolean is not a number": (lambda r: {**r, "tx_last_24h": True}, "tx_last_24h", "expected a number"),
    "infinite": (lambda r: {**r, "distance_from_home_km": float("inf")}, "distance_from_home_km", "a finite number"),
    "below min": (lambda r: {**r, "amount": -5}, "amount", "expected a number >= 0"),
    "above max": (lambda r: {**r, "customer_age": 150}, "customer_age", "<= 120"),
    "closed category": (lambda r: {**r, "channel": "fax"}, "channel", "expected one of 'pos', 'online', 'atm'"),
    "null where not nullable": (lambda r: {**r, "channel": None}, "channel", "may not be null"),
    "not a date": (lambda r: {**r, "ts": "yesterday-ish"}, "ts", "expected a date and time"),
    "a list for a category": (lambda r: {**r, "country": ["DE"]}, "country", "expected a category"),
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_a_bad_field_gets_422_naming_it(client, served, case):
    change, field, reason = BAD_RECORDS[case]
    for route in ("/predict", "/predict_batch"):
        records = [served.records[0], change(dict(served.records[1]))]
        response = client.post(route, content=json.dumps({"records": records}),  # json.dumps writes Infinity
                               headers={"X-Request-ID": f"bad-{field}", "content-type": "application/json"})
        assert response.status_code == 422, (route, response.text)
        body = response.json()
        assert body == {"error": body["error"], "field": field, "request_id": f"bad-{field}"}
        assert body["error"].startswith(f"records[1].{field}: ") and reason in body["error"], body["error"]
        assert response.headers["x-request-id"] == f"bad-{field}"


@pytest.mark.parametrize(("payload", "status", "field", "reason"), [
    (b'{"records": [{"amount": 1,', 400, None, "not valid JSON"),
    (b'[1, 2]', 400, None, "expected a JSON object"),
    (b'{"records": {"amount": 1}}', 400, "records", "non-empty list"),
    (b'{"records": []}', 400, "records", "non-empty list"),
    (b'{"records": [7]}', 400, "records", "records[0]: expected an object, found a number"),
    (b'{"records": [' + b",".join([b"{}"] * 10_001) + b"]}", 413, "records", "at most 10000 records"),
], ids=["malformed", "array", "records-not-a-list", "no-records", "record-not-an-object", "too-many"])
def test_a_bad_body_gets_4xx(client, payload, status, field, reason):
    response = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and reason in body["error"], body
    assert body["request_id"] == response.headers["x-request-id"]


def test_the_batch_route_takes_the_list_form_only(client, served):
    response = client.post("/predict_batch", json=served.records[0])
    assert response.status_code == 400 and response.json()["field"] == "records", response.text


async def test_adaptive_batching_keeps_each_answer_with_its_request(bento_server, served, in_process):
    """Concurrent requests are merged into model calls; each gets exactly its own rows back,
    and a bad request among them fails alone."""
    sizes = [1, 3, 1, 2, 5, 1, 1, 4] * 3
    starts = [sum(sizes[:i]) % (len(served.records) - 5) for i in range(len(sizes))]
    async with httpx.AsyncClient(base_url=bento_server.url, timeout=30) as http:
        before = _batch_histogram(await http.get("/metrics"))

        async def call(i: int) -> httpx.Response:
            if i == 5:
                return await http.post("/predict_batch", json={"records": [{**served.records[0], "amount": "?"}]})
            records = served.records[starts[i]:starts[i] + sizes[i]]
            return await http.post("/predict_batch", json={"records": records}, headers={"X-Request-ID": f"b{i}"})

        responses = await asyncio.gather(*(call(i) for i in range(len(sizes))))
        after = _batch_histogram(await http.get("/metrics"))
    for i, response in enumerate(responses):
        if i == 5:
            assert response.status_code == 422 and response.json()["field"] == "amount"
            continue
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"b{i}" and response.headers["x-model-version"] == "1"
        predictions, probabilities = in_process(1, served.records[starts[i]:starts[i] + sizes[i]])
        rows = response.json()
        assert [row["prediction"] for row in rows] == predictions
        assert _close([row["probabilities"] for row in rows], probabilities)
    # The histogram observes requests per model call: every good request went through the
    # batcher, the bad one never reached it, and some calls served more than one request.
    batched, calls = after["sum"] - before["sum"], after["count"] - before["count"]
    assert batched == len(sizes) - 1
    assert 1 <= calls < batched


def _batch_histogram(response: httpx.Response) -> dict[str, float]:
    found = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(response.text):
        if family.name == "bentoml_service_adaptive_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    found["sum"] += sample.value
                elif sample.name.endswith("_count"):
                    found["count"] += sample.value
    return found


def test_health_readiness_and_metrics(client, served, bento):
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200, path
    client.post("/predict", json=served.records[0])
    client.post("/predict", json={**served.records[0], "channel": "fax"})
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = {(s.labels["endpoint"], s.labels["http_response_code"]): s.value
                for s in families["bentoml_service_request"].samples if s.name.endswith("_total")}
    assert requests[("/predict", "200")] >= 1 and requests[("/predict", "422")] >= 1
    latency = [s for s in families["bentoml_service_request_duration_seconds"].samples
               if s.name.endswith("_count") and s.labels["endpoint"] == "/predict"]
    assert sum(s.value for s in latency) >= 2
    (info,) = families["modelcycle_model_info"].samples
    version = served.registry.get("fraud", 1)
    assert info.labels == {"model": "fraud", "version": "1", "sha256": version.sha256} and info.value == 1
