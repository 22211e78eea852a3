"""A port taken by another process between choosing and binding it does not fail the
start: the control plane tries again on new ports."""

import socket
from pathlib import Path

import pytest

from modelcycle.cluster import ControlPlane, ControlPlaneSettings
from modelcycle.cluster import controlplane

pytestmark = pytest.mark.cluster


def test_start_retries_when_a_chosen_port_is_taken(tmp_path: Path, monkeypatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free = controlplane._Ports.free
    offered = []

    def free() -> controlplane._Ports:
        ports = real_free()
        if not offered:
            ports.etcd_client = taken
        offered.append(ports)
        return ports

    monkeypatch.setattr(controlplane._Ports, "free", staticmethod(free))
    plane = ControlPlane(run_dir=tmp_path / "run", settings=ControlPlaneSettings(fake_nodes=1))
    try:
        cluster = plane.start()
        assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
    finally:
        plane.stop()
        squatter.close()

    assert len(offered) == 2
    assert "address already in use" in (tmp_path / "run" / "logs" / "etcd.log").read_text()
