"""The container engine: Docker where it runs, else podman configured for this kind of host.

`engine()` finds one. A working Docker (``docker info`` answers) is used as it is. Otherwise
podman is used with a project-local configuration written under the cache folder
(``~/.cache/modelcycle/containers``, or ``$MODELCYCLE_CACHE_DIR/containers``) and passed
through ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF``; nothing in ``/etc`` changes.
The settings are the ones measured on a Debian 12 host with hybrid cgroups, no systemd,
and root without CAP_SYS_RESOURCE:

- runtime ``runc``: crun 1.8 refuses hybrid cgroups;
- ``cgroupfs`` cgroups and a file events log: there is no systemd;
- default ulimits at or below the host's hard limits: root podman otherwise asks for
  nofile=1048576 and fails with "setrlimit: operation not permitted" (nproc stays at
  32768 or below, conmon's own limit);
- overlay storage, with the graph and run roots in the cache folder.

Where neither engine exists and the user is root on Debian or Ubuntu, `install()` puts in
podman, buildah, runc, skopeo and mmdebstrap with apt; anywhere else it says what to
install. Build steps that fetch packages get the host's CA bundle mounted read-only (a
TLS-inspecting proxy's CA lives there), and only the build steps: it is never copied
into an image.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelcycle.cluster.binaries import cache_root

APT_PACKAGES = ("podman", "buildah", "runc", "skopeo", "mmdebstrap", "uidmap")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NPROC_CAP = 32768
"""conmon refuses an nproc limit above this."""


class EngineError(RuntimeError):
    """No container engine can be had, or it failed; the message says what to do."""


@dataclass(frozen=True)
class Engine:
    """A container engine's command line and the environment it needs."""

    name: str
    """``docker`` or ``podman``."""
    command: str
    """The executable."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables to add to the environment of every call (podman's configuration files)."""

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *args: str, check: bool = True, timeout: float | None = 1800, capture: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``ENGINE ARGS...``; a failure raises `EngineError` with the command's output."""
        proc = subprocess.run([self.command, *args], env=self.environ(), text=True, timeout=timeout,
                              capture_output=capture, input=input)
        if check and proc.returncode != 0:
            output = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
            raise EngineError(f"{self.name} {' '.join(args[:3])} ... failed (exit {proc.returncode}):\n{output}")
        return proc

    def build(self, *, context: Path, dockerfile: Path, tag: str, build_args: Mapping[str, str] = {},
              labels: Mapping[str, str] = {}, log: Path | None = None) -> None:
        """Build `dockerfile` in `context` as `tag`. The host's CA bundle is mounted into the
        build steps (podman) so package downloads pass a TLS-inspecting proxy. The image the
        tag named before is removed when no other tag names it (and no container uses it):
        every `make images` after a change rebuilds the tag, and the old image, untagged,
        kept its gigabyte otherwise."""
        before = self.image_id(tag)
        self._build(context=context, dockerfile=dockerfile, tag=tag, build_args=build_args, labels=labels, log=log)
        if before is not None and before != self.image_id(tag):
            names = self.run("image", "inspect", "--format", "{{len .RepoTags}}", before, check=False)
            if names.returncode == 0 and names.stdout.strip() == "0":
                self.remove(before)  # untagged now: nothing names it any more

    def _build(self, *, context: Path, dockerfile: Path, tag: str, build_args: Mapping[str, str],
               labels: Mapping[str, str], log: Path | None) -> None:
        args = ["build", "-t", tag, "-f", str(dockerfile)]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if self.name == "podman" and HOST_CA_BUNDLE.is_file():
            args += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        args.append(str(context))
        if log is None:
            self.run(*args)
            return
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            proc = subprocess.run([self.command, *args], env=self.environ(), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=3600)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
            raise EngineError(f"building {tag} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")

    def exists(self, image: str) -> bool:
        return self.image_id(image) is not None

    def image_id(self, image: str) -> str | None:
        """The id of `image` (a tag), or None if there is none."""
        found = self.run("image", "inspect", "--format", "{{.Id}}", image, check=False)
        if found.returncode != 0:
            return None
        return found.stdout.strip() or None

    def remove(self, image: str) -> bool:
        """Remove `image`, a tag (the image goes with its last tag) or an id; False, and
        nothing removed, while a container uses it."""
        return self.run("rmi", image, check=False).returncode == 0

    def inspect(self, image: str) -> dict:
        return json.loads(self.run("image", "inspect", image).stdout)[0]

    def size_bytes(self, image: str) -> int:
        return int(self.inspect(image)["Size"])

    def save(self, image: str, path: Path) -> Path:
        """Write `image` as an OCI archive, for a cluster with no way to the registry."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        if self.name == "podman":
            self.run("save", "--format", "oci-archive", "-o", str(tmp), image)
        else:
            self.run("save", "-o", str(tmp), image)
        tmp.replace(path)
        return path


def cache_dir() -> Path:
    return cache_root() / "containers"


def podman_config(folder: Path | None = None) -> dict[str, str]:
    """Write podman's containers.conf and storage.conf into `folder` (idempotent) and return
    the variables that point podman at them."""
    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard_nofile == resource.RLIM_INFINITY else min(hard_nofile, 65536)
    hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = NPROC_CAP if hard_nproc == resource.RLIM_INFINITY else min(hard_nproc, NPROC_CAP)
    containers_conf = f"""# Written by modelcycle (modelcycle.cluster.containers); see that module for why.
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{folder / 'events.log'}"
"""
    storage_conf = f"""# Written by modelcycle (modelcycle.cluster.containers).
[storage]
driver = "overlay"
graphroot = "{folder / 'storage'}"
runroot = "{folder / 'run'}"
"""
    for name, text in (("containers.conf", containers_conf), ("storage.conf", storage_conf)):
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_name(name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return {"CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf")}


def _docker() -> Engine | None:
    docker = shutil.which("docker")
    if not docker:
        return None
    engine = Engine(name="docker", command=docker)
    try:
        if engine.run("info", check=False, timeout=20).returncode == 0:
            return engine
    except subprocess.TimeoutExpired:
        pass
    return None


def engine(*, install_missing: bool = False) -> Engine:
    """The engine to use: a working Docker, else podman with the project's configuration.
    With `install_missing`, install podman when neither is there (root on Debian/Ubuntu)."""
    preferred = os.environ.get("MODELCYCLE_CONTAINER_ENGINE")
    if preferred not in (None, "", "docker", "podman"):
        raise EngineError(f"MODELCYCLE_CONTAINER_ENGINE: expected docker or podman, found {preferred!r}")
    if preferred != "podman" and (docker := _docker()):
        return docker
    if preferred == "docker":
        raise EngineError("MODELCYCLE_CONTAINER_ENGINE=docker, but `docker info` does not answer")
    if not shutil.which("podman") and install_missing:
        install()
    podman = shutil.which("podman")
    if not podman:
        raise EngineError(_install_hint())
    return Engine(name="podman", command=podman, env=podman_config())


def _debian_like() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return any(line.split("=", 1)[1].strip('"') in ("debian", "ubuntu") or "debian" in line
               for line in text.splitlines() if line.startswith(("ID=", "ID_LIKE=")))


def _install_hint() -> str:
    return ("no container engine: neither a working `docker` nor `podman` is installed. Install one of them, "
            f"e.g. on Debian/Ubuntu as root: apt-get install -y {' '.join(APT_PACKAGES)} "
            "(make images does this itself when run as root on Debian/Ubuntu); on Fedora: dnf install podman "
            "buildah skopeo; on macOS: Docker Desktop or `brew install podman && podman machine init`.")


def install() -> None:
    """Install podman and its tools with apt, as root on Debian/Ubuntu; otherwise say what to install."""
    if os.geteuid() != 0 or not _debian_like() or not shutil.which("apt-get"):
        raise EngineError(_install_hint())
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise EngineError(f"{' '.join(command)} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def ensure_tools(names: Sequence[str]) -> None:
    """Raise `EngineError` naming the first of `names` not on PATH."""
    for name in names:
        if not shutil.which(name):
            raise EngineError(f"{name} is not installed; as root on Debian/Ubuntu: apt-get install -y {name}")
