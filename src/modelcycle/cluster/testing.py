"""pytest plugin: one real control plane per test run, shared by every cluster test.

Enable it with `pytest_plugins = ["modelcycle.cluster.testing"]` in a conftest. Starting
a control plane takes seconds, so `control_plane` is session-scoped and started on first
use; tests keep out of each other's way by working in their own `namespace`.

If the binaries are missing, every test that needs the control plane fails (it is never
skipped) with the message that names the missing binary and says to run
`make k8s-bins`. Set `MODELCYCLE_KUBECONFIG=<path>` to run the same tests against an
existing cluster instead. The logs of the local control plane stay in pytest's temporary
folder (`control-plane0/logs`), which pytest keeps for the last three runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelcycle.cluster.binaries import MissingBinary
from modelcycle.cluster.clusters import Cluster
from modelcycle.cluster.controlplane import ControlPlane, ControlPlaneError
from modelcycle.cluster.objectstore import ObjectStore, ObjectStoreError

KUBECONFIG_ENV = "MODELCYCLE_KUBECONFIG"
"""Names a kubeconfig whose cluster the tests use instead of a local control plane."""

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster under test: the local control plane, or `$MODELCYCLE_KUBECONFIG`'s."""
    existing = os.environ.get(KUBECONFIG_ENV)
    if existing:
        try:
            cluster = Cluster.from_kubeconfig(Path(existing))
        except FileNotFoundError as error:
            pytest.fail(f"{KUBECONFIG_ENV}={existing}: {error}", pytrace=False)
        yield cluster
        return
    plane = ControlPlane(run_dir=tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except (MissingBinary, ControlPlaneError) as error:
        pytest.fail(f"the local control plane did not start: {error}", pytrace=False)
    try:
        yield plane.cluster
    finally:
        plane.stop()


@pytest.fixture
def kubectl(control_plane: Cluster) -> Kubectl:
    """`kubectl(*args, input=None, check=True)` against the cluster under test."""
    return control_plane.kubectl


@pytest.fixture
def namespace(control_plane: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards.

    It is returned once its `default` service account exists: until then the API server
    rejects pods in it, and a ReplicaSet that hits that backs off for seconds.
    """
    name = f"test-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl(
        "wait", "--for=create", "--timeout=30s", "-n", name, "serviceaccount/default"
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """A real S3-compatible object store (SeaweedFS) on 127.0.0.1, for the whole test run.

    Its credentials and endpoint are in `object_store.env`; tests that want fsspec to find
    them without options set those variables with monkeypatch. Fails, never skips, when
    `weed` is missing (`make k8s-bins` builds it)."""
    try:
        store = ObjectStore.start(tmp_path_factory.mktemp("object-store"))
    except (MissingBinary, ObjectStoreError) as error:
        pytest.fail(f"the local object store did not start: {error}", pytrace=False)
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def s3_env(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """`object_store`, with its AWS_* variables set for this test (s3fs reads them)."""
    for key, value in object_store.env.items():
        monkeypatch.setenv(key, value)
    return object_store


@pytest.fixture
def bucket(s3_env: ObjectStore) -> str:
    """A fresh bucket in the object store, as ``s3://NAME``."""
    return s3_env.make_bucket(f"test-{secrets.token_hex(4)}")
