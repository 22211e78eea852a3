"""What every command of the `modelcycle` CLI shares: the exit codes, the consoles, the
options that mean the same everywhere (`--workdir`, `--registry`), the few helpers that
turn a core error into a one-line message and an exit code, and the summary of a model
version that both `run` and `models show` print.

It imports only typer and rich: a command imports the core inside its function, so that
``modelcycle --help`` does not load pandas, kfp or BentoML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

EXIT_FAILURE, EXIT_USAGE, EXIT_REJECTED, EXIT_INVALID_DATA = 1, 2, 3, 4
EXIT_DRIFT, EXIT_PERFORMANCE = 5, 6
DEFAULT_WORKDIR = Path(".modelcycle")

console = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines name paths: never hard-wrap them

SpecArg = Annotated[Path, typer.Argument(help="The project spec.", show_default=True)]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Where data versions, runs and the registry live.")]
RegistryOpt = Annotated[Optional[str], typer.Option("--registry", help="Registry path or fsspec URL (default: WORKDIR/registry).")]


def _fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _spec(path: Path):
    from modelcycle.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def _registry(registry: str | None, workdir: Path):
    from modelcycle.registry import Registry

    return Registry(registry or str(workdir / "registry"))


def _print_version(v, *, registry=None) -> None:
    """The verdict, what was selected and why, every candidate's CV score, the comparison with the
    parent version (when `registry` is given), and the gates with where each threshold came from."""
    from rich.table import Column

    if v.status == "rejected":
        verdict = f"[red]rejected[/] (failed {', '.join(g.name for g in v.gates if not g.passed) or 'a gate'})"
    else:
        verdict = "[green]registered[/]"
    aliases = f", alias {', '.join(v.aliases)}" if v.aliases else ", no alias"
    console.print(f"\n[b]{v.name}@{v.version}[/]  {verdict}{aliases}", highlight=False)
    params = {k: value for k, value in v.params.items() if k != "algorithm"}
    console.print(f"selected [b]{v.params.get('algorithm', '?')}[/] ({_params(params)})", highlight=False)
    if v.selection:
        console.print(v.selection, highlight=False)
    if v.candidates:
        c0 = v.candidates[0]
        table = Table(Column("", no_wrap=True), Column("candidate", no_wrap=True),
                      Column(f"CV {c0.metric}", no_wrap=True, justify="right"),
                      Column("± std", no_wrap=True, justify="right"), "parameters", box=None,
                      title=f"candidates: {c0.cv_folds}-fold CV on {c0.cv_rows:,} training rows", title_justify="left")
        for c in v.candidates:
            table.add_row("✓" if c.selected else "", c.algorithm, f"{c.cv_mean:.4f}", f"{c.cv_std:.4f}", _params(c.params))
        console.print()
        console.print(table)
    parent = v.lineage.parent_version
    if registry is not None and parent is not None:
        before = registry.get(v.name, parent)
        shared = [g.name for g in v.gates if g.name in before.metrics]
        figures = ", ".join(f"{m} {before.metrics[m]:.4f} -> {v.metrics[m]:.4f}" for m in shared if m in v.metrics)
        role = ", ".join(before.aliases) or before.status
        console.print(f"compared with {v.name}@{parent} ({role}){': ' + figures if figures else ''}", highlight=False)
    console.print()
    table = Table("gate", "value", "needs", "result", "threshold from", box=None)
    for g in v.gates:
        value = "n/a" if g.value is None else f"{g.value:.4g}"
        table.add_row(g.name, value, f"{g.op} {g.threshold:g}", "[green]PASS[/]" if g.passed else "[red]FAIL[/]",
                      g.source or "-")
    console.print(table)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"
