"""The commands that read and steer the registry: `models list | show | alias | sign`, and
`shadow report`, the verdict on a shadow from the gateway's prediction log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelcycle.cli.common import (
    DEFAULT_WORKDIR,
    EXIT_REJECTED,
    EXIT_USAGE,
    RegistryOpt,
    WorkdirOpt,
    _fail,
    _print_version,
    _registry,
    console,
)
from modelcycle.monitoring.shadow import ShadowPolicy

DEFAULT_POLICY = ShadowPolicy()
"""The promotion thresholds of `shadow report` unless given: the policy's own defaults."""

models_app = typer.Typer(help="Registered models: list, show, alias, sign.", no_args_is_help=True)
shadow_app = typer.Typer(help="Shadow validation: production and shadow predictions compared.", no_args_is_help=True)


@models_app.command("list")
def models_list(workdir: WorkdirOpt = DEFAULT_WORKDIR, registry: RegistryOpt = None) -> None:
    """Every registered version of every model."""
    reg = _registry(registry, workdir)
    table = Table("model", "version", "status", "aliases", "algorithm", "created", "sha256")
    for name in reg.models():
        for v in reg.versions(name):
            status = f"[green]{v.status}[/]" if v.status == "registered" else f"[red]{v.status}[/]"
            table.add_row(name, str(v.version), status, ", ".join(v.aliases), str(v.params.get("algorithm", "")),
                          v.created_at.strftime("%Y-%m-%d %H:%M"), v.sha256[:12])
    console.print(table)


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="name, name@version or name@alias")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the version as JSON.")] = False,
) -> None:
    """One model version: lineage, gates, metrics."""
    from modelcycle.registry import parse_model_ref

    name, version_ref = parse_model_ref(ref)
    reg = _registry(registry, workdir)
    try:
        v = reg.get(name, version_ref)
    except KeyError as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    if as_json:
        console.print_json(v.model_dump_json())
        return
    _print_version(v, registry=reg)
    console.print("\n[b]lineage[/]")
    for key, value in v.lineage.model_dump().items():
        console.print(f"  {key}: {value}", soft_wrap=True, highlight=False)  # ids and paths: never cut them
    console.print(f"  artifact: {v.artifact_uri} ({v.size_bytes / 1e6:.2f} MB, sha256 {v.sha256})", soft_wrap=True)
    console.print("\n[b]metrics[/]")
    for key, value in sorted(v.metrics.items()):
        console.print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    console.print(f"\n[b]params[/] {json.dumps(v.params)}")


@models_app.command("alias")
def models_alias(
    ref: Annotated[str, typer.Argument(help="name@version")],
    alias: Annotated[str, typer.Argument(help="champion, challenger, or any label")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias instead.")] = False,
) -> None:
    """Point an alias at a version (or remove it)."""
    from modelcycle.registry import RegistryError, parse_model_ref

    name, version_ref = parse_model_ref(ref)
    reg = _registry(registry, workdir)
    try:
        if remove:
            reg.remove_alias(name, alias)
            console.print(f"removed {name}@{alias}")
            return
        v = reg.get(name, version_ref)
        reg.set_alias(name, alias, v.version)
    except (RegistryError, KeyError, ValueError) as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    console.print(f"{name}@{alias} -> version {v.version}")


@models_app.command("sign")
def models_sign(
    ref: Annotated[str, typer.Argument(help="name@version or name@alias")],
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Sign a version with the signing key (MODELCYCLE_SIGNING_KEY): one registered before
    signing existed, once its bytes match its sha256; or a signed one again, with a new key,
    once its signature verifies (key rotation). Nothing is unpickled."""
    from modelcycle.registry import RegistryError, parse_model_ref

    name, version_ref = parse_model_ref(ref)
    try:
        v = _registry(registry, workdir).sign(name, version_ref)
    except (RegistryError, KeyError, ValueError) as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    console.print(f"signed {name}@{v.version} with key {v.signature.key_id}")


@shadow_app.command("report")
def shadow_report(
    log_dir: Annotated[Path, typer.Argument(help="The gateway's prediction log folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML report.")] = Path("shadow-report.html"),
    min_requests: Annotated[int, typer.Option(help="Compared requests needed before a promote verdict.")] = (
        DEFAULT_POLICY.min_requests),
    min_agreement: Annotated[float, typer.Option(help="Smallest share of rows with the same prediction.")] = (
        DEFAULT_POLICY.min_agreement),
    max_latency_ratio: Annotated[float, typer.Option(help="Largest shadow/production p50 latency ratio.")] = (
        DEFAULT_POLICY.max_latency_ratio),
    max_error_rate: Annotated[float, typer.Option(help="Largest share of mirrored requests the shadow failed.")] = (
        DEFAULT_POLICY.max_error_rate),
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON too.")] = False,
) -> None:
    """Compare the shadow with production from the prediction log; write an HTML report with plots.

    Exit code 0 for a promote or hold verdict, 3 for reject."""
    from pydantic import ValidationError

    from modelcycle.monitoring.predictions import read_prediction_log
    from modelcycle.monitoring.shadow import compare_shadow, render_shadow_report

    try:
        policy = ShadowPolicy(min_requests=min_requests, min_agreement=min_agreement,
                              max_latency_ratio=max_latency_ratio, max_error_rate=max_error_rate)
    except ValidationError as exc:
        raise _fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()),
                    EXIT_USAGE) from None
    if not log_dir.is_dir():
        raise _fail(f"{log_dir}: no such prediction log folder", EXIT_USAGE)
    log = read_prediction_log(log_dir)
    comparison = compare_shadow(log, policy=policy)
    render_shadow_report(comparison, log, out)
    if as_json:
        console.print_json(comparison.model_dump_json())
    color = {"promote": "green", "hold": "yellow", "reject": "red"}[comparison.verdict]
    console.print(f"verdict [{color}]{comparison.verdict}[/] on {comparison.compared_requests:,} compared requests")
    for reason in comparison.reasons:
        console.print(f"  - {reason}")
    console.print(f"report: {out}")
    if comparison.verdict == "reject":
        raise typer.Exit(EXIT_REJECTED)
