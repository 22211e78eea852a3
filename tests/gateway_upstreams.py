"""Model servers for the gateway's tests, real aiohttp servers that implement the serving
contract around a fitted scikit-learn LogisticRegression, and the gateway served in the
test's process. The servers run in one subprocess started from this file
(``python gateway_upstreams.py``), each on its own port:

- ``production``: model version 1;
- ``shadow``: model version 2, trained with stronger regularisation, so it sometimes disagrees;
- ``shadow_delayed``: a fake, version 2 with 50 ms added before answering, so that mirrors
  are still in flight when the gateway is stopped;
- ``slow``: a fake that sleeps 2 s before answering;
- ``failing``: a fake that answers 500 to every prediction;
- ``down`` (in `start_upstreams`'s URLs): a port nobody listens on.

Every server also answers ``GET /seen`` with the request ids it was asked to predict, so a
test can see what reached the shadow. A module of its own (not conftest): several test
folders use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
from aiohttp import web

from modelcycle.serving.gateway import GatewayConfig, create_app

FEATURES = ("x1", "x2")


def model_server(model: Any, version: str, *, delay_s: float = 0.0, fail: bool = False) -> web.Application:
    """A model server that follows the serving contract; `delay_s` and `fail` make it a fake."""
    seen: list[str] = []

    async def predict(request: web.Request) -> web.Response:
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        seen.append(request_id)
        if delay_s:
            await asyncio.sleep(delay_s)
        if fail:
            return web.json_response({"error": "injected failure", "field": None, "request_id": request_id}, status=500)
        try:
            document = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "body is not JSON", "field": None, "request_id": request_id}, status=400)
        records = document.get("records", [document]) if isinstance(document, dict) else None
        if not isinstance(records, list) or not records:
            return web.json_response(
                {"error": "expected a record or {'records': [...]}", "field": "records", "request_id": request_id},
                status=422,
            )
        for number, record in enumerate(records):
            for field in FEATURES:
                value = record.get(field) if isinstance(record, dict) else None
                if not isinstance(value, int | float) or isinstance(value, bool):
                    return web.json_response(
                        {"error": f"record {number}: field {field!r} must be a number, found {value!r}",
                         "field": field, "request_id": request_id},
                        status=422,
                    )
        features = np.array([[record[f] for f in FEATURES] for record in records], dtype=float)
        probabilities = model.predict_proba(features)
        classes = [str(c) for c in model.classes_]
        return web.json_response(
            {
                "model": "toy",
                "model_version": version,
                "request_id": request_id,
                "predictions": [int(c) for c in model.classes_[probabilities.argmax(axis=1)]],
                "probabilities": [dict(zip(classes, map(float, row), strict=True)) for row in probabilities],
            }
        )

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def seen_ids(request: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", ok)
    app.router.add_get("/seen", seen_ids)
    return app


def serve_upstreams() -> None:
    """Entry point of the upstream subprocess: print the ports as one JSON line, then serve."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    features = rng.normal(size=(400, 2))
    labels = (features[:, 0] + 0.5 * features[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    production = LogisticRegression().fit(features, labels)
    shadow = LogisticRegression(C=0.05).fit(features, labels)
    apps = {
        "production": model_server(production, "1"),
        "shadow": model_server(shadow, "2"),
        "shadow_delayed": model_server(shadow, "2", delay_s=0.05),
        "slow": model_server(shadow, "2", delay_s=2.0),
        "failing": model_server(shadow, "2", fail=True),
    }

    async def serve() -> None:
        ports = {}
        for name, app in apps.items():
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports[name] = runner.addresses[0][1]
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def record(i: int) -> dict[str, float]:
    """A record the model servers accept, the same for the same `i`."""
    rng = np.random.default_rng(i)
    return {"x1": float(rng.normal()), "x2": float(rng.normal())}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def start_upstreams() -> Iterator[dict[str, str]]:
    """The model servers' URLs by name, and ``down``; stopped on exit."""
    process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the upstream servers did not start (exit code {process.poll()})"
        urls = {name: f"http://127.0.0.1:{port}" for name, port in json.loads(line).items()}
        urls["down"] = f"http://127.0.0.1:{free_port()}"
        yield urls
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[tuple[str, web.Application]]:
    """The gateway served in this process on a free port; stopping it runs its graceful shutdown."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    serve_upstreams()
