"""Two operator replicas elect one active replica with a Lease; the other stands by.

The active replica is killed with SIGKILL in the middle of a promotion, at two points:
while the verdict waits for minDuration, and the moment the promotion's spec edit is
visible (before or after the dead replica wrote the status and posted the Event: the test
cannot tell, and the outcome must not depend on it). The standby takes the Lease over
within `TAKEOVER_BOUND_S` of the kill (the Lease's duration, 3 s here, plus a margin for
one write on a loaded machine) and completes the promotion once: one Promoted Event, the
record in status, nothing lost. A clean stop hands the Lease over at once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from modeldeployments import (
    LEASE,
    POLICY,
    ModelDeployments,
    OperatorProcess,
    Watch,
    base_spec,
    lease,
    replica_env,
    wait_for,
)
from test_md_chart import CHART, helm

from modelcycle.cluster import Cluster

pytestmark = pytest.mark.cluster

LEASE_DURATION_S = 3.0
TAKEOVER_BOUND_S = LEASE_DURATION_S + 2.0
"""From the kill to the standby holding the Lease: the Lease's duration after the dead
replica's last renewal (at most the kill), plus one write and a loaded machine's lag."""


@pytest.fixture
def replicas(control_plane: Cluster, crd: Path, namespace: str, tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    """Two replicas, `operator-a` and `operator-b`, once one of them holds the Lease."""
    started = {
        name: OperatorProcess(control_plane, namespace, tmp_path / f"{name}.log",
                              env=replica_env(name, lease_duration_s=LEASE_DURATION_S)).start()
        for name in ("operator-a", "operator-b")
    }
    wait_for(lambda: lease(control_plane, namespace).get("holderIdentity") in started, timeout=30,
             what="one replica to hold the Lease")
    yield started
    for process in started.values():
        process.stop()


def active(cluster: Cluster, namespace: str, replicas: dict[str, OperatorProcess]) -> tuple[str, str]:
    holder = lease(cluster, namespace)["holderIdentity"]
    return holder, next(name for name in replicas if name != holder)


@pytest.mark.parametrize("kill_at", ["verdict", "spec-edit"])
def test_the_standby_completes_a_promotion_once_when_the_active_replica_is_killed(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, replicas: dict[str, OperatorProcess],
    gateway_for, kill_at: str,
) -> None:
    leader, standby = active(control_plane, namespace, replicas)
    gateway = gateway_for()
    # "verdict": a minDuration long enough to kill while the promote verdict waits for it.
    min_duration = "15s" if kill_at == "verdict" else "1s"
    mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def", "mirrorPercent": 100},
                                 promotion={"mode": "auto", "minDuration": min_duration, **POLICY}),
              annotations={"modelcycle.io/gateway-url": gateway.url})
    mds.wait_condition("fraud", "ShadowReady", timeout=30)
    assert replicas[standby].reconciles() == 0, "the standby must not act"
    assert replicas[leader].reconciles() > 0

    versions = Watch(control_plane, "md", "fraud", "-n", namespace, template="{.spec.production.version}")
    holders = Watch(control_plane, "lease", LEASE, "-n", namespace, template="{.spec.holderIdentity}")
    try:
        gateway.send(60)
        if kill_at == "verdict":
            mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promote", timeout=30)
            assert mds.get("fraud")["spec"]["production"]["version"] == 3
        else:
            versions.wait(lambda line: line == "4", timeout=30, what="the promotion's spec edit")
        replicas[leader].kill()
        killed_at = time.monotonic()

        took_over_at = holders.wait(lambda line: line == standby, since=killed_at, timeout=30,
                                    what=f"{standby} to take the Lease over")
        promoted_at = versions.wait(lambda line: line == "4", timeout=30, what="the promotion")
    finally:
        versions.stop()
        holders.stop()
    takeover = took_over_at - killed_at
    print(f"\n[{kill_at}] takeover {takeover:.2f} s after the kill (bound {TAKEOVER_BOUND_S:g} s); "
          f"the promotion's spec edit {max(promoted_at - killed_at, 0):.2f} s after it")
    assert takeover <= TAKEOVER_BOUND_S, f"takeover took {takeover:.2f} s; {replicas[standby].tail()}"

    verdict = mds.wait_condition("fraud", "ShadowVerdict", "True", reason="Promoted", timeout=30)
    mds.wait_condition("fraud", "Ready", timeout=30)
    md = mds.get("fraud")
    record = json.loads(md["metadata"]["annotations"]["modelcycle.io/last-promotion"])
    assert (record["from"], record["to"]) == ("3", "4")
    assert md["status"]["lastPromotion"]["id"] == record["id"], "the promotion is recorded in status"
    assert md["status"]["production"]["version"] == "4" and "shadow" not in md["status"]
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert "version 4 promoted" in verdict["message"]
    assert lease(control_plane, namespace)["leaseTransitions"] == 1, "exactly one takeover"

    # Once: one Promoted Event, whichever replica posted it; the shadow's children gone.
    events = mds.events("fraud")
    promoted = [e for e in events if e["reason"] == "Promoted"]
    assert len(promoted) == 1 and promoted[0].get("count", 1) == 1, promoted
    assert "3 -> 4" in promoted[0]["message"]
    rollouts = Counter(e["message"].split(" (")[0] for e in events if e["reason"] == "Rollout")
    assert rollouts["production version 4"] <= 1 and rollouts["shadow version 4"] <= 1, rollouts
    wait_for(lambda: {d["metadata"]["name"] for d in mds.children("deployments", "fraud")}
             == {"fraud-production", "fraud-gateway"}, what="the shadow Deployment to be deleted")


def test_a_clean_stop_hands_the_lease_over_at_once(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, replicas: dict[str, OperatorProcess],
) -> None:
    leader, standby = active(control_plane, namespace, replicas)
    mds.apply("fraud", base_spec())
    mds.wait_condition("fraud", "Ready", timeout=30)
    holders = Watch(control_plane, "lease", LEASE, "-n", namespace, template="{.spec.holderIdentity}")
    try:
        stopped_at = time.monotonic()
        replicas[leader].stop()  # SIGTERM, as a rolling update or a drain does
        took_over_at = holders.wait(lambda line: line == standby, since=stopped_at, timeout=30,
                                    what=f"{standby} to take the Lease over")
    finally:
        holders.stop()
    # The stop itself (kopf's cleanup) is part of it; far below the Lease's duration.
    assert took_over_at - stopped_at < LEASE_DURATION_S, f"{took_over_at - stopped_at:.2f} s"

    # The new holder acts: a change is reconciled.
    mds.patch("fraud", {"spec": {"production": {"replicas": 2}}})
    wait_for(lambda: mds.get("fraud")["status"]["production"]["replicas"] == 2, timeout=30,
             what=f"{standby} to reconcile a change; its log:\n{replicas[standby].tail()}")
    assert replicas[standby].reconciles() > 0


def test_replicas_elect_with_nothing_but_the_charts_rbac(
    control_plane: Cluster, namespace: str, mds: ModelDeployments, tmp_path: Path
) -> None:
    """Two real operators authenticated as the chart's ServiceAccount elect with the chart's
    Lease: its Role holds every verb the election uses (a list and a watch restricted to
    one Lease by name)."""
    helm(control_plane, "install", "mc", str(CHART), "--namespace", namespace, "--wait=false")
    try:
        token = control_plane.kubectl("create", "token", "mc-modelcycle-operator", "-n", namespace).stdout.strip()
        admin = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
        admin["users"] = [{"name": "operator", "user": {"token": token}}]
        admin["contexts"][0]["context"]["user"] = "operator"
        kubeconfig = tmp_path / "operator-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(admin))
        as_operator = Cluster(kubeconfig=kubeconfig, kubectl_cache_dir=tmp_path / "kubectl-cache")
        # The chart's pods run on kwok nodes and act on nothing; these two stand in for them.
        processes = [
            OperatorProcess(as_operator, namespace, tmp_path / f"{name}.log",
                            env={**replica_env(name), "MODELCYCLE_LEASE_NAME": "mc-modelcycle-operator"}).start()
            for name in ("operator-a", "operator-b")
        ]
        try:
            def holder() -> str | None:
                out = control_plane.kubectl("get", "lease", "mc-modelcycle-operator", "-n", namespace, "-o",
                                            "jsonpath={.spec.holderIdentity}", check=False)
                return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None

            wait_for(holder, timeout=30, what="a replica to hold the chart's Lease")
            mds.apply("fraud", base_spec())
            mds.wait_condition("fraud", "Ready", timeout=40)
        finally:
            for process in processes:
                process.stop()
        for process in processes:
            assert "forbidden" not in process.log.read_text().lower(), process.tail()
    finally:
        helm(control_plane, "uninstall", "mc", "--namespace", namespace, "--wait=false")
