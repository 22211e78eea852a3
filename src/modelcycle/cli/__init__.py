"""The `modelcycle` command line: the lifecycle from a terminal.

Exit codes, the same for every command:
  0  done
  1  an unexpected failure (the message says where)
  2  bad usage or an invalid spec
  3  the model was trained but failed a gate: it is in the registry as rejected
  4  the data failed validation; nothing was trained or registered
  5  monitor: the inputs or the model's scores drifted
  6  monitor: the live performance breaches the goal
"""

from __future__ import annotations

import sys

import typer

from modelcycle.cli import batch, deployments, loop, models, monitoring, project, serving
from modelcycle.cli.common import (
    EXIT_DRIFT,
    EXIT_FAILURE,
    EXIT_INVALID_DATA,
    EXIT_PERFORMANCE,
    EXIT_REJECTED,
    EXIT_USAGE,
    err,
)
from modelcycle.cluster.cli import cluster_app

__all__ = ["EXIT_DRIFT", "EXIT_FAILURE", "EXIT_INVALID_DATA", "EXIT_PERFORMANCE", "EXIT_REJECTED", "EXIT_USAGE",
           "app", "main"]

app = typer.Typer(
    help="modelcycle: the machine-learning lifecycle, from spec to serving, on Kubernetes.\n\n" + __doc__.split("\n\n", 1)[1],
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# One module per part of the lifecycle, each with its own `commands` (or command group); they
# share only `modelcycle.cli.common`. `modelcycle --help` lists them in the order mounted here:
# a new module is a file in this package and one line below.
app.add_typer(project.commands)  # version, init, run, demo, compile
app.add_typer(monitoring.commands)  # monitor
app.add_typer(loop.commands)  # loop
app.add_typer(serving.commands)  # package, serve
app.add_typer(deployments.commands)  # md
app.add_typer(batch.commands)  # predict, export
app.add_typer(models.models_app, name="models")
app.add_typer(project.data_app, name="data")
app.add_typer(cluster_app, name="cluster")
app.add_typer(models.shadow_app, name="shadow")


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
