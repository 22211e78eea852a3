"""Promotion and rollback decided by a real gateway's shadow comparison.

The gateway is a real local process in front of two tiny real model servers whose
predictions the test chooses, so the agreement is known: a shadow that predicts like
production is promoted, one that predicts the opposite class is rejected. The
ModelDeployment points the operator at the gateway with `modelcycle.io/gateway-url`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from modeldeployments import POLICY, ModelDeployments, OperatorProcess, base_spec, wait_for

pytestmark = pytest.mark.cluster

CONSOLE_SCRIPT = Path(sys.executable).parent / "modelcycle"

SHADOW = {"version": 4, "image": "fraud:4-def", "mirrorPercent": 100}


def spec(mode: str) -> dict:
    return base_spec(shadow=dict(SHADOW), promotion={"mode": mode, "minDuration": "1s", **POLICY})


def test_auto_mode_promotes_a_shadow_that_agrees(
    mds: ModelDeployments, operator: OperatorProcess, gateway_for
) -> None:
    gateway = gateway_for()
    mds.apply("fraud", spec("auto"), annotations={"modelcycle.io/gateway-url": gateway.url})
    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    gateway.send(60)

    wait_for(lambda: mds.get("fraud")["spec"]["production"]["version"] == 4, timeout=30,
             what=f"the promotion; operator log:\n{operator.tail()}")
    md = mds.get("fraud")
    assert "shadow" not in md["spec"]
    assert md["spec"]["production"]["image"] == "fraud:4-def"
    record = json.loads(md["metadata"]["annotations"]["modelcycle.io/last-promotion"])
    assert (record["from"], record["to"], record["fromImage"]) == ("3", "4", "fraud:3-abc")

    verdict = mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promoted", timeout=20)
    assert "version 4 promoted" in verdict["message"]
    mds.wait_condition("fraud", "Ready", timeout=30)
    md = mds.get("fraud")
    assert md["status"]["production"]["version"] == "4"
    assert md["status"]["lastPromotion"]["id"] == record["id"]
    assert md["status"]["comparison"]["verdict"] == "promote"
    assert md["status"]["comparison"]["agreement"] == 1.0
    deployments = {d["metadata"]["name"]: d for d in mds.children("deployments", "fraud")}
    assert set(deployments) == {"fraud-production", "fraud-gateway"}
    assert deployments["fraud-production"]["spec"]["template"]["spec"]["containers"][0]["image"] == "fraud:4-def"
    promoted = [e for e in mds.events("fraud") if e["reason"] == "Promoted"]
    assert len(promoted) == 1 and "3 -> 4" in promoted[0]["message"]

    # `modelcycle md rollback` puts back the version the promotion replaced.
    done = md_cli(mds, "rollback", "fraud", "--reason", "test rollback")
    assert "goes back to version 3" in done
    wait_for(lambda: mds.get("fraud")["status"].get("lastRollback", {}).get("reason") == "test rollback",
             what="the rollback in status")
    mds.wait_condition("fraud", "Ready", timeout=30)
    md = mds.get("fraud")
    assert (md["spec"]["production"], md["status"]["production"]["version"]) == (
        {"version": 3, "image": "fraud:3-abc", "replicas": 1}, "3")
    assert "lastRollback: 4 -> 3" in md_cli(mds, "status", "fraud")


def md_cli(mds: ModelDeployments, *args: str) -> str:
    """`modelcycle md ...` as a reader runs it: the console script, with only HOME, a plain
    PATH and the cluster's KUBECONFIG."""
    env = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", **mds.cluster.env}
    result = subprocess.run([str(CONSOLE_SCRIPT), "md", *args, "-n", mds.namespace], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_manual_mode_waits_for_approval(mds: ModelDeployments, operator: OperatorProcess, gateway_for) -> None:
    gateway = gateway_for()
    mds.apply("fraud", spec("manual"), annotations={"modelcycle.io/gateway-url": gateway.url})
    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    gateway.send(60)

    verdict = mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promote", timeout=30)
    assert "waiting for approval" in verdict["message"]
    assert mds.get("fraud")["spec"]["production"]["version"] == 3

    # `modelcycle md promote` sets spec.shadow.approved, as `kubectl patch` could.
    assert "approved shadow version 4" in md_cli(mds, "promote", "fraud")
    wait_for(lambda: mds.get("fraud")["spec"]["production"]["version"] == 4, timeout=20, what="the promotion")
    verdict = mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promoted", timeout=20)
    assert "approved" in verdict["message"]


def test_a_failing_verdict_removes_the_shadow(mds: ModelDeployments, operator: OperatorProcess, gateway_for) -> None:
    gateway = gateway_for(shadow_flips=True)
    mds.apply("fraud", spec("auto"), annotations={"modelcycle.io/gateway-url": gateway.url})
    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    gateway.send(20)

    wait_for(lambda: "shadow" not in mds.get("fraud")["spec"], timeout=30,
             what=f"the shadow to be removed; operator log:\n{operator.tail()}")
    md = mds.get("fraud")
    assert md["spec"]["production"]["version"] == 3
    verdict = mds.wait_condition("fraud", "ShadowVerdict", "False", reason="RolledBack", timeout=20)
    assert "agreement" in verdict["message"] and "breaches the minimum" in verdict["message"]
    md = mds.get("fraud")
    assert md["status"]["lastRollback"]["to"] == "4"
    assert "shadow rejected" in md["status"]["lastRollback"]["reason"]
    wait_for(lambda: {d["metadata"]["name"] for d in mds.children("deployments", "fraud")} == {"fraud-production", "fraud-gateway"},
             what="the shadow Deployment to be deleted")
    rolled_back = [e for e in mds.events("fraud") if e["reason"] == "RolledBack"]
    assert len(rolled_back) == 1 and rolled_back[0]["type"] == "Warning"
