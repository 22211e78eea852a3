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
an idle operator makes.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from prometheus_client import Counter

from modelcycle.operator.settings import FIELD_MANAGER, GROUP, PLURAL, VERSION

API_REQUESTS = Counter(
    "modelcycle_operator_api_requests",
    "Requests the operator sent to the API server (watches excluded: kopf makes those).",
    ["verb", "resource", "code"],
)

_KINDS = {
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
    ("batch/v1", "CronJob"): "/apis/batch/v1/namespaces/{namespace}/cronjobs",
}


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

    def __init__(self) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._info = _login()
            headers = {"User-Agent": "modelcycle-operator", "Accept": "application/json"}
            if self._info.token:
                headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
            elif self._info.username:
                basic = base64.b64encode(f"{self._info.username}:{self._info.password}".encode()).decode()
                headers["Authorization"] = f"Basic {basic}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=64),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

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
        for attempt in (1, 2):
            session = self._open()
            assert self._info is not None
            url = self._info.server.rstrip("/") + path
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if data is not None else {}
            async with session.request(method, url, params=params, data=data, headers=headers) as answer:
                text = await answer.text()
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
