"""The gateway over real HTTP on 127.0.0.1, in front of the model servers of
`gateway_upstreams` (real aiohttp servers around a fitted LogisticRegression, and fakes that
are slow, failing or down)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_upstreams import free_port, record, running_gateway, start_upstreams
from modelcycle.monitoring.predictions import read_prediction_log
from modelcycle.serving.gateway import GATEWAY, GatewayConfig, in_mirror_sample



@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    with start_upstreams() as urls:
        yield urls


async def _post(session: aiohttp.ClientSession, url: str, body: Any, request_id: str | None = None) -> tuple[int, bytes, Any]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    async with session.post(f"{url}/predict", json=body, headers=headers) as answer:
        return answer.status, await answer.read(), answer.headers


async def test_production_answers_pass_through_unchanged(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        for i in range(20):
            request_id = f"pass-{i}"
            body = {"records": [record(i), record(i + 100)]} if i % 2 else record(i)
            via_gateway = await _post(session, url, body, request_id)
            direct = await _post(session, upstreams["production"], body, request_id)
            assert via_gateway[0] == direct[0] == 200
            assert via_gateway[1] == direct[1]
            assert via_gateway[2]["X-Request-ID"] == request_id
            assert len(via_gateway[2]["X-Gateway-Request-ID"]) == 32

        status, payload, headers = await _post(session, url, record(1))
        generated = headers["X-Request-ID"]
        assert status == 200 and len(generated) == 32 and int(generated, 16) >= 0
        assert json.loads(payload)["request_id"] == generated
    log = read_prediction_log(tmp_path)
    assert set(log["client_request_id"].dropna()) == {f"pass-{i}" for i in range(20)}
    assert log["request_id"].nunique() == 21 and not set(log["request_id"]) & set(log["client_request_id"])


async def test_a_request_id_that_is_not_visible_ascii_is_refused(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        for bad in ("has space", "x" * 129, "caf\u00e9"):
            async with session.post(f"{url}/predict", json=record(1),
                                    headers={"X-Request-ID": bad.encode().decode("latin-1")}) as answer:
                assert answer.status == 400, bad
                error = await answer.json()
                assert error["field"] == "X-Request-ID"
                assert error["error"].startswith("expected 1 to 128 visible ASCII characters, found ")


async def test_client_errors_from_production_pass_through_unchanged(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"], log_dir=tmp_path)
    bad = {"records": [record(1), {"x1": 0.5, "x2": "high"}]}
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        via_gateway = await _post(session, url, bad, "bad-1")
        direct = await _post(session, upstreams["production"], bad, "bad-1")
    assert via_gateway[0] == direct[0] == 422
    assert via_gateway[1] == direct[1]
    assert json.loads(via_gateway[1])["field"] == "x2"
    logged = read_prediction_log(tmp_path).set_index("row")
    assert logged.loc[1, "production_status"] == 422
    assert "x2" in logged.loc[1, "production_error"]
    assert logged.loc[1, "record"] == {"x1": 0.5, "x2": "high"}


async def _timed_post(session: aiohttp.ClientSession, url: str, body: Any, request_id: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    status, payload, _ = await _post(session, url, body, request_id)
    elapsed = time.perf_counter() - started
    assert status == 200
    return elapsed, payload


@pytest.mark.parametrize("shadow", ["down", "slow"])
async def test_a_broken_shadow_leaves_production_answers_and_latency_unchanged(
    upstreams: dict[str, str], tmp_path: Path, shadow: str
) -> None:
    """Two gateways in front of the same production, one mirroring to a broken shadow, take
    turns on the same requests, so that load from elsewhere on the machine hits both alike."""
    count = 300
    alone = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path / "alone")
    mirrored = GatewayConfig(
        production_url=upstreams["production"], shadow_url=upstreams[shadow], log_dir=tmp_path / "mirrored",
        mirror_percent=100, shadow_timeout_s=0.2, queue_size=16, mirror_workers=4, drain_timeout_s=0.1,
    )
    latencies: dict[str, list[float]] = {"alone": [], "mirrored": []}
    async with (
        aiohttp.ClientSession() as session,
        running_gateway(alone) as (alone_url, _),
        running_gateway(mirrored) as (mirrored_url, _),
    ):
        urls = {"alone": alone_url, "mirrored": mirrored_url}
        for n in range(-20, count):  # the first 20 warm the connections up
            order = ("alone", "mirrored") if n % 2 else ("mirrored", "alone")
            answers = {}
            for name in order:
                elapsed, answers[name] = await _timed_post(session, urls[name], record(abs(n)), f"same-{n}")
                if n >= 0:
                    latencies[name].append(elapsed)
            assert answers["mirrored"] == answers["alone"]

    p50_alone, p50_mirrored = statistics.median(latencies["alone"]), statistics.median(latencies["mirrored"])
    assert p50_mirrored <= p50_alone * 1.25 + 0.0005, (
        f"p50 {p50_mirrored * 1000:.2f} ms with a {shadow} shadow vs {p50_alone * 1000:.2f} ms without"
    )
    log = read_prediction_log(tmp_path / "mirrored")
    assert log["mirrored"].all() and not (log["shadow_status"] == 200).any()
    if shadow == "down":
        assert log["shadow_error"].str.contains("shadow is unreachable").sum() > count / 2
    else:
        assert (log["shadow_reason"] == "dropped: mirror queue full").sum() > count / 2


async def test_a_failing_shadow_is_counted_and_rejected(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["failing"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        for n in range(10):
            status, payload, _ = await _post(session, url, record(n), f"failing-{n}")
            assert status == 200 and json.loads(payload)["model_version"] == "1"
        await app[GATEWAY].queue.join()
        async with session.get(f"{url}/metrics") as answer:
            metrics = _samples(await answer.text())
        async with session.get(f"{url}/shadow/comparison") as answer:
            comparison = await answer.json()
    assert metrics[("modelcycle_gateway_shadow_errors_total", (("kind", "status"),))] == 10
    assert metrics[("modelcycle_gateway_requests_total", (("status", "500"), ("upstream", "shadow")))] == 10
    assert metrics[("modelcycle_shadow_verdict", (("verdict", "reject"),))] == 1
    assert comparison["verdict"] == "reject"
    assert comparison["shadow_error_rate"]["value"] == 1.0
    assert any("error rate" in reason for reason in comparison["reasons"])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_mirror_sample_is_chosen_by_the_gateways_own_id(upstreams: dict[str, str], tmp_path: Path) -> None:
    ids = [f"sample-{uuid.uuid4().hex}" for _ in range(60)]
    assert 0.27 < sum(in_mirror_sample(str(n), percent=30) for n in range(20_000)) / 20_000 < 0.33
    assert all(in_mirror_sample(str(n), percent=60) for n in range(2000) if in_mirror_sample(str(n), percent=30))

    config = GatewayConfig(
        production_url=upstreams["production"], shadow_url=upstreams["shadow"], mirror_percent=30, log_dir=tmp_path,
    )
    async with aiohttp.ClientSession() as session:
        async with running_gateway(config) as (url, _):
            for n, request_id in enumerate(ids):
                assert (await _post(session, url, record(n), request_id))[0] == 200
        async with session.get(f"{upstreams['shadow']}/seen") as answer:
            reached_shadow = [i for i in await answer.json() if i in set(ids)]
    log = read_prediction_log(tmp_path)
    in_sample = {i for i in log["request_id"] if in_mirror_sample(i, percent=30)}
    assert 0 < len(in_sample) < len(ids), "the sample is the gateway's ids' hash, whatever the client's ids"
    assert set(log.loc[log["mirrored"], "request_id"]) == in_sample
    assert set(log.loc[log["shadow_status"] == 200, "request_id"]) == in_sample
    mirrored_client_ids = log.loc[log["mirrored"], "client_request_id"]
    assert Counter(reached_shadow) == {request_id: 1 for request_id in mirrored_client_ids}


async def test_after_sigterm_every_mirrored_request_is_logged_with_both_predictions(
    upstreams: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "modelcycle.serving.gateway",
         "--production-url", upstreams["production"], "--shadow-url", upstreams["shadow_delayed"],
         "--mirror-percent", "60", "--mirror-workers", "2", "--log-dir", str(tmp_path),
         "--port", str(port), "--flush-interval", "60"],
        stderr=subprocess.PIPE, text=True,
    )
    ids = [f"term-{n}" for n in range(40)]
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{url}/healthz") as answer:
                        if answer.status == 200:
                            break
                assert process.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                await asyncio.sleep(0.05)
            for n, request_id in enumerate(ids):
                assert (await _post(session, url, record(n), request_id))[0] == 200
            async with session.get(f"{upstreams['shadow_delayed']}/seen") as answer:
                answered_before = len(set(await answer.json()) & set(ids))
        assert read_prediction_log(tmp_path).empty, "nothing should be flushed before the 60 s interval"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr

    log = read_prediction_log(tmp_path)
    in_sample = {i for i in log["request_id"] if in_mirror_sample(i, percent=60)}
    assert answered_before < len(in_sample), "the mirrors should still be in flight at SIGTERM"
    assert sorted(log["client_request_id"]) == sorted(ids)
    assert (log["production_version"] == "1").all() and log["production_prediction"].notna().all()
    mirrored = log[log["mirrored"]]
    assert set(mirrored["request_id"]) == in_sample, "another process must sample the same ids"
    assert (mirrored["shadow_status"] == 200).all() and (mirrored["shadow_version"] == "2").all()
    assert mirrored["shadow_prediction"].notna().all()
    assert (log.loc[~log["mirrored"], "shadow_reason"] == "not sampled").all()


async def test_feedback_joins_the_label_to_the_request(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        await _post(session, url, record(1), "fb-single")
        await _post(session, url, {"records": [record(2), record(3)]}, "fb-batch")
        for feedback in (
            {"request_id": "fb-single", "label": 1},
            {"request_id": "fb-batch", "label": 0, "row": 1},
        ):
            async with session.post(f"{url}/feedback", json=feedback) as answer:
                assert answer.status == 202
        for bad, field in (
            ({"request_id": "fb-single"}, "label"),
            ({"request_id": 7, "label": 1}, "request_id"),
            ({"request_id": "fb-batch", "label": 1, "row": -1}, "row"),
        ):
            async with session.post(f"{url}/feedback", json=bad) as answer:
                assert answer.status == 400
                assert (await answer.json())["field"] == field
    log = read_prediction_log(tmp_path).set_index(["client_request_id", "row"])
    assert log.loc[("fb-single", 0), "label"] == 1
    assert log.loc[("fb-batch", 1), "label"] == 0
    assert log.loc[("fb-batch", 0), "label"] is None


async def test_metrics_and_comparison_expose_what_happened(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        for n in range(10):
            await _post(session, url, record(n), f"metrics-{n}")
        await _post(session, url, {"x1": 1.0}, "metrics-bad")
        await app[GATEWAY].queue.join()
        async with session.get(f"{url}/metrics") as answer:
            assert answer.status == 200
            text = await answer.text()
        async with session.get(f"{url}/shadow/comparison") as answer:
            comparison = await answer.json()
        async with session.get(f"{url}/readyz") as answer:
            assert answer.status == 200

    samples = _samples(text)
    assert samples[("modelcycle_gateway_requests_total", (("status", "200"), ("upstream", "production")))] == 10
    assert samples[("modelcycle_gateway_requests_total", (("status", "422"), ("upstream", "production")))] == 1
    assert samples[("modelcycle_gateway_requests_total", (("status", "200"), ("upstream", "shadow")))] == 10
    assert samples[("modelcycle_gateway_mirrored_total", ())] == 11
    assert samples[("modelcycle_gateway_upstream_latency_seconds_count", (("upstream", "production"),))] == 11
    assert samples[("modelcycle_shadow_compared_requests", ())] == 10
    assert samples[("modelcycle_shadow_verdict", (("verdict", "hold"),))] == 1
    assert samples[("modelcycle_shadow_verdict", (("verdict", "promote"),))] == 0
    assert comparison["verdict"] == "hold"
    assert comparison["compared_requests"] == 10
    assert comparison["shadow_versions"] == ["2"]


async def test_an_unreachable_production_is_a_502_and_not_ready(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["down"], log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        status, payload, headers = await _post(session, url, record(1), "no-production")
        async with session.get(f"{url}/readyz") as answer:
            ready = answer.status
        async with session.get(f"{url}/healthz") as answer:
            live = answer.status
    assert status == 502 and headers["X-Request-ID"] == "no-production"
    assert json.loads(payload)["request_id"] == "no-production"
    assert (ready, live) == (503, 200)
    assert read_prediction_log(tmp_path)["production_error"].str.contains("unreachable").all()
