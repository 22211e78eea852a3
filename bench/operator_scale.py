"""Figures of the ModelDeployment operator on the local control plane (kwok nodes).

First 10 ModelDeployments applied one at a time (each once the previous is Ready): the
latency of one apply. Then 100 and 500 ModelDeployments (each batch in its own namespace,
the first left in place), created at once through the API. It prints:

- apply -> Ready per ModelDeployment (p50, p95), from the create call's answer to the
  watch event showing Ready=True (target: p50 < 3 s), and the time until all are Ready
  (target for 500: < 120 s);
- next to them, the floor measured in the same run: the objects the operator creates per
  ModelDeployment (its own manifests, `resources.desired_children`: two Deployments, two
  Services, a ConfigMap, without the owner reference and under another managed-by label,
  so the running operator ignores them), created directly, until every object exists and
  every Deployment is Available. That is the API server, controller-manager, scheduler and kwok alone; the
  operator cannot be faster. The floor's objects are then deleted (its namespace, waited
  for until gone): the API server's ClusterIP allocator lists every IPAddress of the
  cluster at each allocation, so Services left in place make later ones dearer;
- then an ideal operator, played by the bench: the same ModelDeployments, and for each the
  writes this operator's output needs at the least, each the cheapest way (plain POSTs of
  the children owned by it, its feedback Secret, its Rollout Event, one status write as
  soon as both Deployments are Available), with no reconciling work at all. Its time next to the
  floor's is what the ModelDeployment objects themselves cost the control plane (their
  creates and status writes, the garbage collector's share for the owner references):
  no operator with these outputs can beat it on the same machine. It is deleted too,
  and the running operator's selector (`MODELCYCLE_SELECTOR`) leaves it alone;
- the operator's resident memory once everything is Ready;
- the API requests the operator makes over 60 idle seconds (target: about 0), counted by
  the operator itself (`modelcycle_operator_api_requests_total`, which excludes kopf's
  watches) and by the API server (`apiserver_request_total` for the resources the
  operator touches; watches are counted when they start).

Each figure is printed next to its target, and the burst's next to the floor as a ratio,
and to the ideal operator's (all Ready <= 1.3x the floor at 100 and 500, the operator's reaction p50 <= 1 s at 100,
one at a time within 0.1 s of the floor), with the requests the operator sent per
ModelDeployment. `--restart` then stops the operator and starts a new one over everything
the run created: it must converge without writing a child that is already as wanted (the
applied-hash skip); the time until its first pass over every ModelDeployment and the
requests it sent are printed. `--py-spy BINARY --profile FILE` samples the operator with
py-spy (installed anywhere, not a dependency of the project; non-blocking, so the operator
is never paused) for the whole run and writes
the collapsed stacks to FILE.

The machine is shared: the floor is measured in the same run, right before each burst, so
the ratios hold for the load of the moment; the figures are what was measured.

The control plane's kube-controller-manager and kube-scheduler talk to the API server at
client-go's default 20 requests/s, which caps them at a few Deployments a second whoever
creates them. The bench starts them with `--kube-api-qps 200 --kube-api-burst 400`, as a
cluster sized for hundreds of Deployments would (`--default-qps` keeps the default, and
shows the floor it gives). The operator's own reaction is printed too: apply -> the
ModelDeployment's children created.

`--apiserver-pprof DIR` writes the API server's CPU profile (Go's pprof, in 5-second
slices) of each burst's floor, ideal-operator and operator phases, for `go tool pprof -top`.

Run: .venv/bin/python bench/operator_scale.py [--sizes 100 500] [--idle 60] [--restart] [--no-floor]
     [--default-qps] [--py-spy BINARY --profile FILE] [--apiserver-pprof DIR]
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
from datetime import UTC, datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from modelcycle.cluster import Cluster, ControlPlane, ControlPlaneSettings
from modelcycle.cluster.pki import ClusterPKI
from modelcycle.operator import resources, statuses
from modelcycle.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "charts" / "modelcycle" / "crds" / "modeldeployments.yaml"
P50_TARGET, TOTAL_TARGET, TOTAL_TARGET_SIZE = 3.0, 120.0, 500
RATIO_TARGET = 1.3
"""All Ready at most this many times the floor's all Available, at every burst size."""
REACTION_TARGET, REACTION_TARGET_SIZE = 1.0, 100
"""The operator's reaction (apply -> children created) p50 at a burst of 100."""
SINGLE_MARGIN = 0.1
"""One at a time: apply->Ready p50 at most this many seconds above the floor's."""
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
    """Just enough of the API for the bench: create, watch a collection, profile the server."""

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
        await self.post(path, body)
        return time.monotonic()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST (create) `body`; the object the API server answered."""
        assert self.session is not None
        async with self.session.post(self.server + path, json=body) as answer:
            if answer.status != 201:
                raise RuntimeError(f"POST {path}: {answer.status} {await answer.text()}")
            return await answer.json()

    async def patch_status(self, path: str, status: dict[str, Any]) -> None:
        assert self.session is not None
        async with self.session.patch(self.server + path + "/status", json={"status": status},
                                      headers={"Content-Type": "application/merge-patch+json"}) as answer:
            if answer.status != 200:
                raise RuntimeError(f"PATCH {path}/status: {answer.status} {await answer.text()}")

    async def delete_namespace(self, namespace: str, deadline: float) -> float:
        """Delete `namespace` and wait until it is gone with everything in it; the seconds taken."""
        assert self.session is not None
        began = time.monotonic()
        async with self.session.delete(f"{self.server}/api/v1/namespaces/{namespace}") as answer:
            if answer.status not in (200, 202):
                raise RuntimeError(f"DELETE namespace {namespace}: {answer.status} {await answer.text()}")
        while time.monotonic() < deadline:
            async with self.session.get(f"{self.server}/api/v1/namespaces/{namespace}") as answer:
                if answer.status == 404:
                    return time.monotonic() - began
            await asyncio.sleep(0.5)
        raise RuntimeError(f"namespace {namespace} still there")

    async def cpu_profiles(self, folder: Path, prefix: str, stop: asyncio.Event) -> list[Path]:
        """The API server's CPU profile (Go's pprof, on by default) in 5-second slices until
        `stop` is set; the slices, which `go tool pprof` merges when given together."""
        assert self.session is not None
        slices = []
        while not stop.is_set():
            async with self.session.get(self.server + "/debug/pprof/profile", params={"seconds": "5"}) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"pprof: {answer.status} {await answer.text()}")
                path = folder / f"{prefix}-{len(slices):03d}.pb.gz"
                path.write_bytes(await answer.read())
                slices.append(path)
        return slices

    async def watch_until(self, path: str, names: set[str], done: Any, deadline: float,
                          first_seen: dict[str, float] | None = None,
                          on_done: Callable[[str], None] | None = None) -> dict[str, float]:
        """Watch `path` until `done(object)` held for every name; name -> monotonic time.
        `first_seen` gets the time of each name's first event (one watch for both, so every
        phase of the bench decodes the same streams); `on_done(name)` is called as each is done."""
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
                    if first_seen is not None and name in names and name not in first_seen:
                        first_seen[name] = time.monotonic()
                    if name in names and name not in seen and done(obj):
                        seen[name] = time.monotonic()
                        if on_done is not None:
                            on_done(name)
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


FLOOR_MANAGER = "modelcycle-bench-floor"
PATHS = {"Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
         "Service": "/api/v1/namespaces/{namespace}/services",
         "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
         "Secret": "/api/v1/namespaces/{namespace}/secrets",
         "Event": "/api/v1/namespaces/{namespace}/events"}
IDEAL_LABEL = "modelcycle.io/bench-ideal"
"""ModelDeployments of the ideal-operator phase carry it; the running operator's selector excludes them."""


def floor_children(namespace: str, name: str, owner: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The children the operator applies for a ModelDeployment `name`, to create directly:
    no owner (unless `owner`, the ModelDeployment, is given), and a managed-by label the
    operator does not watch."""
    md = owner or {"metadata": {"name": name, "namespace": namespace, "uid": "floor"},
                   "spec": model_deployment(name)["spec"]}
    children = resources.desired_children(md, gateway_image=OperatorSettings().gateway_image)
    for child in children:
        if owner is None:
            child["metadata"].pop("ownerReferences")
        child["metadata"]["labels"]["app.kubernetes.io/managed-by"] = FLOOR_MANAGER
        template = child.get("spec", {}).get("template")
        if template:
            template["metadata"]["labels"]["app.kubernetes.io/managed-by"] = FLOOR_MANAGER
    return children


async def run_ideal(api: Api, *, namespace: str, size: int, cpu: Any, pprof: Path | None) -> dict[str, Any]:
    """An ideal operator, played by the bench with no work of its own to speak of: for each
    ModelDeployment, the writes this operator's output needs at the least, each the cheapest
    way: the ModelDeployment created, its feedback Secret, its five children and one Event
    created with plain POSTs (owned by it, so the garbage collector's share is there too),
    and one status write as soon as both its Deployments are Available. Ready is seen by
    the same watch as in the operator's phase. All Ready, next to the floor's, is the cost
    of the ModelDeployment objects themselves: a bound no operator with these outputs can
    beat on this machine."""
    deadline = time.monotonic() + 600
    md_path = f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments"
    slots = asyncio.Semaphore(32)
    objects: dict[str, dict[str, Any]] = {}
    summaries: dict[str, dict[tuple[str, str], Any]] = {}
    created = {f"md-{i}": asyncio.Event() for i in range(size)}
    available: dict[str, int] = {}
    writes: list[asyncio.Task[None]] = []

    async def create(name: str) -> None:
        body = model_deployment(name)
        body["metadata"]["labels"] = {IDEAL_LABEL: "true"}
        async with slots:
            md = objects[name] = await api.post(md_path, body)
        children = floor_children(namespace, name, owner=md)
        secret = resources.feedback_secret(md)
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] = FLOOR_MANAGER
        async with slots:
            answers = await asyncio.gather(
                *(api.post(PATHS[child["kind"]].format(namespace=namespace), child) for child in [secret, *children]),
                api.post(PATHS["Event"].format(namespace=namespace), rollout_event(md)),
            )
        summaries[name] = {(child["kind"], child["metadata"]["name"]): statuses.summarize(child)
                           for child in answers[1:-1]}
        created[name].set()

    async def write_status(name: str) -> None:
        await created[name].wait()
        md, found = objects[name], summaries[name]
        for part in ("production", "gateway"):
            key = ("Deployment", resources.child_name(name, part))
            # What the watch showed: rolled out, one pod available.
            found[key] = {**found[key], "observedGeneration": found[key]["generation"], "statusReplicas": 1,
                          "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
        status = statuses.build_status(md, children=found, wanted_hashes={k: v["hash"] for k, v in found.items()},
                                       comparison=None, verdict=None, now=datetime.now(UTC))
        assert md_ready({"status": status}), status
        async with slots:
            await api.patch_status(f"{md_path}/{name}", status)

    def deployment_done(deployment: str) -> None:
        name = deployment.rsplit("-", 1)[0]
        available[name] = available.get(name, 0) + 1
        if available[name] == 2:  # both of its Deployments: its status, at once
            writes.append(asyncio.create_task(write_status(name)))

    ready = asyncio.create_task(api.watch_until(md_path, set(created), md_ready, deadline))
    rolled_out = asyncio.create_task(api.watch_until(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {f"{n}-{part}" for n in created for part in ("production", "gateway")}, deployment_available, deadline,
        on_done=deployment_done,
    ))
    await asyncio.sleep(0.2)
    cpu_before = cpu()
    stop = asyncio.Event()
    sampler = asyncio.create_task(api.cpu_profiles(pprof, namespace, stop)) if pprof else None
    began = time.monotonic()
    await asyncio.gather(*(create(name) for name in created))
    await rolled_out
    await asyncio.gather(*writes)
    seen = await ready
    result = {"total": max(seen.values()) - began, "cpu": difference(cpu(), cpu_before), "ready": len(seen),
              "profiles": []}
    stop.set()
    if sampler is not None:
        result["profiles"] = await sampler
    return result


def rollout_event(md: dict[str, Any]) -> dict[str, Any]:
    """The Event the operator posts when it creates a production Deployment."""
    meta = md["metadata"]
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": md["apiVersion"], "kind": md["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "reason": "Rollout", "type": "Normal", "source": {"component": FLOOR_MANAGER},
        "message": "production version 3 (fraud:3-abc, 1 replicas) created",
        "firstTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def create_floor(api: Api, namespace: str, names: list[str]) -> dict[str, float]:
    """Create the children of `names` directly, by kind in parallel; Deployment name -> created at."""
    by_path: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for child in floor_children(namespace, name):
            by_path.setdefault(PATHS[child["kind"]].format(namespace=namespace), []).append(child)
    done = await asyncio.gather(*(_create_all(api, path, bodies) for path, bodies in by_path.items()))
    return dict(zip(by_path, done, strict=True))[PATHS["Deployment"].format(namespace=namespace)]


async def run_batch(api: Api, *, namespace: str, size: int, floor: bool, metrics_port: int,
                    cpu: Any, pprof: Path | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    cpu_floor = cpu()
    profiles: dict[str, list[Path]] = {}

    def profiling(phase: str) -> tuple[asyncio.Event, asyncio.Task[list[Path]] | None]:
        stop = asyncio.Event()
        if pprof is None:
            return stop, None
        return stop, asyncio.create_task(api.cpu_profiles(pprof, f"{namespace}-{phase}", stop))

    async def profiled(phase: str, stop: asyncio.Event, task: asyncio.Task[list[Path]] | None) -> None:
        stop.set()
        if task is not None:
            profiles[phase] = await task

    if floor:
        names = {f"d{i}-{part}" for i in range(size) for part in ("production", "gateway")}
        path = f"/apis/apps/v1/namespaces/{namespace}-floor/deployments"
        watcher = asyncio.create_task(api.watch_until(path, names, deployment_available, deadline))
        await asyncio.sleep(0.2)
        stop, sampler = profiling("floor")
        began = time.monotonic()
        created = await create_floor(api, f"{namespace}-floor", [f"d{i}" for i in range(size)])
        every_object_created = time.monotonic()
        ready = await watcher
        await profiled("floor", stop, sampler)
        # Done when every object exists and every Deployment is Available: the operator's
        # Ready waits for its Services too.
        floor_total = max(*ready.values(), every_object_created) - began
        cpu_floor = difference(cpu(), cpu_floor)
        floor_latencies = [ready[n] - created[n] for n in ready]
        # The floor's objects go before the operator's burst: the API server's ClusterIP
        # allocator lists every IPAddress of the cluster at each allocation, so the floor's
        # Services left in place would make the operator's dearer than the floor's were.
        cleared = await api.delete_namespace(f"{namespace}-floor", deadline)
        await asyncio.sleep(2)
        ideal = await run_ideal(api, namespace=f"{namespace}-ideal", size=size, cpu=cpu, pprof=pprof)
        if ideal["profiles"]:
            profiles["ideal operator"] = ideal["profiles"]
        await api.delete_namespace(f"{namespace}-ideal", time.monotonic() + 600)
        await asyncio.sleep(2)
        deadline = time.monotonic() + 600
    names = {f"md-{i}" for i in range(size)}
    path = f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments"
    watcher = asyncio.create_task(api.watch_until(path, names, md_ready, deadline))
    applied: dict[str, float] = {}
    available = asyncio.create_task(api.watch_until(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {f"{n}-{part}" for n in names for part in ("production", "gateway")}, deployment_available, deadline,
        first_seen=applied,
    ))
    await asyncio.sleep(0.2)
    requests_before, passes_before = operator_request_counts(metrics_port), operator_passes(metrics_port)
    failures_before = operator_failures(metrics_port)
    seconds_before = operator_request_seconds(metrics_port)
    cpu_operator = cpu()
    stop, sampler = profiling("operator")
    began = time.monotonic()
    created = await _create_all(api, path, [model_deployment(n) for n in sorted(names)])
    ready = await watcher
    rolled_out = await available
    cpu_operator = difference(cpu(), cpu_operator)
    await profiled("operator", stop, sampler)
    await asyncio.sleep(1)  # the last status writes and Events
    requests = difference(operator_request_counts(metrics_port), requests_before)
    passes = operator_passes(metrics_port) - passes_before
    failures = operator_failures(metrics_port) - failures_before
    seconds = difference(operator_request_seconds(metrics_port), seconds_before)
    latency = {key[:-4]: seconds[key] / seconds[key[:-4] + " count"] for key in seconds
               if key.endswith(" sum") and seconds.get(key[:-4] + " count")}
    # From the moment both of a ModelDeployment's Deployments were Available to its Ready:
    # the operator's own lag at the end of a rollout.
    lags = sorted(ready[n] - max(rolled_out[f"{n}-production"], rolled_out[f"{n}-gateway"]) for n in names
                  if n in ready and f"{n}-production" in rolled_out and f"{n}-gateway" in rolled_out)
    latencies = sorted(ready[n] - created[n] for n in ready)
    reactions = sorted(applied[f"{n}-production"] - created[n] for n in names if f"{n}-production" in applied)
    result = {
        "size": size, "ready": len(ready), "total": max(ready.values()) - began if ready else float("nan"),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "reaction_p50": statistics.median(reactions) if reactions else float("nan"),
        "requests": requests,
        "passes": passes,
        "failures": failures,
        "latency": latency,
        "cpu": cpu_operator,
        "ready_lag_p50": statistics.median(lags) if lags else float("nan"),
        "profiles": profiles,
    }
    if floor:
        result["floor_total"] = floor_total
        result["floor_p50"] = statistics.median(floor_latencies)
        result["cpu_floor"] = cpu_floor
        result["cleared"] = cleared
        result["ideal"] = ideal
    return result


async def run_singles(api: Api, *, namespace: str, count: int) -> dict[str, float]:
    """ModelDeployments applied one at a time, each after the previous is Ready: the latency
    of one apply on a quiet cluster, next to the same children's created directly."""
    latencies, floor = [], []
    md_path = f"/apis/modelcycle.io/v1alpha1/namespaces/{namespace}/modeldeployments"
    bare_path = f"/apis/apps/v1/namespaces/{namespace}-floor/deployments"
    for index in range(count):
        deadline = time.monotonic() + 60
        names = {f"single-{index}-production", f"single-{index}-gateway"}
        watcher = asyncio.create_task(api.watch_until(bare_path, names, deployment_available, deadline))
        await asyncio.sleep(0.1)
        created = await create_floor(api, f"{namespace}-floor", [f"single-{index}"])
        every_object_created = time.monotonic()
        ready = await watcher
        floor.append(max(*ready.values(), every_object_created) - min(created.values()))
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


def cpu_seconds(run_dir: str, operator_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each process of the control plane (found by its run
    folder in the command line), by the operator and by the bench itself."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == operator_pid:
            name = "operator"
        elif int(proc.name) == os.getpid():
            name = "bench"  # its watches and, in the ideal operator's phase, its writes
        elif any(run_dir.encode() in arg for arg in argv):
            name = Path(argv[0].decode()).name
        else:
            continue
        found[name] = found.get(name, 0) + (int(fields[11]) + int(fields[12])) / ticks
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def operator_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def operator_request_counts(port: int) -> dict[str, float]:
    """'VERB resource' -> requests the operator sent (its own counter; kopf's watches excluded)."""
    counts: dict[str, float] = {}
    for match in re.finditer(r"^modelcycle_operator_api_requests_total\{([^}]*)\} (\S+)$", operator_metrics(port), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        key = f"{labels['verb']} {labels['resource']}"
        counts[key] = counts.get(key, 0) + float(match.group(2))
    return counts


def operator_request_seconds(port: int) -> dict[str, float]:
    """'VERB resource sum|count' -> the operator's request-time histogram's sum and count."""
    found: dict[str, float] = {}
    for match in re.finditer(r"^modelcycle_operator_api_request_seconds_(sum|count)\{([^}]*)\} (\S+)$",
                             operator_metrics(port), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        found[f"{labels['verb']} {labels['resource']} {match.group(1)}"] = float(match.group(3))
    return found


def operator_requests(port: int) -> float:
    return sum(operator_request_counts(port).values())


def operator_passes(port: int) -> int:
    found = re.search(r"^modelcycle_operator_reconcile_seconds_count (\S+)$", operator_metrics(port), re.M)
    return int(float(found.group(1))) if found else 0


def operator_failures(port: int) -> int:
    found = re.search(r"^modelcycle_operator_reconcile_failures_total (\S+)$", operator_metrics(port), re.M)
    return int(float(found.group(1))) if found else 0


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: round(value - before.get(key, 0), 1) for key, value in sorted(after.items())
            if value - before.get(key, 0)}


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


class OperatorRun:
    """`python -m modelcycle.operator` serving the whole cluster, optionally sampled by py-spy."""

    def __init__(self, cluster: Cluster, log: Path, *, py_spy: str | None, profile: Path | None) -> None:
        self.metrics_port = free_port()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelcycle.operator"], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **cluster.env, "MODELCYCLE_METRICS_PORT": str(self.metrics_port),
                     "MODELCYCLE_SELECTOR": f"!{IDEAL_LABEL}"},
                start_new_session=True,
            )
        self.started = time.monotonic()
        self.sampler = None
        if py_spy and profile:
            self.sampler = subprocess.Popen(
                [py_spy, "record", "--nonblocking", "-p", str(self.process.pid), "-r", "50", "--format", "raw",
                 "-o", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        for _ in range(150):
            try:
                operator_requests(self.metrics_port)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the operator serves no metrics; its log: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.sampler is not None:
            self.sampler.wait(timeout=30)


def ratio_line(label: str, value: float, floor: float) -> str:
    ratio = value / floor if floor else float("nan")
    verdict = "met" if ratio <= RATIO_TARGET else "NOT met"
    return f"{label}: {value:.1f} s = {ratio:.2f}x the floor's {floor:.1f} s (target <= {RATIO_TARGET:g}x: {verdict})"


def print_singles(singles: dict[str, float], *, count: int) -> None:
    margin = singles["p50"] - singles["floor_p50"]
    print(f"   1 ModelDeployment at a time ({count} in a row): apply->Ready p50 {singles['p50']:.2f} s "
          f"(target < {P50_TARGET:g} s); floor, its children created directly: p50 {singles['floor_p50']:.2f} s; "
          f"{margin:+.2f} s (target <= +{SINGLE_MARGIN:g} s: {'met' if margin <= SINGLE_MARGIN else 'NOT met'})",
          flush=True)


def print_batch(result: dict[str, Any]) -> None:
    size = result["size"]
    line = (f"{size:>4} ModelDeployments at once: {result['ready']}/{size} Ready; apply->Ready p50 "
            f"{result['p50']:.2f} s, p95 {result['p95']:.2f} s; all Ready in {result['total']:.1f} s")
    if size == TOTAL_TARGET_SIZE:
        line += f" (target < {TOTAL_TARGET:g} s)"
    print(line, flush=True)
    if "floor_total" in result:
        print(f"     floor, the same {5 * size} objects created directly: create->Available p50 "
              f"{result['floor_p50']:.2f} s (then deleted, in {result['cleared']:.0f} s, before the operator's burst)",
              flush=True)
        ideal = result["ideal"]
        print(f"     ideal operator (the bench's plain POSTs of the same objects, the ModelDeployments, their "
              f"Secrets and Events, one status write each): {ideal['ready']}/{size} Ready in {ideal['total']:.1f} s = "
              f"{ideal['total'] / result['floor_total']:.2f}x the floor: what the ModelDeployment objects "
              f"themselves cost", flush=True)
        print(f"     CPU seconds, ideal operator: {ideal['cpu']}", flush=True)
        print("     " + ratio_line("all Ready", result["total"], result["floor_total"])
              + f"; {result['total'] / ideal['total']:.2f}x the ideal operator's", flush=True)
    else:
        print(f"     all Ready in {result['total']:.1f} s (no floor measured)", flush=True)
    reaction = f"     the operator's reaction, apply->children created: p50 {result['reaction_p50']:.2f} s"
    if size == REACTION_TARGET_SIZE:
        reaction += (f" (target <= {REACTION_TARGET:g} s: "
                     f"{'met' if result['reaction_p50'] <= REACTION_TARGET else 'NOT met'})")
    print(reaction, flush=True)
    print(f"     from both Deployments Available to Ready: p50 {result['ready_lag_p50']:.2f} s; "
          f"{result['passes']} reconcile passes, {result['failures']} of them failed (and retried)", flush=True)
    print("     the operator's requests, mean seconds from call to answer: "
          + ", ".join(f"{key} {value:.2f}" for key, value in sorted(result["latency"].items())), flush=True)
    if "cpu_floor" in result:
        print(f"     CPU seconds, floor: {result['cpu_floor']}", flush=True)
    print(f"     CPU seconds, operator until every Deployment is Available: {result['cpu']}", flush=True)
    requests = result["requests"]
    print(f"     the operator sent {int(sum(requests.values()))} requests, "
          f"{sum(requests.values()) / size:.1f} per ModelDeployment: {requests}", flush=True)
    for phase, slices in result["profiles"].items():
        print(f"     the API server's CPU profile, {phase}: go tool pprof -top {' '.join(map(str, slices))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-Deployment floor")
    parser.add_argument("--singles", type=int, default=10, help="ModelDeployments applied one at a time first")
    parser.add_argument("--default-qps", action="store_true", help="controllers at client-go's default 20 requests/s")
    parser.add_argument("--restart", action="store_true",
                        help="then restart the operator over everything created and measure its convergence")
    parser.add_argument("--py-spy", metavar="BINARY", help="a py-spy executable, to sample the operator")
    parser.add_argument("--profile", metavar="FILE", type=Path, help="where py-spy writes the collapsed stacks")
    parser.add_argument("--apiserver-pprof", metavar="DIR", type=Path,
                        help="write the API server's CPU profile of each burst (floor and operator apart) here")
    args = parser.parse_args()
    if bool(args.py_spy) != bool(args.profile):
        parser.error("--py-spy and --profile go together")
    if args.apiserver_pprof:
        args.apiserver_pprof.mkdir(parents=True, exist_ok=True)
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
        for _ in range(60):  # kubectl wait fails instead of waiting while the CRD has no conditions yet
            if cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                               "crd/modeldeployments.modelcycle.io", check=False).returncode == 0:
                break
            time.sleep(0.5)
        for size in args.sizes:
            for suffix in ("", "-floor", "-ideal"):
                cluster.kubectl("create", "namespace", f"bench-{size}{suffix}")
                cluster.kubectl("wait", "--for=create", "--timeout=30s", "-n", f"bench-{size}{suffix}",
                                "serviceaccount/default")
        log = Path(tmp) / "operator.log"
        operator = OperatorRun(cluster, log, py_spy=args.py_spy, profile=args.profile)
        try:
            qps = "client-go default QPS" if args.default_qps else " ".join(CONTROLLER_QPS)
            print(f"operator bench on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the start), "
                  f"kwok nodes, controllers at {qps}; floor: the same Deployments created directly, without the "
                  "operator, right before each burst", flush=True)

            async def batches() -> None:
                async with Api(cluster.kubeconfig) as api:
                    print_singles(await run_singles(api, namespace=f"bench-{args.sizes[0]}", count=args.singles),
                                  count=args.singles)
                    for size in args.sizes:
                        print_batch(await run_batch(
                            api, namespace=f"bench-{size}", size=size, floor=args.floor,
                            metrics_port=operator.metrics_port, pprof=args.apiserver_pprof,
                            cpu=lambda: cpu_seconds(str(cluster.kubeconfig.parent), operator.process.pid)))

            asyncio.run(batches())
            total = sum(args.sizes) + args.singles
            print(f"operator RSS with {total} ModelDeployments: {rss_mb(operator.process.pid):.0f} MB")

            time.sleep(5)  # let the last status writes and Events settle
            own_before, server_before = operator_requests(operator.metrics_port), apiserver_requests(cluster)
            time.sleep(args.idle)
            own_after, server_after = operator_requests(operator.metrics_port), apiserver_requests(cluster)
            delta = {k: server_after.get(k, 0) - server_before.get(k, 0) for k in server_after}
            busy = {k: int(v) for k, v in delta.items() if v}
            print(f"idle {args.idle:g} s: the operator sent {own_after - own_before:.0f} requests (target about 0); "
                  f"the API server counted {int(sum(delta.values()))} on {', '.join(RESOURCES)}"
                  + (f": {busy}" if busy else ""), flush=True)

            if args.restart:
                operator.stop()
                server_before = apiserver_requests(cluster)
                operator = OperatorRun(cluster, log, py_spy=None, profile=None)
                deadline = time.monotonic() + 300
                while operator_passes(operator.metrics_port) < total and time.monotonic() < deadline:
                    time.sleep(0.1)
                converged = time.monotonic() - operator.started
                passes = operator_passes(operator.metrics_port)
                time.sleep(5)  # anything the first passes would still send
                own = operator_request_counts(operator.metrics_port)
                writes = {k: v for k, v in difference(apiserver_requests(cluster), server_before).items()
                          if not k.startswith(("LIST", "WATCH", "GET"))}
                print(f"restart over {total} ModelDeployments and their {5 * total} children: {passes} first passes "
                      f"done {converged:.1f} s after the process started (kopf's listing included); the operator sent "
                      f"{int(sum(own.values()))} requests {own or ''} (target 0: every child and status is as "
                      f"wanted already); writes the API server counted meanwhile, the controllers' included: "
                      f"{writes or 0}", flush=True)
        finally:
            operator.stop()
            if args.profile:
                print(f"py-spy's collapsed stacks of the operator: {args.profile}")


if __name__ == "__main__":
    main()
