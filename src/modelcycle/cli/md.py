"""`modelcycle md`: conveniences over the ModelDeployment fields the operator acts on.

- `promote NAME` sets `spec.shadow.approved: true`; the operator promotes the shadow once
  it is ready (never a rejected one), exactly as after `kubectl patch`.
- `rollback NAME` removes the shadow if there is one; otherwise it puts back the
  production version the last promotion replaced. Either way it records the change in
  the `modelcycle.io/last-rollback` annotation, which the operator copies into status
  with an Event.
- `status NAME` shows the versions, conditions and the latest shadow comparison.

They talk to the cluster with kubectl (`modelcycle.cluster.Cluster`), so they use the
same kubeconfig and credentials as kubectl. `modelcycle md` (`deployments`) loads them on use.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelcycle.cluster import Cluster, KubectlError
from modelcycle.operator.promotion import restore_patch, shadow_removal_patch

md_app = typer.Typer(help="ModelDeployments: status, promote, rollback.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)

NameArg = Annotated[str, typer.Argument(help="The ModelDeployment's name.")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Its namespace [default: kubectl's].")]
KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", dir_okay=False, help="The cluster's kubeconfig [default: $KUBECONFIG].")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _target(name: str, namespace: str | None, kubeconfig: Path | None) -> tuple[Cluster, list[str]]:
    try:
        cluster = Cluster.from_kubeconfig(kubeconfig)
    except FileNotFoundError as error:
        raise _fail(str(error)) from None
    return cluster, ["md", name, *(["-n", namespace] if namespace else [])]


def _get(cluster: Cluster, ref: list[str]) -> dict[str, Any]:
    try:
        return json.loads(cluster.kubectl("get", *ref, "-o", "json").stdout)
    except KubectlError as error:
        raise _fail(error.stderr.strip() or str(error)) from None


def _patch(cluster: Cluster, ref: list[str], patch: dict[str, Any]) -> None:
    try:
        cluster.kubectl("patch", *ref, "--type=merge", "-p", json.dumps(patch))
    except KubectlError as error:
        raise _fail(error.stderr.strip() or str(error)) from None


@md_app.command()
def promote(name: NameArg, namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None) -> None:
    """Approve the shadow: the operator makes it production once it is ready."""
    cluster, ref = _target(name, namespace, kubeconfig)
    md = _get(cluster, ref)
    shadow = md["spec"].get("shadow")
    if not shadow:
        raise _fail(f"md/{name} has no spec.shadow to promote", code=2)
    _patch(cluster, ref, {
        "metadata": {"resourceVersion": md["metadata"]["resourceVersion"]},
        "spec": {"shadow": {"approved": True}},
    })
    _out.print(f"approved shadow version {shadow['version']} of md/{name}; the operator promotes it once it is ready")


@md_app.command()
def rollback(
    name: NameArg,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
    reason: Annotated[str | None, typer.Option(help="Why, for status and the Event.")] = None,
) -> None:
    """Remove the shadow, or without one, restore the version the last promotion replaced."""
    cluster, ref = _target(name, namespace, kubeconfig)
    md = _get(cluster, ref)
    why = reason or f"rolled back by {getpass.getuser()} with modelcycle md rollback"
    if md["spec"].get("shadow"):
        patch = shadow_removal_patch(md, reason=why)
        done = f"removed shadow version {md['spec']['shadow']['version']} of md/{name}"
    else:
        try:
            patch = restore_patch(md, reason=why)
        except ValueError as error:
            raise _fail(f"md/{name}: {error}", code=2) from None
        done = f"md/{name} production goes back to version {patch['spec']['production']['version']}"
    _patch(cluster, ref, patch)
    _out.print(done)


@md_app.command()
def status(name: NameArg, namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None) -> None:
    """Versions, conditions and the latest shadow comparison."""
    cluster, ref = _target(name, namespace, kubeconfig)
    md = _get(cluster, ref)
    spec, state = md["spec"], md.get("status") or {}
    shadow = spec.get("shadow")
    _out.print(f"[bold]md/{name}[/] model {spec['model']}, promotion {spec.get('promotion', {}).get('mode', 'manual')}")
    _out.print(f"  production: version {spec['production']['version']} ({spec['production'].get('image') or 'model server'})")
    if shadow:
        _out.print(f"  shadow:     version {shadow['version']} ({shadow.get('image') or 'model server'}), mirrored "
                   f"{shadow.get('mirrorPercent', 100):g}%{', approved' if shadow.get('approved') else ''}")
    if state.get("observedGeneration") != md["metadata"].get("generation"):
        _out.print("  [yellow]the operator has not seen the latest spec yet[/]")
    table = Table("condition", "status", "reason", "message", box=None)
    for item in state.get("conditions") or []:
        table.add_row(item["type"], item["status"], item["reason"], item["message"])
    _out.print(table)
    comparison = state.get("comparison")
    if comparison:
        figures = ", ".join(
            f"{key} {comparison[key]}" for key in ("agreement", "latencyRatio", "shadowErrorRate", "comparedRequests")
            if key in comparison
        )
        _out.print(f"  comparison (shadow {comparison.get('shadowVersion')}): {comparison.get('verdict')}; {figures}")
    for key in ("lastPromotion", "lastRollback"):
        record = state.get(key)
        if record:
            _out.print(f"  {key}: {record['from']} -> {record['to']} at {record['at']}: {record['reason']}")
