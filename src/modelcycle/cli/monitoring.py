"""`modelcycle monitor`: a model version's live data, from a file or the gateway's prediction
log, checked against the reference profile stored at evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from modelcycle.cli.common import (
    DEFAULT_WORKDIR,
    EXIT_DRIFT,
    EXIT_PERFORMANCE,
    EXIT_USAGE,
    RegistryOpt,
    WorkdirOpt,
    _fail,
    _registry,
    _spec,
    console,
)

commands = typer.Typer()


@commands.command()
def monitor(
    ref: Annotated[str, typer.Argument(help="The model version: name, name@version or name@alias.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="New data to check: CSV, Parquet or JSON lines; with "
                                                 "the target column, the live metrics too.")] = None,
    log_dir: Annotated[Optional[Path], typer.Option("--log-dir", help="The gateway's prediction log folder.")] = None,
    window: Annotated[Optional[str], typer.Option(help="Span of the log to check, ending now (1h, 24h, 7d); "
                                                  "by default the spec's monitoring.window.")] = None,
    spec: Annotated[Optional[Path], typer.Option("--spec", "-s", help="Take the monitoring section from this spec "
                                                 "rather than the one the version was evaluated with.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML report.")] = Path("monitor-report.html"),
    result_path: Annotated[Path, typer.Option("--result", help="Where to write the JSON result.")] = Path(
        "monitor-result.json"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Check a model version's live data against its reference profile: drift of every input
    column and of the model's scores, data quality, and the live metrics where labels are known.
    Writes a JSON result and an HTML report.

    Exit code 0 when all is well, 5 on drift, 6 when the live performance breaches the goal."""
    import time

    from pydantic import ValidationError

    from modelcycle.artifacts import write_atomic
    from modelcycle.monitoring.monitors import log_window, monitor_log
    from modelcycle.monitoring.predictions import LogFormatError, read_prediction_log
    from modelcycle.monitoring.profiles import ReferenceProfile
    from modelcycle.monitoring.reports import render_monitoring_report
    from modelcycle.registry import RegistryError, parse_model_ref

    if (data is None) == (log_dir is None):
        raise _fail("give one of --data FILE or --log-dir DIR", EXIT_USAGE)
    try:
        name, version_ref = parse_model_ref(ref)
        reg = _registry(registry, workdir)
        version = reg.get(name, version_ref)
        stored = reg.profile(name, version.version)
    except (RegistryError, KeyError, ValueError) as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    if stored is None:
        raise _fail(f"{name}@{version.version} has no reference profile (it was registered before evaluation stored "
                    "one); register a new version with `modelcycle run`", EXIT_USAGE)
    profile = ReferenceProfile.model_validate(stored)
    settings = _spec(spec).monitoring if spec else profile.monitoring
    if window:
        try:
            settings = settings.model_validate({**settings.model_dump(), "window": window})
        except ValidationError:
            raise _fail(f"--window: expected a duration such as 30m, 24h or 7d, found {window!r}", EXIT_USAGE) from None
    try:
        if data is not None:
            current, scores, result = _monitor_data(data, profile, settings, reg, name, version.version)
        else:
            if not log_dir.is_dir():
                raise _fail(f"--log-dir: {log_dir} is not a prediction log folder", EXIT_USAGE)
            end = time.time()
            cut = log_window(profile, read_prediction_log(log_dir), start=end - settings.window_seconds, end=end)
            current, scores = cut.current, cut.scores
            result = monitor_log(profile, cut, settings=settings, source=str(log_dir))
    except (ValueError, LogFormatError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    if data is not None:
        result = result.model_copy(update={"model": name, "version": str(version.version)})
    write_atomic(result_path, result.model_dump_json(indent=2).encode())
    render_monitoring_report(result, profile, current, out, scores=scores)
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        _print_monitoring(result)
        console.print(f"result: {result_path}\nreport: {out}", soft_wrap=True)
    if result.verdict != "ok":
        raise typer.Exit(EXIT_PERFORMANCE if result.verdict == "performance" else EXIT_DRIFT)


def _monitor_data(path: Path, profile, settings, reg, name: str, number: int):
    """(current frame, scores, result) of `monitor --data`: the version's model scores the rows."""
    from modelcycle.data import DataError, read_source
    from modelcycle.monitoring.monitors import monitor_frame, scores_of
    from modelcycle.spec import DataSpec

    try:
        frame = read_source(DataSpec(source=str(path.resolve()), target=profile.target))
    except DataError as exc:
        raise ValueError(f"--data: {exc}") from None
    model = reg.load(name, number)
    result = monitor_frame(profile, frame, model=model, settings=settings, source=str(path))
    scores = None
    if len(frame):
        proba = model.predict_proba(frame)
        predictions = model.decide(proba) if proba is not None else model.predict(frame)
        scores = scores_of(profile, predictions=predictions.tolist(), probabilities=None if proba is None else [
            dict(zip(profile.classes or [], row, strict=True)) for row in proba.tolist()])
    return frame, scores, result


def _print_monitoring(result) -> None:
    from rich.markup import escape

    color = {"ok": "green", "drift": "yellow", "performance": "red"}[result.verdict]
    console.print(f"verdict [{color}]{result.verdict}[/] on {result.rows:,} rows of {escape(result.source)}",
                  highlight=False)
    for reason in result.reasons:
        console.print(f"  - {escape(reason)}", highlight=False)
    table = Table("column", "test", "score", "threshold", "drift", "why", box=None)
    columns = list(result.drift.columns) + ([result.drift.prediction] if result.drift.prediction else [])
    for c in columns:
        label = c.column if c is not result.drift.prediction else "(model score)"
        why = c.reason if c.stattest_kind == "p_value" else ""  # a distance's reason repeats the columns
        table.add_row(escape(label), c.stattest, f"{c.score:.4g}", f"{c.threshold:g}",
                      "[red]drifted[/]" if c.drifted else "no", escape(why))
    console.print(table)
    if result.performance:
        for metric in result.performance.metrics:
            mark = {"pass": "[green]pass[/]", "fail": "[red]fail[/]"}.get(metric.outcome, "[yellow]inconclusive[/]")
            console.print(f"  {mark} {escape(metric.message)}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
