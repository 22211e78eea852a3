"""The `modelcycle.io/gateway-url` annotation is an operator setting, off by default: an
author of a ModelDeployment must not be able to make the operator fetch any URL and copy
what it answers into status (server-side request forgery)."""

from __future__ import annotations

import http.server
import threading

import pytest
from modeldeployments import ModelDeployments, OperatorProcess, base_spec, wait_for

pytestmark = pytest.mark.cluster

SECRET = "internal-metadata-token-4f1c"
SHADOW = {"version": 4, "image": "fraud:4-def", "mirrorPercent": 100}


class _Internal(http.server.BaseHTTPRequestHandler):
    """Stands for something only the operator's network reaches, answering a secret."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Internal.hits.append(self.path)
        body = f"<html>{SECRET}</html>".encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def internal_url():
    _Internal.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _shadow_message(mds: ModelDeployments) -> str:
    return next((c["message"] for c in mds.get("fraud").get("status", {}).get("conditions", [])
                 if c["type"] == "ShadowVerdict"), "")


def test_off_by_default_the_annotation_is_ignored(control_plane, crd, namespace, tmp_path, internal_url) -> None:
    operator = OperatorProcess(control_plane, namespace, tmp_path / "operator.log",
                               env={"MODELCYCLE_GATEWAY_URL_ANNOTATION": ""}).start()
    try:
        mds = ModelDeployments(control_plane, namespace)
        mds.apply("fraud", base_spec(shadow=dict(SHADOW)), annotations={"modelcycle.io/gateway-url": internal_url})
        message = wait_for(lambda: (m := _shadow_message(mds)) and "ignored" in m and m, timeout=30,
                           what=f"the ShadowVerdict message; operator log:\n{operator.tail()}")
        assert "MODELCYCLE_GATEWAY_URL_ANNOTATION off" in message
        assert f"fraud-gateway.{namespace}.svc" in message  # it reads only the Service it made
        assert _Internal.hits == []
    finally:
        operator.stop()


def test_when_allowed_the_answer_body_never_reaches_status(mds: ModelDeployments, operator: OperatorProcess,
                                                           internal_url) -> None:
    mds.apply("fraud", base_spec(shadow=dict(SHADOW)), annotations={"modelcycle.io/gateway-url": internal_url})
    message = wait_for(lambda: (m := _shadow_message(mds)) and "HTTP 500" in m and m, timeout=30,
                       what=f"the ShadowVerdict message; operator log:\n{operator.tail()}")
    assert _Internal.hits
    assert SECRET not in message
    assert SECRET not in str(mds.get("fraud"))
    assert all(SECRET not in event.get("message", "") for event in mds.events("fraud"))
