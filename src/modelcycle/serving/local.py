"""Local serving: production, an optional shadow and the gateway as processes on this machine.

This is what `modelcycle serve` runs, the embedded default for serving, and the same shape
as a deployment on Kubernetes: each model version is served from its bento by ``bentoml
serve``, and the gateway (`modelcycle.serving.gateway`) sits in front, forwarding to
production and mirroring a share of the traffic to the shadow.

Every process starts in a session of its own, so stopping it stops its children too. The
shadow runs at a lower CPU priority (nice `SHADOW_NICENESS`): the shadow must never slow
production down, and on a machine with fewer free cores than busy processes the two would
otherwise share them. Production then keeps the CPU, and a shadow that falls behind shows
up in the gateway's counts as timed-out or dropped mirrors. (On Kubernetes each version has
a pod and CPU of its own.) The model servers listen on free ports; only the gateway takes
the port asked for. All bind 127.0.0.1 unless told otherwise. The gateway's ``/feedback``
takes a bearer token, made fresh at each start (unless given), written to
``WORKDIR/serve/feedback-token`` for its owner only, and printed.

Each version's bento is looked up first and built only when the store does not have it
(`modelcycle.serving.packaging.package`): a version packaged with the same code, or with the
same ``--wheel``, starts from the bento already built, without building a wheel. Each model
server runs with a BentoML home of its own under ``WORKDIR/serve/ROLE``, linked to the
workdir's stores (`server_home`), so that its metrics are its own.

Start-up waits for each server's ``/readyz`` and fails with the end of its log if one exits
or is not ready in time (a bento whose artifact fails its sha256 check never gets ready).
Shutdown runs in reverse: the gateway first, with SIGTERM, so that it drains its mirrors and
flushes the prediction log, then the model servers; whatever ignores SIGTERM gets SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelcycle.artifacts import write_atomic
from modelcycle.registry import ModelNotFound, ModelVersion, Registry, parse_model_ref
from modelcycle.serving.packaging import BENTOML_DIR, PackagedBento, bentoml_env, bentoml_home, package

READY_TIMEOUT_S = 120.0
"""How long a server may take to answer /readyz; a bento imports pandas, scikit-learn and
BentoML and loads its model, which takes tens of seconds on a busy machine."""
BENTOML_STARTUP_FAILED = "Application startup failed"
"""What BentoML logs when the service cannot start (its model failed to load, say); the
server process stays up, so waiting for readiness would only time out."""
SHADOW_NICENESS = 10
"""The shadow's ``nice`` increment: under CPU contention it gets about a tenth of what
production gets."""
STOP_TIMEOUT_S = 20.0
"""How long a server may take to exit after SIGTERM before it gets SIGKILL. The gateway's
own drain timeout (10 s by default) must fit in it."""


class ServingError(RuntimeError):
    """A server could not be started; the message says which, and why."""


@dataclass
class ServerProcess:
    """One running server: what it is, where it listens, where it logs."""

    role: str
    url: str
    process: subprocess.Popen
    log: Path
    failed_when: str | None = None
    """A line in the log that means the server will never get ready, though it keeps running."""

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_process(role: str, command: Sequence[str], *, url: str, log: Path, env: dict[str, str] | None = None,
                  cwd: str | os.PathLike | None = None, niceness: int = 0) -> ServerProcess:
    """Start `command` in a session of its own, output to `log`, `niceness` lower in CPU
    priority (through ``nice``, which execs the command: the process id stays the server's)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = list(command)
    if niceness:
        nice = shutil.which("nice")
        if nice is None:
            raise ServingError(f"cannot start the {role} at a lower CPU priority: no 'nice' program on PATH")
        command = [nice, "-n", str(niceness), *command]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=cwd, start_new_session=True)
    return ServerProcess(role=role, url=url, process=process, log=log)


def wait_ready(server: ServerProcess, *, timeout_s: float = READY_TIMEOUT_S, path: str = "/readyz") -> None:
    """Return once `server` answers 200 on `path`; raise `ServingError` if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not server.alive():
            raise ServingError(f"{server.role} exited with code {server.process.returncode} before it was ready; "
                               f"its log ({server.log}) ends with:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if server.failed_when and server.failed_when in server.log_tail(200):
            raise ServingError(f"{server.role} failed to start; its log ({server.log}) ends with:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            raise ServingError(f"{server.role} was not ready at {server.url}{path} after {timeout_s:.0f} s; "
                               f"its log ({server.log}) ends with:\n{server.log_tail()}")
        time.sleep(0.25)


def stop_process(server: ServerProcess, *, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM the server, SIGKILL its whole session if it is still there after `timeout_s`."""
    if server.alive():
        try:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.process.pid, signal.SIGKILL)  # children left behind, or a server that ignored SIGTERM
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def server_home(workdir: Path, *, role: str) -> Path:
    """The BentoML home of one server: the workdir's stores, linked, and a metrics folder of its own.

    BentoML keeps a server's Prometheus files in ``BENTOML_HOME/prometheus_multiproc_dir`` and
    empties that folder when a server starts, so servers sharing a home would wipe, then sum,
    each other's metrics: production's ``/metrics`` would count the shadow's requests too."""
    store = bentoml_home(workdir)
    home = Path(workdir).resolve() / "serve" / role / BENTOML_DIR
    home.mkdir(parents=True, exist_ok=True)
    for name in ("bentos", "models"):
        link = home / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(store / name, home), target_is_directory=True)
    return home


def serve_bento(bento: PackagedBento, *, role: str, workdir: Path, port: int | None = None,
                host: str = "127.0.0.1", niceness: int | None = None) -> ServerProcess:
    """Start ``bentoml serve`` on a packaged bento (it is not ready yet; see `wait_ready`).
    A shadow runs `SHADOW_NICENESS` lower in CPU priority unless `niceness` says otherwise."""
    port = port or free_port(host)
    if niceness is None:
        niceness = SHADOW_NICENESS if role == "shadow" else 0
    command = [sys.executable, "-m", "bentoml", "serve", bento.tag, "--host", host, "--port", str(port)]
    env = {**bentoml_env(workdir), "BENTOML_HOME": str(server_home(workdir, role=role))}
    server = start_process(role, command, url=f"http://{host}:{port}", log=workdir / "serve" / f"{role}.log",
                           env=env, cwd=workdir, niceness=niceness)
    server.failed_when = BENTOML_STARTUP_FAILED
    return server


def default_log_dir(workdir: Path, production: ModelVersion, shadow: ModelVersion | None) -> Path:
    """WORKDIR/predictions/NAME/vP, or .../vP-shadow-vS: one prediction log per pairing."""
    pairing = f"v{production.version}" + (f"-shadow-v{shadow.version}" if shadow is not None else "")
    return workdir / "predictions" / production.name / pairing


@dataclass
class LocalServing:
    """Production, an optional shadow and the gateway, run as local processes."""

    registry: Registry
    workdir: Path
    model: str
    """``name``, ``name@version`` or ``name@alias``; a bare name means the champion, or the
    latest version when there is no champion."""
    shadow: str | None = None
    """A version number or alias of the same model."""
    mirror_percent: float = 100.0
    port: int = 8080
    host: str = "127.0.0.1"
    log_dir: Path | None = None
    """Where the gateway writes the prediction log [default: WORKDIR/predictions/NAME/vP, or
    .../vP-shadow-vS with a shadow: one log per pairing, so that a comparison never mixes
    the answers of two shadows]."""
    wheel: Path | None = None
    """The modelcycle wheel the bentos are (or get) packaged with; None means the checkout's code."""
    feedback_token: str | None = None
    """The bearer token the gateway's /feedback requires; None makes a fresh one, written to
    WORKDIR/serve/feedback-token (readable by its owner only) and printed at start."""
    policy_file: Path | None = None
    """The shadow's promotion policy as a JSON file of `ShadowPolicy`, passed to the gateway
    (which reads it again when it changes); the gateway's defaults when None."""
    monitoring_ttl_s: float | None = None
    """How long the gateway reuses a monitoring result (its ``--monitoring-ttl``); its default when None."""
    say: Callable[[str], None] = print
    servers: list[ServerProcess] = field(default_factory=list)
    production_version: ModelVersion | None = None
    shadow_version: ModelVersion | None = None

    def resolve(self) -> tuple[ModelVersion, ModelVersion | None]:
        name, ref = parse_model_ref(self.model)
        try:
            production = self.registry.get(name, "champion" if "@" not in self.model else ref)
        except ModelNotFound:
            if "@" in self.model:
                raise
            production = self.registry.get(name, "latest")
        shadow = None
        if self.shadow is not None:
            shadow = self.registry.get(name, parse_model_ref(f"{name}@{self.shadow}")[1])
            if shadow.version == production.version:
                raise ValueError(f"--shadow {self.shadow} is version {shadow.version}, which is production already")
        return production, shadow

    def start(self) -> None:
        """Package what needs it, start every server and wait until all are ready."""
        self.production_version, self.shadow_version = self.resolve()
        try:
            bentos = {"production": self._package(self.production_version)}
            if self.shadow_version is not None:
                bentos["shadow"] = self._package(self.shadow_version)
            for role, bento in bentos.items():
                self.servers.append(serve_bento(bento, role=role, workdir=self.workdir, host=self.host))
            for server in self.servers:
                wait_ready(server)
                self.say(f"{server.role}: {bentos[server.role].tag} at {server.url}")
            self._start_gateway()
        except BaseException:
            self.stop()
            raise

    def _package(self, version: ModelVersion) -> PackagedBento:
        bento = package(self.registry, f"{version.name}@{version.version}", workdir=self.workdir, wheel=self.wheel)
        self.say(f"{version.name}@{version.version}: bento {bento.tag} ({'built' if bento.built else 'already built'})")
        return bento

    def _start_gateway(self) -> None:
        production = self.servers[0]
        log_dir = self.log_dir or default_log_dir(self.workdir, self.production_version, self.shadow_version)
        command = [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", production.url,
                   "--log-dir", str(log_dir), "--host", self.host, "--port", str(self.port),
                   "--mirror-percent", str(self.mirror_percent if self.shadow_version else 0)]
        if self.shadow_version is not None:
            command += ["--shadow-url", self.servers[1].url]
        profile = self.registry.profile(self.production_version.name, self.production_version.version)
        if profile is not None:  # the gateway then exports drift and live metrics against it
            path = log_dir.parent / f"{log_dir.name}.reference-profile.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(profile).encode())
            command += ["--reference-profile", str(path)]
        if self.monitoring_ttl_s is not None:
            command += ["--monitoring-ttl", str(self.monitoring_ttl_s)]
        if self.policy_file is not None:
            command += ["--policy-file", str(Path(self.policy_file).resolve())]
        token = self.feedback_token or secrets.token_urlsafe(24)
        token_file = self.workdir / "serve" / "feedback-token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.unlink(missing_ok=True)
        descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(token)
        command += ["--feedback-token-file", str(token_file)]
        gateway = start_process("gateway", command, url=f"http://{self.host}:{self.port}",
                                log=self.workdir / "serve" / "gateway.log")
        self.servers.append(gateway)
        wait_ready(gateway)
        self.say(f"gateway: {gateway.url} (prediction log {log_dir})")
        self.say(f"feedback: POST {gateway.url}/feedback with 'Authorization: Bearer {token}' (also in {token_file})")

    def check_alive(self) -> None:
        """Raise `ServingError` with the end of its log if a server has exited."""
        if dead := [s for s in self.servers if not s.alive()]:
            raise ServingError(f"{dead[0].role} exited with code {dead[0].process.returncode}; "
                               f"its log ({dead[0].log}) ends with:\n{dead[0].log_tail()}")

    def stop(self) -> None:
        """Stop every server, the gateway first; safe to call more than once."""
        for server in reversed(self.servers):
            code = stop_process(server)
            self.say(f"{server.role} stopped (exit code {code})")
        self.servers.clear()

    def run_until_signal(self) -> None:
        """Start, then serve until Ctrl-C or SIGTERM (or until a server dies), then stop.

        Both signals interrupt start-up too. Further signals are ignored while the servers
        stop, so that the gateway gets to flush the prediction log."""
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while True:
                time.sleep(0.5)
                self.check_alive()
        except KeyboardInterrupt:
            self.say("stopping")
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
