"""The serving contract is documented where a client looks: the gateway serves it at ``/docs``
(a page) and ``/docs.json``, and its examples are what a real bento answers."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from modelcycle.serving.contract import EXAMPLE_WARNINGS, ROUTES, WARNING_REASONS
from modelcycle.serving.gateway import GatewayConfig, create_app

DOCUMENTED = {"/predict", "/predict_batch", "/feedback", "/metrics", "/shadow/comparison"}


async def test_the_gateway_serves_the_contract(tmp_path):
    runner = web.AppRunner(create_app(GatewayConfig(production_url="http://127.0.0.1:9", log_dir=tmp_path)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/docs") as answer:
                assert answer.status == 200 and answer.content_type == "text/html"
                page = await answer.text()
            async with session.get(f"{url}/docs.json") as answer:
                assert answer.status == 200 and answer.content_type == "application/json"
                document = await answer.json()
    finally:
        await runner.cleanup()
    for path in DOCUMENTED:
        assert f"{path}</h2>" in page, path
    assert all(f"<code>{reason}</code>" in page for reason in WARNING_REASONS)
    assert DOCUMENTED <= {route["path"] for route in document["routes"]}
    assert set(document["warning_reasons"]) == set(WARNING_REASONS)


def _example(path: str):
    (route,) = [route for route in ROUTES if route["path"] == path]
    return route


def test_the_examples_are_what_a_bento_answers(client):
    predict = _example("/predict")
    answer = client.post("/predict", json=predict["request"])
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == set(predict["answer"])
    assert answer.json()["warnings"] == predict["answer"]["warnings"] == [EXAMPLE_WARNINGS]
    assert set(answer.json()["probabilities"][0]) == set(predict["answer"]["probabilities"][0])

    batch = _example("/predict_batch")
    answer = client.post("/predict_batch", json=batch["request"])
    assert answer.status_code == 200, answer.text
    (row,) = answer.json()
    assert set(row) == set(batch["answer"][0]) and row["warnings"] == EXAMPLE_WARNINGS
