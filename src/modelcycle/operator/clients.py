"""Requests from the operator to the API server, over aiohttp with kopf's credentials.

kopf watches; the writes are ours: server-side apply of children, merge patches of a
ModelDeployment's status and spec, deletion of a removed shadow. They go through one
aiohttp session because kopf runs on asyncio: the official `kubernetes` client is
synchronous, so each of its calls would hold a thread, and hundreds of ModelDeployments
reconciled at once would queue behind a small thread pool. The credentials come from
kopf's own login functions (`kopf.login_with_service_account`, then
`kopf.login_with_kubeconfig`), so the operator and kopf authenticate the same way; a 401
logs in again once (a service-account token is rotated on disk).

Every request is counted by verb, resource and status code in
`modelcycle_operator_api_requests_total`, which is how the bench tells how many requests
an idle operator makes, and timed in `modelcycle_operator_api_request_seconds`, from the
call to the answer (a wait for a free connection included).

Requests go over two pools of connections: the children's applies over 64, and the few
that must not wait behind a burst of them (a ModelDeployment's status and spec, Events,
the Lease's renewals) over 8 of their own. Under a burst of 500 the applies fill the 64 for
a minute; a Ready status or a renewal queued behind them would come late.

With leader election (`leadership`), the client is fenced: a write other than the Lease's
own raises `NotLeader` while this replica does not hold the Lease, so a replica that lost
it mid-pass cannot write behind the new leader's back.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import kopf
from prometheus_client import Counter, Histogram

from modelcycle.operator.settings import FIELD_MANAGER, GROUP, PLURAL, VERSION

API_REQUESTS = Counter(
    "modelcycle_operator_api_requests",
    "Requests the operator sent to the API server (watches excluded: kopf makes those).",
    ["verb", "resource", "code"],
)

API_SECONDS = Histogram(
    "modelcycle_operator_api_request_seconds",
    "Seconds from a request's call to its answer, a wait for a free connection included.",
    ["verb", "resource"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

REQUEST_TIMEOUT_S = 30.0
"""Seconds the API server has to answer a sent request (not counting the wait for a connection)."""

PROMPT = frozenset({"modeldeployments", "modeldeployments/status", "events", "leases"})
"""Resources whose requests use the small pool of their own."""

_KINDS = {
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("batch/v1", "CronJob"): "/apis/batch/v1/namespaces/{namespace}/cronjobs",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{namespace}/jobs",
    ("v1", "Secret"): "/api/v1/namespaces/{namespace}/secrets",
}


class NotLeader(RuntimeError):
    """A write was refused locally: this replica does not hold the Lease (`leadership`)."""


class ApiError(RuntimeError):
    """The API server answered with an error status; `status` is the HTTP code."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def _login() -> kopf.ConnectionInfo:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig ($KUBECONFIG or ~/.kube/config)")
    return info


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=_pem(info.ca_data) if info.ca_data else None,
    )
    if info.certificate_path or info.certificate_data:
        with tempfile.TemporaryDirectory() as folder:
            cert = _as_file(info.certificate_path, info.certificate_data, f"{folder}/cert")
            key = _as_file(info.private_key_path, info.private_key_data, f"{folder}/key")
            context.load_cert_chain(cert, key)
    return context


def _as_file(path: Any, data: str | bytes | None, spare: str) -> str:
    """A client certificate or key as a file: its own path, or `spare` holding its data."""
    if path:
        return str(path)
    with open(spare, "w") as out:
        out.write(_pem(data or ""))
    return spare


def _pem(data: str | bytes) -> str:
    """kubeconfig `*-data` fields are base64 of PEM; accept PEM as is too."""
    text = data.decode() if isinstance(data, bytes) else data
    return text if text.lstrip().startswith("-----") else base64.b64decode(text).decode()


class KubeClient:
    """The few API calls the operator makes. Use inside a running event loop."""

    def __init__(self, *, may_write: Callable[[], bool] | None = None) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        """The pools of connections: True for `PROMPT` resources, False for the children."""
        self.may_write = may_write
        """None, or whether writes are allowed now (the fence of `leadership`)."""

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def _open(self, *, prompt: bool = False) -> aiohttp.ClientSession:
        if prompt not in self._sessions:
            if not self._sessions:
                self._info = _login()
            assert self._info is not None
            headers = {"User-Agent": "modelcycle-operator", "Accept": "application/json"}
            if self._info.token:
                headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
            elif self._info.username:
                basic = base64.b64encode(f"{self._info.username}:{self._info.password}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            # The 30 s are the API server's to answer in, from when the request is sent: the
            # wait for a free connection of the pool is the operator's own queue (under a
            # burst, thousands of writes wait there in order), and a timeout that counted it
            # failed passes whose requests were merely queued, and sent them all again.
            self._sessions[prompt] = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=8 if prompt else 64),
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=REQUEST_TIMEOUT_S),
            )
        return self._sessions[prompt]

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        """One request; the decoded answer, or None for a 404 when `missing_ok`."""
        if method != "GET" and resource != "leases" and self.may_write is not None and not self.may_write():
            raise NotLeader(f"{method} {path}: refused, this replica does not hold the Lease")
        for attempt in (1, 2):
            session = self._open(prompt=resource in PROMPT)
            assert self._info is not None
            url = self._info.server.rstrip("/") + path
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if data is not None else {}
            with API_SECONDS.labels(method, resource).time():
                try:
                    async with session.request(method, url, params=params, data=data, headers=headers) as answer:
                        text = await answer.text()
                except TimeoutError:
                    raise TimeoutError(f"{method} {path}: no answer from the API server within "
                                       f"{REQUEST_TIMEOUT_S:g} s") from None
            API_REQUESTS.labels(method, resource, str(answer.status)).inc()
            if answer.status == 401 and attempt == 1:
                await self.close()
                continue
            if answer.status == 404 and missing_ok:
                return None
            if answer.status >= 400:
                raise ApiError(answer.status, method, path, text)
            return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a child, forcing ownership of the fields the operator sets."""
        meta = manifest["metadata"]
        base = _KINDS[(manifest["apiVersion"], manifest["kind"])].format(namespace=meta["namespace"])
        result = await self.request(
            "PATCH", f"{base}/{meta['name']}", resource=manifest["kind"].lower() + "s",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=manifest, content_type="application/apply-patch+yaml",
        )
        assert result is not None
        return result

    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object unless one of that name exists; whether it was created. For what
        is made once and never read back (a Secret: the operator may create Secrets, not
        read them)."""
        meta = manifest["metadata"]
        base = _KINDS[(manifest["apiVersion"], manifest["kind"])].format(namespace=meta["namespace"])
        try:
            await self.request("POST", base, resource=manifest["kind"].lower() + "s",
                               params={"fieldManager": FIELD_MANAGER}, body=manifest)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete a child; one already gone is fine."""
        base = _KINDS[(api_version, kind)].format(namespace=namespace)
        await self.request(
            "DELETE", f"{base}/{name}", resource=kind.lower() + "s",
            body={"propagationPolicy": "Background"}, missing_ok=True,
        )

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
        """Replace the fields of `status` (merge patch); None if the object is gone."""
        return await self.request(
            "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            resource=f"{PLURAL}/status", body={"status": status},
            content_type="application/merge-patch+json", missing_ok=True,
        )

    async def patch_md(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any] | None:
        """A merge patch of a ModelDeployment (a promotion or rollback); None if it is gone.
        A resourceVersion in the patch makes it fail with 409 if the object changed."""
        return await self.request(
            "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}",
            resource=PLURAL, params={"fieldManager": FIELD_MANAGER}, body=patch,
            content_type="application/merge-patch+json", missing_ok=True,
        )

    async def post_event(
        self, md: Mapping[str, Any], *, name: str, type_: str, reason: str, message: str,
        component: str, instance: str,
    ) -> bool:
        """Post an Event about a ModelDeployment under a fixed name; False if an Event of that
        name exists already (posted before a crash, or by another replica): once per name."""
        meta = md["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024], "count": 1,
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": instance,
            "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z",
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", resource="events", body=body)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    # -- the Lease of leader election ------------------------------------------------------

    def _lease_path(self, namespace: str, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return base if name is None else f"{base}/{name}"

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a Lease; None if one of that name exists already."""
        try:
            return await self.request("POST", self._lease_path(namespace), resource="leases", body=lease)
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    async def replace_lease(self, namespace: str, lease: Mapping[str, Any]) -> dict[str, Any] | None:
        """Replace a Lease, with its resourceVersion as a precondition; None on a conflict
        (someone else wrote it since it was read)."""
        try:
            return await self.request("PUT", self._lease_path(namespace, lease["metadata"]["name"]),
                                      resource="leases", body=lease)
        except ApiError as error:
            if error.status == 409:
                return None
            raise

    async def watch_lease(self, namespace: str, name: str) -> AsyncIterator[dict[str, Any] | None]:
        """The Lease now, then each change (None while it does not exist); runs until cancelled.
        One watch request, restarted where it stopped when the server ends it."""
        selector = {"fieldSelector": f"metadata.name={name}"}
        while True:
            listed = await self.request("GET", self._lease_path(namespace), resource="leases", params=selector)
            assert listed is not None
            items = listed.get("items") or []
            yield items[0] if items else None
            version = listed["metadata"]["resourceVersion"]
            while version is not None:
                params = {**selector, "watch": "true", "allowWatchBookmarks": "true", "resourceVersion": version,
                          "timeoutSeconds": "300"}
                session = self._open(prompt=True)
                assert self._info is not None
                url = self._info.server.rstrip("/") + self._lease_path(namespace)
                async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=330)) as answer:
                    API_REQUESTS.labels("WATCH", "leases", str(answer.status)).inc()
                    if answer.status != 200:
                        version = None  # relist
                        break
                    async for line in answer.content:
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            version = None  # 410 Gone: the version is too old; relist
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] in ("ADDED", "MODIFIED"):
                            yield obj
                        elif event["type"] == "DELETED":
                            yield None
