"""A record that is unusual but not wrong is answered, and its answer says what was unusual.

A null in a nullable field, a category training never saw (in an open category list) and a
number outside the range training saw (within the declared min and max) are warnings, not
errors: the bento answers 200 with one ``{"field", "reason"}`` per unusual field of each
record, on both routes, counts them on ``/metrics`` by field and reason (label sets from the
schema only), and the gateway hands them to the client unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.serving.gateway import GatewayConfig, create_app

UNUSUAL = {"amount": 1e6, "merchant_category": None, "country": "ZZ"}
"""An amount far above any in training (the spec sets no maximum), no merchant category, a new country."""
UNUSUAL_WARNINGS = [
    {"field": "amount", "reason": "outside_observed_range"},
    {"field": "merchant_category", "reason": "null"},
    {"field": "country", "reason": "unseen_category"},
]
"""In the order of the schema's feature columns."""


@pytest.fixture(scope="module")
def usual(served) -> dict:
    """A held-out record with nothing unusual about it: no null, every number in the range
    training saw, every category one training saw."""
    rules = served.models[1].schema.feature_rules()

    def usual(record: dict) -> bool:
        for rule in rules:
            value = record[rule.name]
            if value is None:
                return False
            if rule.kind == "numeric" and not rule.observed_min <= value <= rule.observed_max:
                return False
            if rule.kind == "categorical" and value not in (rule.categories or rule.observed_categories):
                return False
        return True

    return next(record for record in served.records if usual(record))


def test_predict_answers_each_record_with_its_warnings(client, usual, served):
    response = client.post("/predict", json={"records": [usual, {**usual, **UNUSUAL}, {**usual, "country": "ZZ"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 3
    assert body["warnings"] == [[], UNUSUAL_WARNINGS, [{"field": "country", "reason": "unseen_category"}]]
    (age,) = [rule for rule in served.models[1].schema.feature_rules() if rule.name == "customer_age"]
    assert age.observed_max < age.max
    one = client.post("/predict", json={**usual, "customer_age": str((age.observed_max + age.max) / 2)})
    assert one.status_code == 200, one.text
    assert one.json()["warnings"] == [[{"field": "customer_age", "reason": "outside_observed_range"}]]


def test_predict_batch_answers_each_record_with_its_warnings(client, usual):
    response = client.post("/predict_batch", json={"records": [{**usual, **UNUSUAL}, usual]})
    assert response.status_code == 200, response.text
    assert [row["warnings"] for row in response.json()] == [UNUSUAL_WARNINGS, []]


def test_an_error_is_still_an_error(client, usual):
    """A warning never softens an error: the record is refused, naming the field."""
    response = client.post("/predict", json={**usual, **UNUSUAL, "channel": None})
    assert response.status_code == 422 and response.json()["field"] == "channel", response.text


def _warning_counts(client: httpx.Client) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "modelcycle_request_warnings":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["field"], sample.labels["reason"]] = sample.value
    return counts


def test_metrics_count_warnings_by_field_and_reason(client, usual, served):
    before = _warning_counts(client)
    assert client.post("/predict", json={"records": [{**usual, **UNUSUAL}, {**usual, **UNUSUAL}]}).status_code == 200
    assert client.post("/predict_batch", json={"records": [{**usual, **UNUSUAL}]}).status_code == 200
    refused = client.post("/predict", json={"records": [{**usual, **UNUSUAL}, {**usual, "amount": -1}]})
    assert refused.status_code == 422  # a refused request counts nothing
    unknown = client.post("/predict", json={**usual, "extra_field": None})  # not in the schema: no label
    assert unknown.status_code == 200 and unknown.json()["warnings"] == [[]]
    after = _warning_counts(client)

    schema = served.models[1].schema
    possible = {(rule.name, "null") for rule in schema.feature_rules() if rule.nullable}
    possible |= {(rule.name, "outside_observed_range") for rule in schema.feature_rules() if rule.kind == "numeric"}
    possible |= {(rule.name, "unseen_category") for rule in schema.feature_rules()
                 if rule.kind == "categorical" and rule.categories is None}
    assert set(after) == possible  # every label set is there from the start, and no other
    expected = {(w["field"], w["reason"]) for w in UNUSUAL_WARNINGS}
    counted = {key: after[key] - before.get(key, 0) for key in after}
    assert counted == {key: 3 if key in expected else 0 for key in after}


@contextlib.asynccontextmanager
async def _gateway(production_url: str, log_dir) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(GatewayConfig(production_url=production_url, log_dir=log_dir)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_the_gateway_passes_warnings_through_unchanged(bento_server, usual, tmp_path):
    body = {"records": [usual, {**usual, **UNUSUAL}]}
    headers = {"X-Request-ID": "warned-1"}
    async with _gateway(bento_server.url, tmp_path) as url, aiohttp.ClientSession() as session:
        async with session.post(f"{url}/predict", json=body, headers=headers) as answer:
            assert answer.status == 200
            via_gateway = await answer.read()
        async with session.post(f"{bento_server.url}/predict", json=body, headers=headers) as answer:
            direct = await answer.read()
    assert via_gateway == direct
    assert httpx.Response(200, content=via_gateway).json()["warnings"] == [[], UNUSUAL_WARNINGS]
