"""The harness finds the binaries `make k8s-bins` built, or says how to get them."""

import os
import re
from pathlib import Path

import pytest

from modelcycle.cluster import ControlPlane, MissingBinary, binaries

pytestmark = pytest.mark.cluster

GO_MOD = Path(__file__).parents[2] / "tools" / "k8s" / "kubernetes" / "go.mod"


def test_harness_version_is_the_go_mod_pin() -> None:
    pin = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)", GO_MOD.read_text(), re.M)

    assert pin is not None, f"no k8s.io/kubernetes requirement in {GO_MOD}"
    assert binaries.KUBERNETES_VERSION == pin.group(1)


def test_every_control_plane_binary_is_built() -> None:
    found = binaries.find_all()

    assert set(found) == set(binaries.CONTROL_PLANE)


def test_missing_binaries_are_named_with_the_remedy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODELCYCLE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)

    with pytest.raises(MissingBinary) as missing:
        ControlPlane(run_dir=tmp_path / "run").start()

    for name in binaries.CONTROL_PLANE:
        assert name in str(missing.value)
    assert "make k8s-bins" in str(missing.value)
    assert not (tmp_path / "run" / "pki").exists()


def test_kubebuilder_assets_win_over_the_cache(tmp_path: Path, monkeypatch) -> None:
    cached = binaries.find("kube-apiserver")
    os.symlink(cached, tmp_path / "kube-apiserver")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))

    assert binaries.find("kube-apiserver") == tmp_path / "kube-apiserver"
    assert binaries.find("etcd") == binaries.cache_dir() / "bin" / "etcd"
