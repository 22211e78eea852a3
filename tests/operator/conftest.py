"""Fixtures for the operator tests: the CRD, the operator as a real process, and model
servers and a gateway as real local servers and processes (the tools are in
`modeldeployments`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from modeldeployments import (
    CRD,
    GatewayProcess,
    ModelDeployments,
    ModelServer,
    OperatorProcess,
    ServerThread,
)

from modelcycle.cluster import Cluster


@pytest.fixture(scope="session")
def crd(control_plane: Cluster) -> Path:
    """The chart's CRD, installed once per session."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/modeldeployments.modelcycle.io")
    return CRD


@pytest.fixture
def operator(control_plane: Cluster, crd: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator serving the test's namespace, stopped (SIGTERM, then SIGKILL) afterwards."""
    process = OperatorProcess(control_plane, namespace, tmp_path / "operator.log").start()
    yield process
    process.stop()


@pytest.fixture
def mds(control_plane: Cluster, crd: Path, namespace: str) -> ModelDeployments:
    return ModelDeployments(control_plane, namespace)


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture
def gateway_for(servers: ServerThread, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """`gateway_for(shadow_flips=False)`: model servers for versions 3 (production) and 4
    (shadow, predicting the opposite class if `shadow_flips`) behind a real gateway."""
    started: list[GatewayProcess] = []

    def start(*, shadow_flips: bool = False) -> GatewayProcess:
        production = servers.serve(ModelServer(version="3"))
        shadow = servers.serve(ModelServer(version="4", flip=shadow_flips))
        index = len(started)
        gateway = GatewayProcess(
            production, shadow, tmp_path / f"predictions-{index}", tmp_path / f"gateway-{index}.log"
        )
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
