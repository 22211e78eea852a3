"""The operator tests' tools: the operator as a real process, kubectl conveniences for
ModelDeployments, tiny real model servers and a real local gateway process.

kwok pods serve no HTTP, so the gateway the operator reads is a real local gateway process
(`python -m modelcycle.serving.gateway`) in front of tiny real aiohttp model servers run
here; the ModelDeployment points the operator at it with the documented
`modelcycle.io/gateway-url` annotation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from modelcycle.cluster import Cluster
from modelcycle.cluster.binaries import find

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "modelcycle" / "crds" / "modeldeployments.yaml"


def wait_for(check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    """`python -m modelcycle.operator` serving one namespace, in its own process group."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self) -> OperatorProcess:
        env = {
            **os.environ, **self.cluster.env,
            "MODELCYCLE_NAMESPACES": self.namespace,
            "MODELCYCLE_COMPARISON_INTERVAL": "0.5",
            # The tests point the operator at gateways they run on 127.0.0.1 with this annotation.
            "MODELCYCLE_GATEWAY_URL_ANNOTATION": "true",
            "MODELCYCLE_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelcycle.operator"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no status flush, as a crash or an OOM kill."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            _terminate(self.process, grace_s=10)

    def reconciles(self) -> int:
        """Reconcile passes done so far, from the operator's metrics (0 until it answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("modelcycle_operator_reconcile_seconds_count"):
                return int(float(line.split()[-1]))
        return 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ModelDeployments:
    """kubectl conveniences for ModelDeployments in one namespace."""

    cluster: Cluster
    namespace: str

    def apply(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> None:
        manifest = {
            "apiVersion": "modelcycle.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations or {},
                         "labels": labels or {}},
            "spec": spec,
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", "md", name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch))

    def get(self, name: str) -> dict[str, Any]:
        return json.loads(self.cluster.kubectl("get", "md", name, "-n", self.namespace, "-o", "json").stdout)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for item in (self.get(name).get("status") or {}).get("conditions") or []:
            if item["type"] == type_:
                return item
        return {}

    def wait_condition(self, name: str, type_: str, status: str = "True", *, timeout: float = 30.0,
                       reason: str | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = self.condition(name, type_)
            if found.get("status") == status and (reason is None or found.get("reason") == reason):
                return found
            return None

        return wait_for(check, timeout=timeout, what=f"{type_}={status} on md/{name}")

    def children(self, kind: str, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", kind, "-n", self.namespace, "-l", f"modelcycle.io/deployment={name}", "-o", "json",
            "--show-managed-fields",
        ).stdout
        return json.loads(out)["items"]

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", "events", "-n", self.namespace, "--field-selector",
            f"involvedObject.kind=ModelDeployment,involvedObject.name={name}", "-o", "json",
        ).stdout
        return json.loads(out)["items"]


LEASE = "modelcycle-operator"
"""The Lease the replicas of the HA tests elect with, in the served namespace."""


def replica_env(identity: str, *, lease_duration_s: float = 3.0, renew_s: float = 1.0) -> dict[str, str]:
    """The environment of one operator replica named `identity` that elects with `LEASE`:
    a short Lease, so that a takeover takes seconds in a test."""
    return {
        "MODELCYCLE_LEASE_NAME": LEASE,
        "MODELCYCLE_POD_NAME": identity,
        "MODELCYCLE_LEASE_DURATION": str(lease_duration_s),
        "MODELCYCLE_LEASE_RENEW_INTERVAL": str(renew_s),
    }


def lease(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The spec of `LEASE` in `namespace` ({} while it does not exist)."""
    out = cluster.kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout).get("spec", {}) if out.returncode == 0 else {}


class Watch:
    """`kubectl get ... --watch -o jsonpath=TEMPLATE`: every line it prints, with the
    monotonic time it arrived, read by a thread; for timings finer than polling gives."""

    def __init__(self, cluster: Cluster, *args: str, template: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [str(find("kubectl")), "get", *args, "--watch", "-o", f"jsonpath={template}" + '{"\\n"}'],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, **cluster.env},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.strip()))
                self._changed.notify_all()

    def wait(self, check: Callable[[str], bool], *, timeout: float, what: str, since: float = 0.0) -> float:
        """The arrival time of the first line after `since` for which `check` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for at, line in self.lines:
                    if at >= since and check(line):
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {timeout:g} s waiting for {what}; lines: {self.lines[-10:]}")
                self._changed.wait(timeout=left)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": "fraud", "production": {"version": 3, "image": "fraud:3-abc"}}
    spec.update(overrides)
    return spec


# -- real model servers and a real gateway ---------------------------------------------


@dataclass
class ModelServer:
    """A tiny real model server: POST /predict answers like a bento, with predictions we choose."""

    version: str
    flip: bool = False
    """Predict the opposite class of production's rule, so agreement is 0."""
    delay_s: float = 0.005
    """A steady latency, so the latency ratio between two servers is close to 1."""
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def predict(self, request: web.Request) -> web.Response:
        body = await request.json()
        records = body["records"] if "records" in body else [body]
        await asyncio.sleep(self.delay_s)
        predictions = [int(record["x"] > 0) ^ int(self.flip) for record in records]
        return web.json_response({
            "model": "fraud",
            "model_version": self.version,
            "request_id": request.headers.get("X-Request-ID", "none"),
            "predictions": predictions,
            "probabilities": [{"0": 0.9 - 0.8 * p, "1": 0.1 + 0.8 * p} for p in predictions],
        })

    async def ok(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/predict", self.predict)
        app.router.add_get("/readyz", self.ok)
        app.router.add_get("/livez", self.ok)
        return app


class ServerThread:
    """aiohttp applications served from one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def serve(self, server: ModelServer) -> ModelServer:
        async def start() -> None:
            runner = web.AppRunner(server.app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", server.port).start()
            self.runners.append(runner)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)
        return server

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


POLICY = {"minRequests": 40, "minAgreement": 0.8, "maxLatencyRatio": 4, "maxErrorRate": 0.2}
"""Thresholds small enough that ~50 requests decide; the gateway is started with the same."""


class GatewayProcess:
    """`python -m modelcycle.serving.gateway` in front of two local model servers."""

    def __init__(self, production: ModelServer, shadow: ModelServer, log_dir: Path, log: Path,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        args = [
            sys.executable, "-m", "modelcycle.serving.gateway",
            "--production-url", production.url, "--shadow-url", shadow.url, "--mirror-percent", "100",
            "--log-dir", str(log_dir), "--port", str(self.port), "--flush-interval", "0.1",
            "--min-requests", str(POLICY["minRequests"]), "--min-agreement", str(POLICY["minAgreement"]),
            "--max-latency-ratio", str(POLICY["maxLatencyRatio"]), "--max-error-rate", str(POLICY["maxErrorRate"]),
            *extra_args,
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.log = log
        wait_for(self._ready, timeout=30, what=f"the gateway on port {self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the gateway exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def send(self, requests: int) -> None:
        """`requests` prediction requests of four records each, half of them positive."""
        for index in range(requests):
            records = [{"x": (index + row) % 2 * 2 - 1} for row in range(4)]
            request = urllib.request.Request(
                f"{self.url}/predict", data=json.dumps({"records": records}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200

    def comparison(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/shadow/comparison", timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        _terminate(self.process, grace_s=20)


def _terminate(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM the process's session; SIGKILL it if it has not exited after `grace_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def terminate_fake_pod(cluster: Cluster, namespace: str, pod: dict[str, Any], exit_code: int, message: str,
                       started: dt.datetime) -> None:
    """Write a container's end into a kwok pod's status, as the kubelet reports it: the pod is
    read again first, since kwok may have written its status after `pod` was read."""
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    fresh = json.loads(cluster.kubectl("get", "pod", pod["metadata"]["name"], "-n", namespace, "-o", "json").stdout)
    container, = fresh["status"]["containerStatuses"]
    container["state"] = {"terminated": {
        "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message,
        "startedAt": stamp(started), "finishedAt": stamp(dt.datetime.now(dt.UTC)),
    }}
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace, "--subresource=status",
                    "--type=strategic", "-p", json.dumps({"status": {"containerStatuses": [container]}}))
