"""Starting component processes so that they can always be found and stopped again.

Every component runs in a session and process group of its own, with its output going to
a log file in the run folder. A process is remembered by its id *and* its start time
(from `/proc/<pid>/stat`), so that a state file read days later never signals a process
that merely reuses an old id. Stopping signals the whole group, last started first:
SIGTERM, then SIGKILL for whatever is still there after the grace period.

A control plane owned by a test run is tied to it with `PR_SET_PDEATHSIG`: if the test
process dies without cleaning up, the kernel kills the components. It sends SIGKILL, not
SIGTERM: all of them get the signal at once, and a kube-apiserver whose etcd goes first
hangs in its graceful shutdown for good. A detached control plane (`modelcycle cluster
up`) is not tied, so it outlives the command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    """A started component: enough to find, check and stop it from another process."""

    name: str
    pid: int
    start_ticks: int
    """Field 22 of /proc/<pid>/stat; tells this process from a later one with the same pid."""
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            log=str(data["log"]),
        )

    def is_running(self) -> bool:
        """True while the process lives (a zombie awaiting its parent counts as gone)."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] != "Z" and int(stat[21]) == self.start_ticks


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    cwd: Path,
    env: Mapping[str, str],
    tie_to_parent: bool,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start `argv` in a new session with stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None,
        )
    stat = _stat(process.pid)
    start_ticks = int(stat[21]) if stat else 0
    return process, ProcessRecord(name=name, pid=process.pid, start_ticks=start_ticks, log=str(log))


def stop(
    records: Sequence[ProcessRecord],
    *,
    timeout: float,
    owned: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> list[str]:
    """Stop the process groups of `records` in reverse order; return those that needed SIGKILL.

    Reverse order stops clients before the servers they talk to: a kube-apiserver that
    loses etcd first hangs in its shutdown until it is killed. `owned` are the `Popen`
    objects of processes this process started: they are reaped, so that no zombie
    outlives the stop.
    """
    killed = []
    for record in reversed(records):
        if not record.is_running():
            continue
        _signal_group(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(record.pid) and time.monotonic() < deadline:
            _reap(owned)
            time.sleep(0.02)
        if _group_alive(record.pid):
            killed.append(record.name)
            _signal_group(record.pid, signal.SIGKILL)
    for process in (owned or {}).values():
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    return killed


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1, chosen by the kernel."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def group_members(pgid: int) -> list[int]:
    """Ids of the live processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[2] != "Z" and int(stat[4]) == pgid:
                members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def _reap(owned: Mapping[int, subprocess.Popen[bytes]] | None) -> None:
    for process in (owned or {}).values():
        process.poll()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat, numbered from 0; the command name may contain spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    head, _, tail = raw.rpartition(")")
    pid_field, _, comm = head.partition(" (")
    return [pid_field, comm, *tail.split()]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
