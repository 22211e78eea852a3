"""A real Kubernetes control plane on this machine, without containers.

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok as plain processes, the way envtest runs etcd and kube-apiserver for controller
tests, plus the two controllers and kwok so that Deployments roll out: the scheduler
binds pods to kwok's fake nodes, and kwok reports them running and ready.

Everything a run needs or produces lives in its run folder: certificates and tokens,
kubeconfigs, etcd's data, one log per component, kubectl's cache, even the components'
`$HOME`. Components listen on free ports of 127.0.0.1 only, so several control planes can
run side by side. A state file in the run folder (`state.json`) records every process, so
that `modelcycle cluster down` in another shell can find and stop them.

Start-up is staged: etcd, then kube-apiserver once etcd is healthy, then the rest once
`/readyz` answers ok. The control plane is ready when the controller-manager and the
scheduler are healthy, every fake node is Ready and the `default` service account exists
(pods cannot be created in a namespace before it does). If a component exits or the
wait times out, everything started so far is stopped and the error shows the last lines
of the log of the component that was waited for.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelcycle.cluster import binaries, processes
from modelcycle.cluster.clusters import Cluster
from modelcycle.cluster.pki import USERS, ClusterPKI
from modelcycle.cluster.processes import ProcessRecord

STATE_FILE = "state.json"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
"""kwok manages only the nodes with this annotation, so it leaves real nodes alone."""


class ControlPlaneError(RuntimeError):
    """A component did not start, exited, or did not become ready in time."""


class _PortTaken(ControlPlaneError):
    """A component exited because another process bound its port after we chose it."""


PORT_ATTEMPTS = 3
"""Free ports are chosen before the components bind them, so another process can take
one in between; start-up then tries again with new ports, this many times in all."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """How a control plane is started and stopped."""

    fake_nodes: int = 3
    """kwok nodes to register. Three let a test spread replicas or drain a node, and cost
    nothing measurable: a fake node is an object in etcd and a heartbeat."""

    ready_timeout: float = 60.0
    """Seconds to wait for the whole control plane to be ready. A warm start takes about
    5 s; the margin is for a 2-core machine busy with other tests."""

    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL. Every component exits within about 1 s."""

    controller_service_accounts: bool = False
    """True runs each controller of kube-controller-manager as its own service account,
    as production clusters do (`--use-service-account-credentials`). Getting ~40 tokens
    one by one adds about 4.5 s to start-up on 2 cores, so by default the controllers
    share the controller-manager's identity, which is then in `system:masters`."""

    service_cluster_ip_range: str = "10.0.0.0/24"
    """Service addresses; the serving certificate covers 10.0.0.1, the `kubernetes` Service."""

    pod_cidr: str = "10.244.0.0/16"
    """Addresses kwok gives to pods; kept apart from the service range."""


@dataclass(frozen=True)
class ComponentStatus:
    """One component process of a control plane, as `modelcycle cluster status` shows it."""

    name: str
    pid: int
    running: bool
    log: Path


@dataclass
class _Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def free(cls) -> _Ports:
        return cls(*processes.free_ports(5))


@dataclass
class _Check:
    """One readiness condition, and the component whose log explains it when it fails."""

    name: str
    component: str
    probe: Callable[[], tuple[bool, str]]
    answer: str = "no answer yet"


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

    Use as a context manager, or call `start()` and `stop()`. `detached=True` lets the
    processes outlive this Python process (for `modelcycle cluster up`); otherwise they
    are ended by the kernel should this process die without calling `stop()`.
    """

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        settings: ControlPlaneSettings | None = None,
        detached: bool = False,
    ) -> None:
        self.settings = settings or ControlPlaneSettings()
        self.detached = detached
        self._owns_run_dir = run_dir is None
        self.run_dir = (run_dir or Path(tempfile.mkdtemp(prefix="modelcycle-cluster-"))).absolute()
        self.records: list[ProcessRecord] = []
        self.timings: dict[str, float] = {}
        """Seconds from the start of `start()` until each stage was ready."""
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._ports: _Ports | None = None
        self._pki: ClusterPKI | None = None

    # -- public face ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user `admin`, group `system:masters`)."""
        return self.run_dir / "kubeconfig"

    @property
    def cluster(self) -> Cluster:
        return Cluster(kubeconfig=self.kubeconfig, kubectl_cache_dir=self.run_dir / "kubectl-cache")

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def start(self) -> Cluster:
        """Start every component and wait until the control plane is ready."""
        if (self.run_dir / STATE_FILE).exists():
            raise ControlPlaneError(
                f"{self.run_dir} already holds a control plane ({STATE_FILE}); stop it first"
            )
        try:
            found = binaries.find_all()
            stages = binaries.kwok_stages()
            self._prepare_run_dir()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._start_staged(found, stages, time.monotonic())
                    break
                except _PortTaken:
                    if attempt == PORT_ATTEMPTS:
                        raise
                    self._stop_processes()
                    self.records.clear()
                    shutil.rmtree(self.run_dir / "etcd", ignore_errors=True)
        except BaseException:
            self.stop()
            raise
        return self.cluster

    def stop(self) -> None:
        """Stop every component; nothing started by this control plane is left running.

        A run folder this object created itself is removed; one given by the caller is
        kept, with its logs.
        """
        self._stop_processes()
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _stop_processes(self) -> None:
        processes.stop(self.records, timeout=self.settings.stop_timeout, owned=self._popens)
        self._popens.clear()
        (self.run_dir / STATE_FILE).unlink(missing_ok=True)

    def status(self) -> list[ComponentStatus]:
        return [
            ComponentStatus(record.name, record.pid, record.is_running(), Path(record.log))
            for record in self.records
        ]

    def is_ready(self) -> bool:
        """True if kube-apiserver answers ok on /readyz right now."""
        if self._ports is None or self._pki is None:
            return False
        ok, _ = self._readyz()
        return ok

    @classmethod
    def attach(cls, run_dir: Path, *, settings: ControlPlaneSettings | None = None) -> ControlPlane:
        """The control plane recorded in `run_dir`'s state file, started by another process."""
        state_file = run_dir / STATE_FILE
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            raise ControlPlaneError(f"no control plane recorded in {run_dir} ({STATE_FILE} is missing)")
        plane = cls(run_dir=run_dir, settings=settings, detached=True)
        plane._owns_run_dir = False
        plane.records = [ProcessRecord.from_json(item) for item in state["processes"]]
        plane._ports = _Ports(**state["ports"])
        plane._pki = ClusterPKI.load(run_dir / "pki")
        return plane

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- start-up ---------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        for sub in ("logs", "home", "kubectl-cache", "kubeconfigs", "flexvolume"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)

    def _start_staged(self, found: dict[str, Path], stages: Path, began: float) -> None:
        users = dict(USERS)
        if not self.settings.controller_service_accounts:
            users["system:kube-controller-manager"] = ("system:masters",)
        self._pki = pki = ClusterPKI.create(self.run_dir / "pki", users=users)
        self._ports = ports = _Ports.free()
        server = f"https://127.0.0.1:{ports.apiserver}"
        self._write_kubeconfig(self.kubeconfig, server, "admin")
        for user, file in (
            ("system:kube-controller-manager", "controller-manager"),
            ("system:kube-scheduler", "scheduler"),
            ("kwok", "kwok"),
        ):
            self._write_kubeconfig(self.run_dir / "kubeconfigs" / file, server, user)

        self._spawn("etcd", [str(found["etcd"]), *self._etcd_flags()])
        self._wait([_Check("etcd /health", "etcd", self._etcd_health)], began)
        self.timings["etcd"] = time.monotonic() - began

        self._spawn("kube-apiserver", [str(found["kube-apiserver"]), *self._apiserver_flags(pki)])
        self._wait([_Check("kube-apiserver /readyz", "kube-apiserver", self._readyz)], began)
        self.timings["kube-apiserver"] = time.monotonic() - began

        self._spawn(
            "kube-controller-manager",
            [str(found["kube-controller-manager"]), *self._controller_manager_flags(pki)],
        )
        self._spawn("kube-scheduler", [str(found["kube-scheduler"]), *self._scheduler_flags(pki)])
        self._spawn("kwok", [str(found["kwok"]), *self._kwok_flags(stages)])
        self._register_fake_nodes()
        self._wait(
            [
                _Check(
                    "kube-controller-manager /healthz", "kube-controller-manager",
                    lambda: self._component_healthz(ports.controller_manager),
                ),
                _Check(
                    "kube-scheduler /healthz", "kube-scheduler",
                    lambda: self._component_healthz(ports.scheduler),
                ),
                _Check("fake nodes Ready", "kwok", self._fake_nodes_ready),
                _Check(
                    "service account default/default", "kube-controller-manager",
                    self._default_service_account,
                ),
            ],
            began,
        )
        self.timings["ready"] = time.monotonic() - began

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.run_dir / "home"),
        }
        process, record = processes.spawn(
            name, argv, log=self.logs / f"{name}.log", cwd=self.run_dir, env=env,
            tie_to_parent=not self.detached,
        )
        self._popens[record.pid] = process
        self.records.append(record)
        self._write_state()

    def _wait(self, checks: list[_Check], began: float) -> None:
        deadline = began + self.settings.ready_timeout
        pending = list(checks)
        while True:
            for record in self.records:
                if not record.is_running():
                    process = self._popens.get(record.pid)
                    code = process.poll() if process else None
                    tail = _log_tail(Path(record.log))
                    error = _PortTaken if "address already in use" in tail else ControlPlaneError
                    raise error(
                        f"{record.name} exited"
                        + (f" with code {code}" if code is not None else "")
                        + f" while the control plane was starting; {tail}"
                    )
            still = []
            for check in pending:
                ok, check.answer = check.probe()
                if not ok:
                    still.append(check)
            pending = still
            if not pending:
                return
            if time.monotonic() > deadline:
                check = pending[0]
                raise ControlPlaneError(
                    f"{check.name} not ready within {self.settings.ready_timeout:g} s "
                    f"(last answer: {check.answer}); " + _log_tail(self.logs / f"{check.component}.log")
                )
            time.sleep(0.1)

    def _write_state(self) -> None:
        assert self._ports is not None
        state = {
            "run_dir": str(self.run_dir),
            "kubeconfig": str(self.kubeconfig),
            "kubernetes_version": binaries.KUBERNETES_VERSION,
            "ports": self._ports.__dict__,
            "processes": [record.to_json() for record in self.records],
        }
        _write_atomically(self.run_dir / STATE_FILE, json.dumps(state, indent=2))

    def _write_kubeconfig(self, path: Path, server: str, user: str) -> None:
        assert self._pki is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "modelcycle", "cluster": {
                    "server": server, "certificate-authority": str(self._pki.ca_cert),
                }},
            ],
            "users": [{"name": user, "user": {"token": self._pki.tokens[user]}}],
            "contexts": [{"name": "modelcycle", "context": {"cluster": "modelcycle", "user": user}}],
            "current-context": "modelcycle",
        }
        _write_atomically(path, yaml.safe_dump(config, sort_keys=False))

    # -- component flags --------------------------------------------------------------

    def _etcd_flags(self) -> list[str]:
        assert self._ports is not None
        client = f"http://127.0.0.1:{self._ports.etcd_client}"
        peer = f"http://127.0.0.1:{self._ports.etcd_peer}"
        return [
            "--name=modelcycle",
            f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=modelcycle={peer}",
            # A disposable cluster: losing data on a power cut is fine, fsync latency is not.
            "--unsafe-no-fsync",
        ]

    def _apiserver_flags(self, pki: ClusterPKI) -> list[str]:
        assert self._ports is not None
        return [
            f"--etcd-servers=http://127.0.0.1:{self._ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._ports.apiserver}",
            f"--cert-dir={self.run_dir / 'pki'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={pki.token_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_public_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={self.settings.service_cluster_ip_range}",
            "--allow-privileged=true",
            # Streaming lists (watch with sendInitialEvents) need progress notifications
            # that etcd 3.5.1 cannot give. With the gate on, such a watch fails with an
            # internal error and informers (kwok's) retry it with growing back-off, so pods
            # start seconds late; with it off, the request is refused outright and
            # client-go falls back to LIST + WATCH at once.
            "--feature-gates=WatchList=false",
            # The default reconciler keeps the `kubernetes` Service's endpoints pointing at
            # this apiserver, and fails every 10 s on a loopback address.
            "--endpoint-reconciler-type=none",
        ]

    def _controller_manager_flags(self, pki: ClusterPKI) -> list[str]:
        assert self._ports is not None
        return [
            f"--kubeconfig={self.run_dir / 'kubeconfigs' / 'controller-manager'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self._ports.controller_manager}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--leader-elect=false",
            f"--use-service-account-credentials={str(self.settings.controller_service_accounts).lower()}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={self.settings.service_cluster_ip_range}",
            # Its default is a system folder outside the run folder.
            f"--flex-volume-plugin-dir={self.run_dir / 'flexvolume'}",
        ]

    def _scheduler_flags(self, pki: ClusterPKI) -> list[str]:
        assert self._ports is not None
        return [
            f"--kubeconfig={self.run_dir / 'kubeconfigs' / 'scheduler'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self._ports.scheduler}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            "--leader-elect=false",
        ]

    def _kwok_flags(self, stages: Path) -> list[str]:
        key, value = FAKE_NODE_ANNOTATION
        return [
            f"--config={stages}",
            f"--kubeconfig={self.run_dir / 'kubeconfigs' / 'kwok'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--manage-nodes-with-label-selector=",
            "--manage-single-node=",
            f"--cidr={self.settings.pod_cidr}",
            "--node-lease-duration-seconds=40",
        ]

    # -- readiness probes -------------------------------------------------------------

    def _etcd_health(self) -> tuple[bool, str]:
        assert self._ports is not None
        status, body = _request("127.0.0.1", self._ports.etcd_client, "GET", "/health")
        return status == 200 and b'"true"' in body, _answer(status, body)

    def _readyz(self) -> tuple[bool, str]:
        status, body = self._api("GET", "/readyz")
        return status == 200 and body.strip() == b"ok", _answer(status, body)

    def _component_healthz(self, port: int) -> tuple[bool, str]:
        assert self._pki is not None
        status, body = _request("127.0.0.1", port, "GET", "/healthz", tls=self._tls())
        return status == 200 and body.strip() == b"ok", _answer(status, body)

    def _fake_nodes_ready(self) -> tuple[bool, str]:
        status, body = self._api("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
        if status != 200:
            return False, _answer(status, body)
        ready = [
            node["metadata"]["name"]
            for node in json.loads(body)["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= self.settings.fake_nodes, f"{len(ready)}/{self.settings.fake_nodes} Ready"

    def _default_service_account(self) -> tuple[bool, str]:
        status, body = self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200, _answer(status, body)

    def _register_fake_nodes(self) -> None:
        for index in range(self.settings.fake_nodes):
            status, body = self._api("POST", "/api/v1/nodes", _fake_node(f"kwok-node-{index}"))
            if status not in (201, 409):
                raise ControlPlaneError(f"registering fake node kwok-node-{index}: {_answer(status, body)}")

    def _api(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        assert self._ports is not None and self._pki is not None
        return _request(
            "127.0.0.1", self._ports.apiserver, method, path, body=body, tls=self._tls(),
            token=self._pki.tokens["admin"],
        )

    def _tls(self) -> ssl.SSLContext:
        assert self._pki is not None
        return ssl.create_default_context(cafile=str(self._pki.ca_cert))


def _fake_node(name: str) -> dict[str, object]:
    """A Node for kwok to manage; kwok keeps its conditions and heartbeats up to date."""
    key, value = FAKE_NODE_ANNOTATION
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    body: object | None = None,
    tls: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[int, bytes]:
    """One HTTP request; a refused or broken connection answers status 0 with the reason.

    The timeout is short because the server is on loopback: a probe that hangs (a port
    taken by something that never answers) must not hold up the checks that would notice.
    """
    if tls is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=2)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=2, context=tls)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error).encode()
    finally:
        connection.close()


def _answer(status: int, body: bytes) -> str:
    text = body.decode(errors="replace").strip().replace("\n", " ")
    text = text if len(text) <= 300 else text[:300] + "..."
    return f"HTTP {status}: {text}" if status else text


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"its log {log} does not exist"
    return f"last lines of {log}:\n" + "\n".join(tail)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    os.replace(tmp, path)
