"""The gateway exports drift and live metrics that a real Prometheus scrapes.

A real `prometheus` (Debian's package; `tools/debian-packages.sh` installs it, and `make test`
runs that script) scrapes the gateway on 127.0.0.1 every two seconds; the test reads the
figures back through Prometheus's HTTP API. Production is an aiohttp model server in this
process that answers with the monitored fraud model, following the serving contract. The
traffic is the fraud example with its drift knob turned up, with every label fed back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pandas as pd
import pytest
from aiohttp import web

from modelcycle.monitoring.predictions import PredictionLogSettings
from modelcycle.serving.gateway import GatewayConfig, create_app
from tests.monitoring.conftest import answer

REQUESTS = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus binary: `make test` installs it (tools/debian-packages.sh, as root on "
                    "Debian/Ubuntu); elsewhere install Prometheus", pytrace=False)
    return binary


@pytest.fixture
def prometheus(prometheus_binary, tmp_path) -> Iterator[tuple[str, int]]:
    """`(url, gateway_port)`: a Prometheus scraping whatever will listen on gateway_port."""
    gateway_port, port = _free_port(), _free_port()
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    process = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}", gateway_port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
async def production(monitored) -> AsyncIterator[str]:
    async def predict(request: web.Request) -> web.Response:
        document = json.loads(await request.read())
        records = document.get("records", [document])
        body = answer(monitored.model, records)
        return web.json_response({"model": "fraud", "model_version": "1", "request_id": request.headers.get(
            "X-Request-ID"), "predictions": body["predictions"], "probabilities": body["probabilities"]})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _query(session: aiohttp.ClientSession, url: str, query: str) -> list[dict]:
    async with session.get(f"{url}/api/v1/query", params={"query": query}) as response:
        document = await response.json()
    assert document["status"] == "success", document
    return document["data"]["result"]


async def _wait_for(session: aiohttp.ClientSession, url: str, query: str, *, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await _query(session, url, query):
            return result
        await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus had no {query} after {timeout_s} s")


async def test_prometheus_scrapes_drift_and_live_metrics_from_the_gateway(
    monitored, production, prometheus, tmp_path, generate_fraud
):
    prometheus_url, gateway_port = prometheus
    profile_path = tmp_path / "profile.json"
    profile = monitored.registry.profile("fraud", 1)
    # The knob moves three of the eight input columns: the data set drifts at a share of 0.3.
    profile["monitoring"]["drift_share"] = 0.3
    profile_path.write_text(json.dumps(profile))
    config = GatewayConfig(production_url=production, log_dir=tmp_path / "log", reference_profile=profile_path,
                           monitoring_ttl_s=0, log=PredictionLogSettings(flush_interval_s=0.2))
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", gateway_port).start()
    traffic = generate_fraud(REQUESTS, seed=201, drift=1.0)
    records = json.loads(traffic.drop(columns=["is_fraud"]).to_json(orient="records", date_format="iso"))
    request_ids = [f"req-{n:05d}" for n in range(REQUESTS)]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway_port}") as gateway:
            for request_id, record, label in zip(request_ids, records, traffic["is_fraud"], strict=True):
                async with gateway.post("/predict", json=record, headers={"X-Request-ID": request_id}) as response:
                    assert response.status == 200
                async with gateway.post("/feedback", json={"request_id": request_id, "label": int(label)}) as response:
                    assert response.status == 202
            async with gateway.get("/metrics") as response:  # the first check starts the worker process
                assert response.status == 200
        async with aiohttp.ClientSession() as session:
            # Prometheus scraped during the traffic too: wait for a scrape that saw all of it.
            await _wait_for(session, prometheus_url, f"modelcycle_live_labelled_rows == {REQUESTS}")
            dataset = await _query(session, prometheus_url, "modelcycle_dataset_drift")
            assert dataset[0]["value"][1] == "1"
            drifted = {r["metric"]["column"]: r["value"][1]
                       for r in await _query(session, prometheus_url, "modelcycle_drift_detected")}
            assert drifted["channel"] == "1" and drifted["merchant_category"] == "1" and drifted["country"] == "0"
            scores = await _query(session, prometheus_url, 'modelcycle_drift_score{column="amount"}')
            assert scores[0]["metric"]["stattest"] == "ks" and float(scores[0]["value"][1]) < 1e-6
            assert (await _query(session, prometheus_url, "modelcycle_prediction_drift_detected"))[0]["value"][1] == "1"
            live = await _query(session, prometheus_url, 'modelcycle_live_metric{metric="roc_auc"}')
            assert 0.5 < float(live[0]["value"][1]) < 1.0
            count = await _query(session, prometheus_url, "modelcycle_prediction_score_count")
            assert count[0]["value"][1] == str(REQUESTS)
            everything = await _query(session, prometheus_url, '{__name__=~"modelcycle_.*"}')
            label_values = {value for series in everything for value in series["metric"].values()}
            assert not label_values & set(request_ids)
            assert not any("request_id" in series["metric"] for series in everything)
    finally:
        await runner.cleanup()
    assert len(pd.read_json(next((tmp_path / "log").glob("*.jsonl")), lines=True)) == 2 * REQUESTS
