"""Stopping a control plane leaves no process behind, and it never writes outside its
run folder.

This test starts a control plane of its own, so that it can stop it without disturbing
the shared one.
"""

import os
from pathlib import Path

import pytest

from modelcycle.cluster import ControlPlane, ControlPlaneSettings, MissingBinary
from modelcycle.cluster.binaries import cache_dir
from modelcycle.cluster.processes import group_members

pytestmark = pytest.mark.cluster

DEFAULT_PLACES = [
    Path("/var/run/kubernetes"),  # kube-apiserver's default --cert-dir
    Path("/usr/libexec/kubernetes"),  # kube-controller-manager's default --flex-volume-plugin-dir
    Path("/etc/kubernetes"),
    Path("/var/lib/kubelet"),
    Path("/var/lib/etcd"),
    Path.home() / ".kwok",  # kwok's work folder
    Path.cwd() / "modelcycle.etcd",  # etcd's default --data-dir for our --name
]
"""Where the components write when a flag is left at its default."""

HARMLESS_TARGETS = ("/dev/", "/proc/", "/sys/", "socket:", "pipe:", "anon_inode:")


def files_under(places: list[Path]) -> set[Path]:
    found = set()
    for place in places:
        if place.exists():
            found.add(place)
            found.update(place.rglob("*"))
    return found


def open_files_outside(pid: int, run_dir: Path) -> list[str]:
    outside = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith(HARMLESS_TARGETS) or target.startswith(f"{run_dir}/"):
            continue
        if target.startswith(f"{cache_dir()}/"):  # the binary itself
            continue
        outside.append(target)
    return outside


def test_stop_leaves_no_process_and_no_file_outside_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    before = files_under(DEFAULT_PLACES)
    plane = ControlPlane(run_dir=run_dir, settings=ControlPlaneSettings(fake_nodes=1))
    plane.start()
    try:
        records = list(plane.records)
        assert [r.name for r in records] == [
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
        ]
        for record in records:
            assert open_files_outside(record.pid, run_dir) == [], record.name
    finally:
        plane.stop()

    for record in records:
        assert not record.is_running(), f"{record.name} (pid {record.pid}) is still running"
        assert group_members(record.pid) == [], f"{record.name}'s process group is not empty"
    assert files_under(DEFAULT_PLACES) == before
    assert (run_dir / "logs" / "kube-apiserver.log").stat().st_size > 0
    assert not (run_dir / "state.json").exists()


def test_failed_start_removes_the_temporary_run_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELCYCLE_CACHE_DIR", str(tmp_path))  # an empty cache: no binaries
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    plane = ControlPlane(settings=ControlPlaneSettings(fake_nodes=1))
    assert plane.run_dir.is_dir()

    with pytest.raises(MissingBinary):
        plane.start()

    assert not plane.run_dir.exists()
