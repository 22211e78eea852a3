"""A real PostgreSQL server for the tests, on a free port of 127.0.0.1, with password
(scram-sha-256) authentication: what a SQL data source with credentials meets.

Debian's `postgresql` package provides the binaries (`make test` installs it); the server
runs as the `postgres` user (it refuses root) from a data folder of the test run, and is
stopped with it."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelcycle.cluster.processes import free_ports


@dataclass
class SqlServer:
    port: int
    user: str
    password: str
    database: str
    folder: Path

    @property
    def url(self) -> str:
        """The SQLAlchemy URL without the password, as a spec names it."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.database}"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"{name} of PostgreSQL not found: apt-get install postgresql (make test does)")
    return found[-1]


def _as_postgres(*command: str, **kwargs) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, **kwargs)


def start() -> tuple[SqlServer, subprocess.Popen]:
    """A fresh server in a folder of its own under the system's temporary folder: the
    postgres user must reach it, which pytest's private (0700) temporary folders forbid."""
    folder = Path(tempfile.mkdtemp(prefix="modelcycle-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    server = SqlServer(port=free_ports(1)[0], user="modelcycle_reader", password=secrets.token_urlsafe(18),
                       database="sales", folder=folder)
    init = _as_postgres(_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-host=scram-sha-256",
                        "--auth-local=trust", timeout=120)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
    log = open(folder / "postgres.log", "wb")
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    process = subprocess.Popen([*prefix, _bin("postgres"), "-D", str(data), "-p", str(server.port), "-h", "127.0.0.1",
                                "-k", str(sockets)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    psql = [_bin("psql"), "-h", str(sockets), "-p", str(server.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    deadline = time.monotonic() + 30
    while _as_postgres(*psql, "-c", "select 1", timeout=10).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"postgres did not start: {(folder / 'postgres.log').read_text()[-2000:]}")
        time.sleep(0.2)
    for statement in (f"CREATE ROLE {server.user} LOGIN PASSWORD '{server.password}'",
                      f"CREATE DATABASE {server.database} OWNER {server.user}"):
        done = _as_postgres(*psql, "-c", statement, timeout=30)
        if done.returncode != 0:
            process.kill()
            raise RuntimeError(f"setting up the database failed: {done.stderr}")
    return server, process


def stop(server: SqlServer, process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(server.folder, ignore_errors=True)
