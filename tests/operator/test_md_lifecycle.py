"""A ModelDeployment's life with the operator: created and Ready, a shadow rolled out,
deleted and its children collected, on the real control plane with kwok nodes."""

from __future__ import annotations

import pytest
from modeldeployments import ModelDeployments, OperatorProcess, base_spec, wait_for

pytestmark = pytest.mark.cluster

CHILD_LABELS = {
    "app.kubernetes.io/instance": "fraud",
    "app.kubernetes.io/part-of": "modelcycle",
    "app.kubernetes.io/managed-by": "modelcycle-operator",
}


def test_create_rolls_out_children_and_becomes_ready(mds: ModelDeployments, operator: OperatorProcess) -> None:
    mds.apply("fraud", base_spec())
    ready = mds.wait_condition("fraud", "Ready", timeout=30)
    assert "production version 3 serving" in ready["message"]

    md = mds.get("fraud")
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert md["status"]["production"] == {"version": "3", "image": "fraud:3-abc", "replicas": 1, "readyReplicas": 1}
    assert {c["type"]: c["status"] for c in md["status"]["conditions"]} == {
        "ProductionReady": "True", "GatewayReady": "True", "ShadowReady": "False",
        "ShadowVerdict": "Unknown", "Ready": "True",
    }
    deployments = {d["metadata"]["name"]: d for d in mds.children("deployments", "fraud")}
    services = {s["metadata"]["name"] for s in mds.children("services", "fraud")}
    config_maps = {c["metadata"]["name"]: c for c in mds.children("configmaps", "fraud")}
    assert set(deployments) == {"fraud-production", "fraud-gateway"}
    assert services == {"fraud-production", "fraud-gateway"}
    assert set(config_maps) == {"fraud-gateway"}
    assert config_maps["fraud-gateway"]["data"]["PRODUCTION_URL"] == f"http://fraud-production.{mds.namespace}.svc:3000"
    assert "SHADOW_URL" not in config_maps["fraud-gateway"]["data"]

    for child in [*deployments.values(), *config_maps.values()]:
        owner, = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "ModelDeployment", "fraud", md["metadata"]["uid"], True)
        assert CHILD_LABELS.items() <= child["metadata"]["labels"].items()
        assert "modelcycle-operator" in {m["manager"] for m in child["metadata"]["managedFields"] if m["operation"] == "Apply"}

    pod = deployments["fraud-production"]["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 3000, "scheme": "HTTP"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    gateway, = deployments["fraud-gateway"]["spec"]["template"]["spec"]["containers"]
    assert gateway["command"] == ["python", "-m", "modelcycle.serving.gateway"]
    assert "--production-url=$(PRODUCTION_URL)" in gateway["args"]

    reasons = {event["reason"] for event in mds.events("fraud")}
    assert "Rollout" in reasons


def test_adding_a_shadow_rolls_it_out_and_routes_the_mirror(mds: ModelDeployments, operator: OperatorProcess) -> None:
    mds.apply("fraud", base_spec())
    mds.wait_condition("fraud", "Ready", timeout=30)
    mds.patch("fraud", {"spec": {"shadow": {"version": 4, "image": "fraud:4-def", "mirrorPercent": 25}}})

    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    md = mds.get("fraud")
    assert md["status"]["shadow"]["version"] == "4"
    deployments = {d["metadata"]["name"]: d for d in mds.children("deployments", "fraud")}
    assert deployments["fraud-shadow"]["spec"]["template"]["spec"]["containers"][0]["image"] == "fraud:4-def"
    assert deployments["fraud-shadow"]["metadata"]["labels"]["app.kubernetes.io/version"] == "4"
    config, = mds.children("configmaps", "fraud")
    assert config["data"]["SHADOW_URL"] == f"http://fraud-shadow.{mds.namespace}.svc:3000"
    assert config["data"]["MIRROR_PERCENT"] == "25"
    gateway = deployments["fraud-gateway"]["spec"]["template"]
    assert "--shadow-url=$(SHADOW_URL)" in gateway["spec"]["containers"][0]["args"]

    # Removing the shadow by hand removes its children and the mirror.
    mds.patch("fraud", {"spec": {"shadow": None}})
    wait_for(lambda: {d["metadata"]["name"] for d in mds.children("deployments", "fraud")} == {"fraud-production", "fraud-gateway"},
             what="the shadow Deployment to be deleted")
    wait_for(lambda: "SHADOW_URL" not in mds.children("configmaps", "fraud")[0]["data"], what="the mirror to be removed")
    assert {s["metadata"]["name"] for s in mds.children("services", "fraud")} == {"fraud-production", "fraud-gateway"}


def test_deleting_collects_every_child(mds: ModelDeployments, operator: OperatorProcess) -> None:
    mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def"}))
    mds.wait_condition("fraud", "Ready", timeout=30)
    assert len(mds.children("deployments", "fraud")) == 3

    mds.cluster.kubectl("delete", "md", "fraud", "-n", mds.namespace, "--wait=true", "--timeout=30s")
    for kind in ("deployments", "services", "configmaps", "replicasets"):
        wait_for(lambda kind=kind: not mds.children(kind, "fraud"), timeout=30,
                 what=f"the garbage collector to delete the {kind}")
