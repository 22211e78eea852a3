"""What a client of the gateway can and cannot steer, over real HTTP on 127.0.0.1.

A client chooses its own ``X-Request-ID``, so nothing that decides the shadow's verdict may
key on it: the gateway mints its own id for the log and the mirror sample. Labels feed the
verdict too, so ``/feedback`` takes a token when one is configured. And a 500 says that
something failed, never the exception's text. The upstreams are the model servers of
``test_gateway.py``, run as that file's subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway_upstreams import record, running_gateway, start_upstreams
from modelcycle.monitoring.predictions import read_prediction_log
from modelcycle.serving.gateway import GATEWAY, GatewayConfig, in_mirror_sample

TOKEN = "s3cret-feedback-token"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    with start_upstreams() as urls:
        yield urls


async def _predict(session: aiohttp.ClientSession, url: str, body: Any, request_id: str) -> tuple[int, Any]:
    async with session.post(f"{url}/predict", json=body, headers={"X-Request-ID": request_id}) as answer:
        await answer.read()
        return answer.status, answer.headers


async def test_a_reused_client_id_overwrites_nothing_and_feedback_by_the_gateways_id_labels_one_request(
    upstreams: dict[str, str], tmp_path: Path
) -> None:
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"],
                           log_dir=tmp_path, feedback_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        gateway_ids = []
        for n in range(5):
            status, headers = await _predict(session, url, record(n), "reused")
            assert status == 200 and headers["X-Request-ID"] == "reused"
            gateway_ids.append(headers["X-Gateway-Request-ID"])
        await app[GATEWAY].queue.join()
        for request_id, label in ((gateway_ids[1], 1), ("reused", 0)):
            async with session.post(f"{url}/feedback", json={"request_id": request_id, "label": label},
                                    headers=auth) as answer:
                assert answer.status == 202
    log = read_prediction_log(tmp_path).set_index("request_id")
    assert sorted(log.index) == sorted(gateway_ids), "each request keeps its own entries"
    assert (log["client_request_id"] == "reused").all()
    assert (log["shadow_status"] == 200).all() and (log["production_status"] == 200).all()
    assert log.loc[gateway_ids[1], "label"] == 1
    assert log.loc[gateway_ids[4], "label"] == 0, "a client's id labels the latest request that carried it"
    assert log.loc[[gateway_ids[n] for n in (0, 2, 3)], "label"].isna().all()


async def test_a_client_cannot_choose_which_requests_are_mirrored(upstreams: dict[str, str], tmp_path: Path) -> None:
    chosen = [f"pick-{n}" for n in range(400) if in_mirror_sample(f"pick-{n}", percent=20)][:40]
    assert len(chosen) == 40
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"],
                           mirror_percent=20, log_dir=tmp_path)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        for n, request_id in enumerate(chosen):
            assert (await _predict(session, url, record(n), request_id))[0] == 200
        await app[GATEWAY].queue.join()
    log = read_prediction_log(tmp_path)
    mirrored = set(log.loc[log["mirrored"], "request_id"])
    assert mirrored == {i for i in log["request_id"] if in_mirror_sample(i, percent=20)}
    # Every one of the 40 ids was picked to be in a 20% sample; the gateway's own ids are
    # in it at 20% each: all 40 mirrored would have a chance of 1e-28.
    assert len(mirrored) < 30


async def test_feedback_without_the_token_is_refused_with_401(upstreams: dict[str, str], tmp_path: Path) -> None:
    config = GatewayConfig(production_url=upstreams["production"], log_dir=tmp_path, feedback_token=TOKEN)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        _, headers = await _predict(session, url, record(1), "labelled")
        feedback = {"request_id": headers["X-Gateway-Request-ID"], "label": 1}
        for authorization in (None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer "):
            sent = {"Authorization": authorization} if authorization else {}
            async with session.post(f"{url}/feedback", json=feedback, headers=sent) as answer:
                assert answer.status == 401, authorization
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await answer.json())["field"] == "Authorization"
        async with session.post(f"{url}/feedback", json=feedback,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 202
    assert read_prediction_log(tmp_path)["label"].tolist() == [1]


async def test_a_500_does_not_echo_the_exception(upstreams: dict[str, str], tmp_path: Path) -> None:
    """A damaged log makes the comparison fail with an error naming the file and its content."""
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"],
                           log_dir=tmp_path, comparison_ttl_s=0)
    damaged = tmp_path / "predictions-20200101T000000000000Z-damaged-000001.jsonl"
    damaged.write_text('{"type": "request", not json at all\n{"type": "feedback"}\n')
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, _):
        async with session.get(f"{url}/shadow/comparison") as answer:
            assert answer.status == 500
            text = await answer.text()
    assert "cannot compute the shadow comparison" in text
    assert damaged.name not in text and "not json" not in text and "expected" not in text


async def test_new_policy_thresholds_apply_without_a_restart(upstreams: dict[str, str], tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"min_requests": 500}))
    config = GatewayConfig(production_url=upstreams["production"], shadow_url=upstreams["shadow"],
                           log_dir=tmp_path / "log", policy_file=policy_file, comparison_ttl_s=3600)
    async with aiohttp.ClientSession() as session, running_gateway(config) as (url, app):
        for n in range(8):
            assert (await _predict(session, url, record(n), f"policy-{n}"))[0] == 200
        await app[GATEWAY].queue.join()
        async with session.get(f"{url}/shadow/comparison") as answer:
            before = await answer.json()
        # As kubelet updates a mounted ConfigMap: a new file swapped in, with a new mtime.
        replacement = tmp_path / "policy.json.new"
        replacement.write_text(json.dumps({"min_requests": 4, "min_agreement": 0.2, "max_latency_ratio": 50}))
        os.utime(replacement, (time.time() + 5, time.time() + 5))
        replacement.replace(policy_file)
        async with session.get(f"{url}/shadow/comparison") as answer:
            after = await answer.json()
        policy_file.write_text("{not a policy")
        os.utime(policy_file, (time.time() + 10, time.time() + 10))
        async with session.get(f"{url}/shadow/comparison") as answer:
            assert answer.status == 200
            kept = await answer.json()
    assert before["policy"]["min_requests"] == 500 and after["policy"]["min_requests"] == 4
    assert after["policy"]["min_agreement"] == 0.2 and kept["policy"] == after["policy"]
    assert before["compared_requests"] == after["compared_requests"] == 8, "the log was kept"
    assert before["verdict"] == "hold" and any("of the 500 compared requests" in r for r in before["reasons"])
    assert not any("compared requests the policy needs" in r for r in after["reasons"]), after["reasons"]
    thresholds = [{c["name"]: c["threshold"] for c in side["checks"]} for side in (before, after)]
    assert thresholds[0]["agreement"] == 0.95 and thresholds[1]["agreement"] == 0.2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("token_from", ["none", "env", "file"])
def test_the_gateway_process_takes_its_feedback_token_from_a_file_or_the_environment(
    upstreams: dict[str, str], tmp_path: Path, token_from: str
) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", upstreams["production"],
               "--log-dir", str(tmp_path / "log"), "--port", str(port)]
    env = {key: value for key, value in os.environ.items() if key != "MODELCYCLE_FEEDBACK_TOKEN"}
    if token_from == "env":
        env["MODELCYCLE_FEEDBACK_TOKEN"] = TOKEN
    elif token_from == "file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        command += ["--feedback-token-file", str(tmp_path / "token")]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(_check_feedback(f"http://127.0.0.1:{port}", process, open_=token_from == "none"))
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert ("/feedback is open" in stderr) == (token_from == "none"), stderr
    assert TOKEN not in stderr


async def _check_feedback(url: str, process: subprocess.Popen[str], *, open_: bool) -> None:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"{url}/healthz") as answer:
                    if answer.status == 200:
                        break
            assert process.poll() is None and time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.05)
        feedback = {"request_id": "any", "label": 1}
        async with session.post(f"{url}/feedback", json=feedback) as answer:
            assert answer.status == (202 if open_ else 401)
        async with session.post(f"{url}/feedback", json=feedback,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 202
