"""The operator's API client under a burst: the wait for a free connection of its pool is
the operator's own queue, not the API server's time to answer, so requests queued behind a
burst's writes do not time out (and fail their pass, which sends them all again). A server
that does not answer still times out, and the error says so.

The slow API server is a fake, a small aiohttp server: a real kube-apiserver cannot be made
slow on demand."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from aiohttp import web

from modelcycle.operator import clients


@pytest.fixture
async def slow_api(tmp_path, monkeypatch):
    """{"seconds": S}: how long the fake API server takes to answer any request."""
    delay = {"seconds": 0.5}

    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(delay["seconds"])
        return web.json_response({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server = f"http://127.0.0.1:{runner.addresses[0][1]}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "slow",
        "clusters": [{"name": "slow", "cluster": {"server": server}}],
        "users": [{"name": "slow", "user": {"token": "t"}}],
        "contexts": [{"name": "slow", "context": {"cluster": "slow", "user": "slow"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setattr(clients, "REQUEST_TIMEOUT_S", 1.0)
    try:
        yield delay
    finally:
        await runner.cleanup()


async def test_requests_queued_behind_the_pool_do_not_time_out(slow_api) -> None:
    client = clients.KubeClient()
    try:
        began = time.monotonic()
        # Three times the pool's 64 connections: the last wait two answers (1 s) for a
        # connection, then 0.5 s for their own, 1.5 s in all against a timeout of 1 s.
        answers = await asyncio.gather(*(
            client.request("GET", f"/api/v1/namespaces/n/configmaps/c{i}", resource="configmaps") for i in range(192)
        ))
        took = time.monotonic() - began
    finally:
        await client.close()
    assert len(answers) == 192 and all(a["kind"] == "ConfigMap" for a in answers)
    assert took >= 1.4, took  # the queue was there


async def test_a_server_that_does_not_answer_times_out_and_says_so(slow_api) -> None:
    slow_api["seconds"] = 3
    client = clients.KubeClient()
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=r"GET /api/v1/namespaces/n/configmaps/c: no answer from the API "
                                               r"server within 1 s"):
            await client.request("GET", "/api/v1/namespaces/n/configmaps/c", resource="configmaps")
        assert time.monotonic() - began < 2.5
    finally:
        await client.close()
