"""Editing spec.promotion changes the gateway's thresholds without restarting it: the
thresholds are a file of a ConfigMap mounted as a directory, not arguments hashed into the
pod template, so the gateway pod (Recreate, its prediction log on an emptyDir) stays and
the evidence gathered so far is kept.

kwok runs no kubelet, so the test does the kubelet's part: it keeps a directory in the
layout of the kubelet's atomic writer (``..data`` a symlink to a timestamped folder, the
key a symlink through it) filled from the ConfigMap, and swaps in a new folder when the
ConfigMap changes. A real gateway process reads its ``--policy-file`` from there, and the
operator reads that gateway's comparison (the `modelcycle.io/gateway-url` annotation).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from modeldeployments import (
    POLICY,
    GatewayProcess,
    ModelDeployments,
    ModelServer,
    OperatorProcess,
    ServerThread,
    wait_for,
)

from modelcycle.operator.resources import POLICY_DIR, POLICY_KEY

pytestmark = pytest.mark.cluster

SHADOW = {"version": 4, "image": "fraud:4-def", "mirrorPercent": 100}


def project_config_map(data: dict[str, str], folder: Path, key: str) -> None:
    """Write `data[key]` into `folder` the way the kubelet updates a ConfigMap volume: a new
    timestamped folder, then an atomic rename of the ``..data`` symlink onto it."""
    stamp = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir(parents=True)
    (stamp / key).write_text(data[key])
    staged = folder / "..data_tmp"
    staged.symlink_to(stamp.name)
    staged.replace(folder / "..data")
    if not (folder / key).is_symlink():
        (folder / key).symlink_to(f"..data/{key}")


def _config_map(mds: ModelDeployments) -> dict[str, Any]:
    found = mds.children("configmaps", "fraud")
    return found[0] if found else {}


def _gateway_deployment(mds: ModelDeployments) -> dict[str, Any]:
    (deployment,) = [d for d in mds.children("deployments", "fraud") if d["metadata"]["name"] == "fraud-gateway"]
    return deployment


def _verdict_message(mds: ModelDeployments) -> str:
    return mds.condition("fraud", "ShadowVerdict").get("message", "")


def test_editing_the_promotion_policy_keeps_the_gateway_pod_and_its_log(
    mds: ModelDeployments, operator: OperatorProcess, servers: ServerThread, tmp_path: Path
) -> None:
    volume = tmp_path / "policy-volume"
    gateway = None
    try:
        mds.apply("fraud", {"model": "fraud", "production": {"version": 3, "image": "fraud:3-abc"},
                            "shadow": dict(SHADOW), "promotion": {"mode": "manual", **POLICY}})
        config = wait_for(lambda: POLICY_KEY in _config_map(mds).get("data", {}) and _config_map(mds), timeout=30,
                          what=f"{POLICY_KEY} in the gateway ConfigMap; operator log:\n{operator.tail()}")
        assert json.loads(config["data"][POLICY_KEY])["min_requests"] == POLICY["minRequests"]

        # The pod template mounts the ConfigMap as a directory: no subPath, which the kubelet never updates.
        before = _gateway_deployment(mds)
        pod = before["spec"]["template"]["spec"]
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == POLICY_DIR]
        assert "subPath" not in mount
        (volume_spec,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume_spec["configMap"]["name"] == "fraud-gateway"
        args = pod["containers"][0]["args"]
        assert f"--policy-file={POLICY_DIR}/{POLICY_KEY}" in args
        assert not any(arg.startswith(("--min-", "--max-")) for arg in args)
        # Retention keeps the log well inside its volume, whose limit would evict the pod.
        (log_volume,) = [v for v in pod["volumes"] if v["name"] == "predictions"]
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", log_volume["emptyDir"]["sizeLimit"]).groups()
        limit = int(number) << {"Mi": 20, "Gi": 30}[unit]
        retain = int(next(arg.split("=")[1] for arg in args if arg.startswith("--retain-bytes=")))
        assert retain <= limit // 2

        project_config_map(config["data"], volume, POLICY_KEY)
        production = servers.serve(ModelServer(version="3"))
        shadow = servers.serve(ModelServer(version="4"))
        gateway = GatewayProcess(production, shadow, tmp_path / "predictions", tmp_path / "gateway.log",
                                 extra_args=("--policy-file", str(volume / POLICY_KEY)))
        mds.patch("fraud", {"metadata": {"annotations": {"modelcycle.io/gateway-url": gateway.url}}})
        gateway.send(50)
        wait_for(lambda: "waiting for approval" in _verdict_message(mds), timeout=30,
                 what=f"verdict promote under minRequests 40; operator log:\n{operator.tail()}")

        # Ask for more evidence than the 50 requests logged so far.
        mds.patch("fraud", {"spec": {"promotion": {"minRequests": 60}}})
        config = wait_for(
            lambda: json.loads(_config_map(mds)["data"][POLICY_KEY])["min_requests"] == 60 and _config_map(mds),
            timeout=30, what="the new threshold in the ConfigMap")
        # Until the file reaches the gateway, the operator does not act on the old thresholds.
        wait_for(lambda: "uses other thresholds" in _verdict_message(mds), timeout=30,
                 what="the operator to notice the gateway still has the old thresholds")

        after = _gateway_deployment(mds)
        assert after["spec"]["template"] == before["spec"]["template"], "the gateway pod would be replaced"
        assert after["metadata"]["generation"] == before["metadata"]["generation"]

        project_config_map(config["data"], volume, POLICY_KEY)
        comparison = wait_for(lambda: (c := gateway.comparison())["policy"]["min_requests"] == 60 and c, timeout=30,
                              what="the gateway to read the new policy file")
        assert comparison["compared_requests"] == 50, "the prediction log was kept"
        assert comparison["verdict"] == "hold"
        message = wait_for(lambda: "verdict hold" in (m := _verdict_message(mds)) and m, timeout=30,
                           what=f"the operator to accept the new comparison; operator log:\n{operator.tail()}")
        assert "50 of the 60 compared requests" in message
        assert gateway.process.poll() is None
    finally:
        if gateway is not None:
            gateway.stop()


def test_a_routing_change_still_rolls_the_gateway(mds: ModelDeployments, operator: OperatorProcess) -> None:
    """The mirror and the upstreams are process arguments: they need a new gateway pod, and
    a new pod starts a new log, so a comparison never mixes two shadows."""
    mds.apply("fraud", {"model": "fraud", "production": {"version": 3, "image": "fraud:3-abc"},
                        "shadow": dict(SHADOW)})
    mds.wait_condition("fraud", "Ready", timeout=30)
    before = _gateway_deployment(mds)["spec"]["template"]
    mds.patch("fraud", {"spec": {"shadow": {"mirrorPercent": 10}}})
    wait_for(lambda: _gateway_deployment(mds)["spec"]["template"] != before, timeout=30,
             what="a new gateway pod template for the new mirror share")
