"""`modelcycle md`: the ModelDeployments on the cluster, through the commands of
`modelcycle.cli.md`, loaded only when `md` runs.
"""

from __future__ import annotations

import typer

commands = typer.Typer()


@commands.command(
    "md",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def md(ctx: typer.Context) -> None:
    """ModelDeployments on the cluster: promote | rollback | status ([b]modelcycle md --help[/] for more)."""
    # Loaded on use: the operator package (the promotion patches) imports kopf and aiohttp,
    # which would add seconds to every other command's start.
    from modelcycle.cli.md import md_app

    md_app(args=ctx.args, prog_name="modelcycle md")
