"""`modelcycle cluster up | down | status | kubeconfig`: a cluster for people, not tests.

`up` starts the local control plane detached, so it keeps running after the command
returns, and prints the lines to paste (or `eval`) so that kubectl and helm talk to it:

    eval "$(modelcycle cluster up)"

Progress goes to stderr, so stdout holds only those lines. The control plane lives in
one run folder per user (`$TMPDIR/modelcycle-cluster-<uid>`, or `--run-dir`), whose state
file lets `down` and `status` find it from any shell. `up` is idempotent: with a healthy
control plane already running it only prints the lines again.

With `--use-current-kubeconfig` (or `MODELCYCLE_KUBECONFIG=<path>`) nothing is started:
`up` checks that the cluster of that kubeconfig answers, and the other commands refer to
it. `down` then forgets it and never touches the cluster itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from modelcycle.cluster.binaries import MissingBinary
from modelcycle.cluster.clusters import Cluster, KubectlError
from modelcycle.cluster.controlplane import (
    STATE_FILE,
    ControlPlane,
    ControlPlaneError,
    ControlPlaneSettings,
)

T = TypeVar("T")

EXTERNAL_FILE = "external-cluster.json"
"""Records the kubeconfig of a real cluster chosen with `up --use-current-kubeconfig`."""

cluster_app = typer.Typer(
    name="cluster",
    help="A local Kubernetes control plane (etcd, kube-apiserver, controllers, kwok nodes).",
    no_args_is_help=True,
)
_err = Console(stderr=True, soft_wrap=True)

RunDir = Annotated[
    Path,
    typer.Option(
        "--run-dir",
        envvar="MODELCYCLE_CLUSTER_DIR",
        help="Folder holding the control plane's certificates, data, logs and state.",
        file_okay=False,
    ),
]


def _default_run_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"modelcycle-cluster-{os.getuid()}"


@cluster_app.command()
def up(
    run_dir: RunDir = _default_run_dir(),
    use_current_kubeconfig: Annotated[
        bool,
        typer.Option(
            "--use-current-kubeconfig",
            help="Use the cluster of $KUBECONFIG (or ~/.kube/config) instead of starting one.",
        ),
    ] = False,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            envvar="MODELCYCLE_KUBECONFIG",
            help="Use the cluster of this kubeconfig instead of starting one.",
            dir_okay=False,
        ),
    ] = None,
    nodes: Annotated[int, typer.Option(min=1, help="Fake kwok nodes to register.")] = 3,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for readiness.")] = 60.0,
) -> None:
    """Start the local control plane in the background and print `export KUBECONFIG=...`."""
    run_dir = run_dir.absolute()
    if use_current_kubeconfig or kubeconfig is not None:
        if (run_dir / STATE_FILE).exists():
            _err.print(
                f"[red]error:[/red] a local control plane is recorded in {run_dir}; "
                "run `modelcycle cluster down` first"
            )
            raise typer.Exit(1)
        cluster = _fail_on_error(lambda: Cluster.from_kubeconfig(kubeconfig))
        _fail_on_error(lambda: cluster.kubectl("get", "--raw", "/readyz", timeout=timeout))
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (run_dir / EXTERNAL_FILE).write_text(json.dumps({"kubeconfig": str(cluster.kubeconfig)}))
        _err.print(f"using the existing cluster of {cluster.kubeconfig}")
        _print_exports(cluster)
        return

    if (run_dir / STATE_FILE).exists():
        running = ControlPlane.attach(run_dir)
        if running.is_ready():
            _err.print(f"the local control plane in {run_dir} is already running")
            _print_exports(running.cluster)
            return
        _err.print(f"cleaning up a control plane in {run_dir} that is no longer ready")
        running.stop()
        shutil.rmtree(run_dir, ignore_errors=True)

    (run_dir / EXTERNAL_FILE).unlink(missing_ok=True)
    plane = ControlPlane(
        run_dir=run_dir,
        settings=ControlPlaneSettings(fake_nodes=nodes, ready_timeout=timeout),
        detached=True,
    )
    _err.print(f"starting the local control plane in {run_dir} ...")
    cluster = _fail_on_error(plane.start)
    _err.print(
        f"ready in {plane.timings['ready']:.1f} s with {nodes} kwok nodes; "
        f"logs in {plane.logs}; stop it with `modelcycle cluster down`"
    )
    _print_exports(cluster)


@cluster_app.command()
def down(run_dir: RunDir = _default_run_dir()) -> None:
    """Stop the local control plane and delete its run folder (or forget a real cluster)."""
    run_dir = run_dir.absolute()
    external = run_dir / EXTERNAL_FILE
    if external.exists():
        external.unlink()
        _err.print("forgot the existing cluster; it was not touched")
    elif (run_dir / STATE_FILE).exists():
        ControlPlane.attach(run_dir).stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        _err.print(f"stopped the local control plane in {run_dir}")
    else:
        _err.print(f"no local control plane recorded in {run_dir}")


@cluster_app.command()
def status(run_dir: RunDir = _default_run_dir()) -> None:
    """Show each component and whether the API server is ready; exit 1 if it is not."""
    run_dir = run_dir.absolute()
    if (cluster := _external(run_dir)) is not None:
        answer = cluster.kubectl("get", "--raw", "/readyz", check=False)
        ready = answer.returncode == 0
        typer.echo(f"existing cluster of {cluster.kubeconfig}: {'ready' if ready else 'NOT ready'}")
        raise typer.Exit(0 if ready else 1)
    if not (run_dir / STATE_FILE).exists():
        typer.echo(f"no local control plane recorded in {run_dir}")
        raise typer.Exit(1)
    plane = ControlPlane.attach(run_dir)
    table = Table("component", "pid", "state")
    for component in plane.status():
        state = "running" if component.running else "[red]exited[/red]"
        table.add_row(component.name, str(component.pid), state)
    Console().print(table)
    ready = plane.is_ready()
    typer.echo(f"kube-apiserver /readyz: {'ok' if ready else 'NOT ready'}")
    typer.echo(f"kubeconfig: {plane.kubeconfig}")
    typer.echo(f"logs: {plane.logs}")
    raise typer.Exit(0 if ready else 1)


@cluster_app.command()
def kubeconfig(run_dir: RunDir = _default_run_dir()) -> None:
    """Print the path of the kubeconfig: `export KUBECONFIG=$(modelcycle cluster kubeconfig)`."""
    run_dir = run_dir.absolute()
    if (cluster := _external(run_dir)) is not None:
        typer.echo(str(cluster.kubeconfig))
        return
    if not (run_dir / STATE_FILE).exists():
        _err.print(f"no local control plane recorded in {run_dir}; start one with `modelcycle cluster up`")
        raise typer.Exit(1)
    typer.echo(str(ControlPlane.attach(run_dir).kubeconfig))


def _external(run_dir: Path) -> Cluster | None:
    record = run_dir / EXTERNAL_FILE
    if not record.exists():
        return None
    return Cluster(kubeconfig=Path(json.loads(record.read_text())["kubeconfig"]))


def _print_exports(cluster: Cluster) -> None:
    for key, value in cluster.env.items():
        typer.echo(f"export {key}={value}")


def _fail_on_error(action: Callable[[], T]) -> T:
    try:
        return action()
    except (
        MissingBinary, ControlPlaneError, KubectlError, FileNotFoundError, subprocess.TimeoutExpired
    ) as error:
        _err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    cluster_app()
