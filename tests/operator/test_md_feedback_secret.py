"""Every gateway gets a feedback token of its own: the operator creates `<name>-feedback`, a
Secret owned by the ModelDeployment with a random token, once, and mounts it into the
gateway, which then refuses /feedback without it. The token is never in the
ModelDeployment, its status or its Events, and the operator never reads it back."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from modeldeployments import (
    GatewayProcess,
    ModelDeployments,
    ModelServer,
    OperatorProcess,
    ServerThread,
    base_spec,
    wait_for,
)

from modelcycle.operator.resources import FEEDBACK_DIR, FEEDBACK_TOKEN_KEY

pytestmark = pytest.mark.cluster


def _secret(mds: ModelDeployments) -> dict[str, Any] | None:
    found = mds.cluster.kubectl("get", "secret", "fraud-feedback", "-n", mds.namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _token(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"][FEEDBACK_TOKEN_KEY]).decode()


def _feedback(url: str, request_id: str, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"request_id": request_id, "label": 1}).encode()
    request = urllib.request.Request(f"{url}/feedback", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_operator_creates_mounts_and_keeps_a_feedback_secret(
    mds: ModelDeployments, operator: OperatorProcess, control_plane, namespace: str, tmp_path: Path
) -> None:
    mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def"}))
    mds.wait_condition("fraud", "Ready", timeout=30)
    secret = wait_for(lambda: _secret(mds), timeout=30, what="the fraud-feedback Secret")
    md = mds.get("fraud")
    owner, = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelDeployment", "fraud", md["metadata"]["uid"], True)
    assert secret["metadata"]["labels"]["modelcycle.io/deployment"] == "fraud"
    token = _token(secret)
    assert len(token) >= 32

    # Mounted as a directory into the gateway, which is told to read it.
    (gateway,) = [d for d in mds.children("deployments", "fraud") if d["metadata"]["name"] == "fraud-gateway"]
    pod = gateway["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == FEEDBACK_DIR]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "fraud-feedback" and mount.get("readOnly") is True
    assert f"--feedback-token-file={FEEDBACK_DIR}/{FEEDBACK_TOKEN_KEY}" in pod["containers"][0]["args"]

    # The token is nowhere in the ModelDeployment (spec, annotations, status, managed fields),
    # its Events, its other children or the operator's log.
    shown = mds.cluster.kubectl("get", "md", "fraud", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    assert token not in shown and secret["data"][FEEDBACK_TOKEN_KEY] not in shown
    assert all(token not in json.dumps(event) for event in mds.events("fraud"))
    for kind in ("deployments", "configmaps", "services"):
        assert token not in json.dumps(mds.children(kind, "fraud")), kind
    assert token not in operator.log.read_text()

    # Created once: a restarted operator and a changed spec leave the token as it was.
    operator.stop()
    restarted = OperatorProcess(control_plane, namespace, tmp_path / "operator-again.log").start()
    try:
        mds.patch("fraud", {"spec": {"shadow": {"mirrorPercent": 50}}})
        wait_for(lambda: "50" == mds.children("configmaps", "fraud")[0]["data"]["MIRROR_PERCENT"], timeout=30,
                 what=f"the restarted operator to reconcile; its log:\n{restarted.tail()}")
        assert _token(_secret(mds)) == token
    finally:
        restarted.stop()

    # Owned by the ModelDeployment: collected with it. The garbage collector learns of a CRD
    # installed after it started at its next discovery (every 30 s), hence the wait.
    mds.cluster.kubectl("delete", "md", "fraud", "-n", namespace, "--wait=true", "--timeout=30s")
    wait_for(lambda: _secret(mds) is None, timeout=90, interval=1, what="the garbage collector to delete the Secret")


def test_a_gateway_with_the_secrets_token_refuses_feedback_without_it(
    mds: ModelDeployments, operator: OperatorProcess, servers: ServerThread, tmp_path: Path
) -> None:
    """The Secret's value, in a file as the kubelet would mount it, is what a real gateway
    process then requires on /feedback."""
    mds.apply("fraud", base_spec())
    token = _token(wait_for(lambda: _secret(mds), timeout=30, what="the fraud-feedback Secret"))
    mounted = tmp_path / "feedback" / FEEDBACK_TOKEN_KEY
    mounted.parent.mkdir()
    mounted.write_text(token)
    gateway = GatewayProcess(servers.serve(ModelServer(version="3")), servers.serve(ModelServer(version="4")),
                             tmp_path / "predictions", tmp_path / "gateway.log",
                             extra_args=("--feedback-token-file", str(mounted)))
    try:
        gateway.send(1)
        assert _feedback(gateway.url, "any-request", None) == 401
        assert _feedback(gateway.url, "any-request", "not-the-token") == 401
        assert _feedback(gateway.url, "any-request", token) == 202
    finally:
        gateway.stop()
