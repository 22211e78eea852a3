"""The work split over two operators, for a cluster that outgrows one: by label selector
(`MODELCYCLE_SELECTOR`, the chart's `operator.selector`) or by namespace
(`MODELCYCLE_NAMESPACES`, the chart's `watchNamespaces`). Each operator reconciles only its
share, which the Events tell: each names the replica that posted it (`reportingInstance`),
and a ModelDeployment in no share gets no status at all. A ModelDeployment relabelled into
the other share is handed over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from modeldeployments import ModelDeployments, OperatorProcess, base_spec, wait_for

from modelcycle.cluster import Cluster

pytestmark = pytest.mark.cluster


def reporters(mds: ModelDeployments, name: str) -> set[str]:
    """The operators that posted Events about md/`name`."""
    return {e.get("reportingInstance") or e["source"].get("host", "?") for e in mds.events(name)}


@pytest.fixture
def shards(control_plane: Cluster, crd: Path, namespace: str, tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    """Two operators in one namespace, serving `shard=a` and `shard=b`."""
    started = {
        shard: OperatorProcess(control_plane, namespace, tmp_path / f"operator-{shard}.log", env={
            "MODELCYCLE_SELECTOR": f"shard={shard}", "MODELCYCLE_POD_NAME": f"operator-{shard}",
        }).start()
        for shard in ("a", "b")
    }
    yield started
    for process in started.values():
        process.stop()


def test_each_operator_reconciles_only_the_modeldeployments_its_selector_picks(
    mds: ModelDeployments, shards: dict[str, OperatorProcess]
) -> None:
    mds.apply("fraud-a", base_spec(), labels={"shard": "a"})
    mds.apply("fraud-b", base_spec(), labels={"shard": "b"})
    mds.apply("fraud-none", base_spec())
    mds.wait_condition("fraud-a", "Ready", timeout=40)
    mds.wait_condition("fraud-b", "Ready", timeout=40)
    assert reporters(mds, "fraud-a") == {"operator-a"}
    assert reporters(mds, "fraud-b") == {"operator-b"}

    # fraud-none was applied with the others: an operator serving it would have created its
    # children while the two others rolled out.
    assert "status" not in mds.get("fraud-none"), "a ModelDeployment in no share is served by no operator"
    assert mds.children("deployments", "fraud-none") == []

    # Relabelled into b: a leaves it, b takes it, and b reconciles its next change.
    before = shards["b"].reconciles()
    mds.patch("fraud-a", {"metadata": {"labels": {"shard": "b"}}})
    wait_for(lambda: shards["b"].reconciles() > before, timeout=20, what="operator-b to pick fraud-a up")
    mds.patch("fraud-a", {"spec": {"production": {"version": 5, "image": "fraud:5-abc"}}})
    wait_for(lambda: mds.get("fraud-a").get("status", {}).get("production", {}).get("version") == "5", timeout=30,
             what=f"operator-b to roll fraud-a to version 5; its log:\n{shards['b'].tail()}")
    mds.wait_condition("fraud-a", "Ready", timeout=30)
    rollouts = {e.get("reportingInstance") for e in mds.events("fraud-a")
                if e["reason"] == "Rollout" and "version 5" in e["message"]}
    assert rollouts == {"operator-b"}


def test_operators_split_by_namespace_each_serve_only_their_own(
    control_plane: Cluster, crd: Path, namespace: str, tmp_path: Path
) -> None:
    other = f"{namespace}-b"
    control_plane.kubectl("create", "namespace", other)
    control_plane.kubectl("wait", "--for=create", "--timeout=30s", "-n", other, "serviceaccount/default")
    operators = [
        OperatorProcess(control_plane, where, tmp_path / f"operator-{where}.log",
                        env={"MODELCYCLE_POD_NAME": f"operator-{where}"}).start()
        for where in (namespace, other)
    ]
    try:
        here, there = ModelDeployments(control_plane, namespace), ModelDeployments(control_plane, other)
        here.apply("fraud", base_spec())
        there.apply("fraud", base_spec())
        here.wait_condition("fraud", "Ready", timeout=40)
        there.wait_condition("fraud", "Ready", timeout=40)
        assert reporters(here, "fraud") == {f"operator-{namespace}"}
        assert reporters(there, "fraud") == {f"operator-{other}"}
    finally:
        for process in operators:
            process.stop()
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)
