"""Figures of the ModelDeployment operator on the local control plane (kwok nodes).

First 10 ModelDeployments applied one at a time (each once the previous is Ready): the
latency of one apply. Then 100 and 500 ModelDeployments (each batch in its own namespace,
the first left in place), created at once through the API. It prints:

- apply -> Ready per ModelDeployment (p50, p95), from the create call's answer to the
  watch event showing Ready=True (target: p50 < 3 s), and the time until all are Ready
  (target for 500: < 120 s);
- next to them, the floor measured in the same run: the objects the operator creates per
  ModelDeployment (two Deployments, two Services, a ConfigMap), created directly, until
  every Deployment is Available. That is the API server, controller-manager, scheduler
  and kwok alone; the operator cannot be faster;
- the operator's resident memory once everything is Ready;
- the API requests the operator makes over 60 idle seconds (target: about 0), counted by
  the operator itself (`modelcycle_operator_api_requests_total`, which excludes kopf's
  watches) and by the API server (`apiserver_request_total` for the resources the
  operator touches; watches are counted when they start).

The control plane's kube-controller-manager and kube-scheduler talk to the API server at
client-go's default 20 requests/s, which caps them at a few Deployments a second whoever
creates them. The bench starts them with `--kube-api-qps 200 --kube-api-burst 400`, as a
cluster sized for hundreds of Deployments would (`--default-qps` keeps the default, and
shows the floor it gives). The operator's own reaction is printed too: apply -> the
ModelDeployment's children created.

Run: .venv/bin/python bench/operator_scale.py [--sizes 100 500] [--idle 60] [--no-floor] [--default-qps]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from modelcycle.cluster import Cluster, ControlPlane, ControlPlaneSettings
from modelcycle.cluster.pki import ClusterPKI

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "charts" / "modelcycle" / "crds" / "modeldeployments.yaml"
P50_TARGET, TOTAL_TARGET, TOTAL_TARGET_SIZE = 3.0, 120.0, 500
RESOURCES = ("modeldeployments", "deployments", "services", "configmaps", "events")


CONTROLLER_QPS = ["--kube-api-qps=200", "--kube-api-burst=400"]


class RaisedQpsControlPlane(ControlPlane):
    """The local control plane with controllers allowed more requests per second. It extends
    the flag lists of `ControlPlane` (modelcycle.cluster), which offers no setting for it."""

    def _controller_manager_flags(self, pki: ClusterPKI) -> list[str]:
        return [*super()._controller_manager_flags(pki), *CONTROLLER_QPS, "--concurrent-deployment-syncs=20",
                "--concurrent-replicaset-syncs=20"]

    def _scheduler_flags(self, pki: ClusterPKI) -> list[str]:
        return [*super()._scheduler_flags(pki), *CONTROLLER_QPS]


class Api:
    """Just enough of the API for the bench: create, and watch a collection."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        self.server = config["clusters"][0]["cluster"]["server"]
        self.ssl = ssl.create_default_context(cafile=config["clusters"][0]["cluster"]["certificate-authority"])
        self.headers = {"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession(
            headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
            read_bufsize=2**20,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def create(self, path: str, body: dict[str, Any]) -> float:
        assert self.session is not None
        async with self.session.post(self.server + path, json=body) as answer:
            if answer.status != 201:
                raise RuntimeError(f"POST {path}: {answer.status} {await answer.text()}")
        return time.monotonic()

    async def watch_until(self, path: str, names: set[str], done: Any, deadline: float) -> dict[str, float]:
        """Watch `path` until `done(object)` held for every name; name -> monotonic time."""
        assert self.session is not None
        seen: dict[str, float] = {}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        version = None
        while len(seen) < len(names) and time.monotonic() < deadline:
            params = {"watch": "1", "allowWatchBookmarks": "true", **({"resourceVersion": version} if version else {})}
            async with self.session.get(self.server + path, params=params, timeout=timeout) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"watch {path}: {answer.status} {await answer.text()}")
                while len(seen) < len(names) and time.monotonic() < deadline:
                    line = await answer.content.readline()
                    if not line:
                        break  # the server ended the watch: start again where it stopped
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {path}: {obj}")
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    name = obj.get("metadata", {}).get("name")
                    if name in names and name not in seen and done(obj):
                        seen[name] = time.monotonic()
        return seen


def md_ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or [])


def deployment_available(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Available" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions") or [])


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": "fraud", "production": {"version": 3, "image": "fraud:3-abc"}},
    }


def bare_service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 3000}]}}


def bare_config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"PRODUCTION_URL": "x"}}


def bare_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": "fraud:3-abc"}]},
        }},
    }


async def run_batch(api: Api, *, namespace: str, size: int, floor: bool) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    if floor:
        names = {f"d{i}-{part}" for i in range(size) for part in ("production", "gateway")}
        path = f"/apis/apps/v1/namespaces/{namespace}-floor/deployments"
        watcher = asyncio.create_task(api.watch_until(path, names, deployment_available, deadline))
        await asyncio.sleep(0.2)
        began = time.monotonic()
        # What the operator creates per ModelDeployment: two Deployments, two Services, a ConfigMap.
        created, _, _ = await asyncio.gather(
            _create_all(api, path, [bare_deployment(n) for n in sorted(names)]),
            _create_all(api, f"/api/v1/namespaces/{namespace}-floor/services", [bare_service(n) for n in sorted(names)]),
            _create_all(api, f"/api/v1/namespaces/{namespace}-floor/configmaps",
                        [bare_config_map(f"d{i}") for i in range(size)]),
        )
        ready = await watcher
        floor_total = max(ready.values()) - began
        floor_latencies = [ready[n] - created[n] for n in ready]
    names = {f"md-{i}" for i in range(size)}
    path = f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments"
    watcher = asyncio.create_task(api.watch_until(path, names, md_ready, deadline))
    children = asyncio.create_task(api.watch_until(
        f"/apis/apps/v1/namespaces/{namespace}/deployments", {f"{n}-production" for n in names},
        lambda obj: True, deadline,
    ))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    created = await _create_all(api, path, [model_deployment(n) for n in sorted(names)])
    ready = await watcher
    applied = await children
    latencies = sorted(ready[n] - created[n] for n in ready)
    reactions = sorted(applied[f"{n}-production"] - created[n] for n in names if f"{n}-production" in applied)
    result = {
        "size": size, "ready": len(ready), "total": max(ready.values()) - began if ready else float("nan"),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "reaction_p50": statistics.median(reactions) if reactions else float("nan"),
    }
    if floor:
        result["floor_total"] = floor_total
        result["floor_p50"] = statistics.median(floor_latencies)
    return result


async def run_singles(api: Api, *, namespace: str, count: int) -> dict[str, float]:
    """ModelDeployments applied one at a time, each after the previous is Ready: the latency
    of one apply on a quiet cluster, next to a bare Deployment pair's."""
    latencies, floor = [], []
    md_path = f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments"
    bare_path = f"/apis/apps/v1/namespaces/{namespace}-floor/deployments"
    for index in range(count):
        deadline = time.monotonic() + 60
        names = {f"single-{index}-production", f"single-{index}-gateway"}
        watcher = asyncio.create_task(api.watch_until(bare_path, names, deployment_available, deadline))
        await asyncio.sleep(0.1)
        created = await _create_all(api, bare_path, [bare_deployment(n) for n in sorted(names)])
        ready = await watcher
        floor.append(max(ready.values()) - min(created.values()))
        name = f"single-{index}"
        watcher = asyncio.create_task(api.watch_until(md_path, {name}, md_ready, deadline))
        await asyncio.sleep(0.1)
        created_at = await api.create(md_path, model_deployment(name))
        latencies.append((await watcher)[name] - created_at)
    return {"p50": statistics.median(latencies), "floor_p50": statistics.median(floor)}


async def _create_all(api: Api, path: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    slots = asyncio.Semaphore(32)

    async def one(body: dict[str, Any]) -> tuple[str, float]:
        async with slots:
            return body["metadata"]["name"], await api.create(path, body)

    return dict(await asyncio.gather(*(one(body) for body in bodies)))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def operator_requests(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r"^modelcycle_operator_api_requests_total\{[^}]*\} (\S+)$", text, re.M))


def apiserver_requests(cluster: Cluster) -> dict[str, float]:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: dict[str, float] = {}
    for match in re.finditer(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("resource") in RESOURCES:
            key = f"{labels['verb']} {labels['resource']}{'/' + labels['subresource'] if labels.get('subresource') else ''}"
            counts[key] = counts.get(key, 0) + float(match.group(2))
    return counts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-Deployment floor")
    parser.add_argument("--singles", type=int, default=10, help="ModelDeployments applied one at a time first")
    parser.add_argument("--default-qps", action="store_true", help="controllers at client-go's default 20 requests/s")
    args = parser.parse_args()
    # SIGTERM unwinds like an exception, so the operator and the control plane are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # A kwok node takes 110 pods; each ModelDeployment and each floor pair runs two.
    pods = 2 * sum(args.sizes) * (2 if args.floor else 1)
    # Each ModelDeployment has two Services; the default /24 service range holds 254.
    settings = ControlPlaneSettings(fake_nodes=max(3, -(-pods // 100)), ready_timeout=120,
                                    service_cluster_ip_range="10.0.0.0/16")
    plane = (ControlPlane if args.default_qps else RaisedQpsControlPlane)(settings=settings)
    with tempfile.TemporaryDirectory(prefix="modelcycle-bench-operator-") as tmp, plane as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.modelcycle.io")
        for size in args.sizes:
            for suffix in ("", "-floor"):
                cluster.kubectl("create", "namespace", f"bench-{size}{suffix}")
                cluster.kubectl("wait", "--for=create", "--timeout=30s", "-n", f"bench-{size}{suffix}",
                                "serviceaccount/default")
        metrics_port = free_port()
        log = Path(tmp) / "operator.log"
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "modelcycle.operator"], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **cluster.env, "MODELCYCLE_METRICS_PORT": str(metrics_port)},
                start_new_session=True,
            )
        try:
            time.sleep(1)
            for _ in range(100):
                try:
                    operator_requests(metrics_port)
                    break
                except OSError:
                    time.sleep(0.2)
            qps = "client-go default QPS" if args.default_qps else " ".join(CONTROLLER_QPS)
            print(f"operator bench on {os.cpu_count()} cores, kwok nodes, controllers at {qps}; "
                  "floor: the same Deployments created directly, without the operator", flush=True)

            async def batches() -> tuple[dict[str, float], list[dict[str, Any]]]:
                async with Api(cluster.kubeconfig) as api:
                    singles = await run_singles(api, namespace=f"bench-{args.sizes[0]}", count=args.singles)
                    return singles, [await run_batch(api, namespace=f"bench-{size}", size=size, floor=args.floor)
                                     for size in args.sizes]

            singles, results = asyncio.run(batches())
            print(f"   1 ModelDeployment at a time ({args.singles} in a row): apply->Ready p50 {singles['p50']:.2f} s "
                  f"(target < {P50_TARGET:g} s); floor, a bare Deployment pair: p50 {singles['floor_p50']:.2f} s",
                  flush=True)
            for result in results:
                size = result["size"]
                line = (f"{size:>4} ModelDeployments: {result['ready']}/{size} Ready; apply->Ready p50 "
                        f"{result['p50']:.2f} s (target < {P50_TARGET:g} s), p95 {result['p95']:.2f} s; "
                        f"all Ready in {result['total']:.1f} s")
                if size == TOTAL_TARGET_SIZE:
                    line += f" (target < {TOTAL_TARGET:g} s)"
                print(line, flush=True)
                print(f"     the operator's reaction, apply->children created: p50 {result['reaction_p50']:.2f} s")
                if "floor_total" in result:
                    print(f"     floor, the same {5 * size} objects created directly: create->Available p50 {result['floor_p50']:.2f} s; "
                          f"all Available in {result['floor_total']:.1f} s", flush=True)
            print(f"operator RSS with {sum(args.sizes)} ModelDeployments: {rss_mb(operator.pid):.0f} MB")

            time.sleep(5)  # let the last status writes and Events settle
            own_before, server_before = operator_requests(metrics_port), apiserver_requests(cluster)
            time.sleep(args.idle)
            own_after, server_after = operator_requests(metrics_port), apiserver_requests(cluster)
            delta = {k: server_after.get(k, 0) - server_before.get(k, 0) for k in server_after}
            busy = {k: int(v) for k, v in delta.items() if v}
            print(f"idle {args.idle:g} s: the operator sent {own_after - own_before:.0f} requests (target about 0); "
                  f"the API server counted {int(sum(delta.values()))} on {', '.join(RESOURCES)}"
                  + (f": {busy}" if busy else ""))
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
                operator.wait()


if __name__ == "__main__":
    main()
