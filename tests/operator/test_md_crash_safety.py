"""An operator killed with SIGKILL at any point of a rollout converges when it is started
again: no duplicate children, no lost status, no Event posted twice."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from modeldeployments import ModelDeployments, OperatorProcess, base_spec, wait_for

from modelcycle.operator.promotion import promotion_patch

pytestmark = pytest.mark.cluster


def children_by_kind(mds: ModelDeployments) -> dict[str, list[str]]:
    return {
        kind: sorted(child["metadata"]["name"] for child in mds.children(kind, "fraud"))
        for kind in ("deployments", "services", "configmaps")
    }


def test_killed_mid_rollout_converges_without_duplicates(mds: ModelDeployments, operator: OperatorProcess) -> None:
    mds.apply("fraud", base_spec())
    wait_for(lambda: mds.children("deployments", "fraud"), timeout=30, interval=0.05, what="the first child")
    operator.kill()
    # While it is down, the user adds a shadow.
    mds.patch("fraud", {"spec": {"shadow": {"version": 4, "image": "fraud:4-def", "mirrorPercent": 10}}})

    operator.start()
    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    mds.wait_condition("fraud", "Ready", timeout=30)
    md = mds.get("fraud")
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"] == 2
    assert children_by_kind(mds) == {
        "deployments": ["fraud-gateway", "fraud-production", "fraud-shadow"],
        "services": ["fraud-gateway", "fraud-production", "fraud-shadow"],
        "configmaps": ["fraud-gateway"],
    }
    for child in mds.children("deployments", "fraud"):
        assert len(child["metadata"]["ownerReferences"]) == 1
    rollouts = Counter(e["message"].split(" (")[0] for e in mds.events("fraud") if e["reason"] == "Rollout")
    # The shadow's rollout is announced once. The production one is announced at most once:
    # an Event is posted after the apply, and the kill may come in between.
    assert rollouts["shadow version 4"] == 1 and rollouts["production version 3"] <= 1, rollouts


def test_a_promotion_written_just_before_a_kill_reaches_status_once(
    mds: ModelDeployments, operator: OperatorProcess
) -> None:
    mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def"}))
    mds.wait_condition("fraud", "Ready", timeout=30)
    operator.kill()
    # Exactly the request the operator makes to promote; it dies before writing status.
    patch = promotion_patch(mds.get("fraud"), reason="verdict promote: test")
    mds.patch("fraud", patch)
    record = json.loads(patch["metadata"]["annotations"]["modelcycle.io/last-promotion"])

    operator.start()
    mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promoted", timeout=30)
    mds.wait_condition("fraud", "Ready", timeout=30)
    md = mds.get("fraud")
    assert md["status"]["lastPromotion"]["id"] == record["id"]
    assert md["status"]["production"]["version"] == "4"
    assert "shadow" not in md["status"]
    wait_for(lambda: children_by_kind(mds)["deployments"] == ["fraud-gateway", "fraud-production"],
             what="the shadow Deployment to be deleted")

    # A clean restart changes nothing and posts nothing again.
    operator.stop()
    before = mds.get("fraud")["metadata"]["resourceVersion"]
    operator.start()
    wait_for(lambda: operator.reconciles() >= 1, what="the restarted operator's first reconcile pass")
    promoted = [e for e in mds.events("fraud") if e["reason"] == "Promoted"]
    assert len(promoted) == 1 and promoted[0].get("count", 1) == 1
    assert mds.get("fraud")["metadata"]["resourceVersion"] == before
