"""`python -m modelcycle.cli`: the `modelcycle` command."""

from modelcycle.cli import main

main()
