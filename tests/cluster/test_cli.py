"""`modelcycle cluster up | status | kubeconfig | down` from a shell: a detached control
plane that other commands find through its run folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelcycle.cluster import Cluster, ControlPlane
from modelcycle.cluster.processes import ProcessRecord

pytestmark = pytest.mark.cluster


def cluster_cli(*args: str, kubectl_cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command in a process of its own, as a person would, with only our options.

    For an existing cluster, kubectl keeps its default cache (`~/.kube/cache`) unless
    `KUBECACHEDIR` says otherwise; `kubectl_cache` keeps the test out of the home folder.
    """
    env = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_KUBECONFIG"}
    if kubectl_cache is not None:
        env["KUBECACHEDIR"] = str(kubectl_cache)
    return subprocess.run(
        [sys.executable, "-m", "modelcycle.cluster.cli", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


def exports(stdout: str) -> dict[str, str]:
    lines = [line.removeprefix("export ") for line in stdout.splitlines()]
    assert all("=" in line for line in lines), stdout
    return dict(line.split("=", 1) for line in lines)


def test_up_status_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "cluster"
    where = ("--run-dir", str(run_dir))

    started = cluster_cli("up", *where, "--nodes", "1")
    assert started.returncode == 0, started.stderr
    env = exports(started.stdout)
    assert env["KUBECONFIG"] == str(run_dir / "kubeconfig")
    records: list[ProcessRecord] = ControlPlane.attach(run_dir).records
    try:
        nodes = Cluster(kubeconfig=Path(env["KUBECONFIG"]), kubectl_cache_dir=Path(env["KUBECACHEDIR"]))
        assert nodes.kubectl("get", "nodes", "-o", "name").stdout.split() == ["node/kwok-node-0"]
        assert cluster_cli("status", *where).returncode == 0
        assert cluster_cli("kubeconfig", *where).stdout.strip() == env["KUBECONFIG"]
        again = cluster_cli("up", *where)
        assert again.returncode == 0 and "already running" in again.stderr
        assert exports(again.stdout) == env
    finally:
        stopped = cluster_cli("down", *where)

    assert stopped.returncode == 0, stopped.stderr
    assert not any(record.is_running() for record in records)
    assert not run_dir.exists()
    assert cluster_cli("status", *where).returncode == 1


def test_up_with_an_existing_kubeconfig_starts_nothing(control_plane: Cluster, tmp_path: Path) -> None:
    where = ("--run-dir", str(tmp_path / "cluster"))
    cache = tmp_path / "kubectl-cache"

    started = cluster_cli("up", *where, "--kubeconfig", str(control_plane.kubeconfig), kubectl_cache=cache)

    assert started.returncode == 0, started.stderr
    assert exports(started.stdout) == {"KUBECONFIG": str(control_plane.kubeconfig)}
    assert not (tmp_path / "cluster" / "state.json").exists()
    assert cluster_cli("status", *where, kubectl_cache=cache).returncode == 0
    assert cluster_cli("down", *where).returncode == 0
    assert cluster_cli("kubeconfig", *where).returncode == 1
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
