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

import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from modelcycle import __version__
from modelcycle.cluster.cli import cluster_app
from modelcycle.serving.cli import serving_commands

EXIT_FAILURE, EXIT_USAGE, EXIT_REJECTED, EXIT_INVALID_DATA = 1, 2, 3, 4
EXIT_DRIFT, EXIT_PERFORMANCE = 5, 6
DEFAULT_WORKDIR = Path(".modelcycle")
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "fraud"

app = typer.Typer(
    help="modelcycle: the machine-learning lifecycle, from spec to serving, on Kubernetes.\n\n" + __doc__.split("\n\n", 1)[1],
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Registered models: list, show, alias.", no_args_is_help=True)
data_app = typer.Typer(help="Data versions and validation.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster")
shadow_app = typer.Typer(help="Shadow validation: production and shadow predictions compared.", no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")

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


@app.command()
def version() -> None:
    """Print the modelcycle version."""
    console.print(__version__)


@app.command()
def init(
    data: Annotated[Path, typer.Argument(help="A CSV or Parquet file with a sample of the data.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The column to predict.")],
    name: Annotated[Optional[str], typer.Option(help="Project name [default: the file's name].")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the spec.")] = Path("modelcycle.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec.")] = False,
) -> None:
    """Write a starter spec from a data file: column kinds, task and candidates are guessed, and the
    primary gate is proposed from a quick baseline (a dummy and a linear model, cross-validated)."""
    import pandas as pd
    import yaml

    from modelcycle.artifacts import write_atomic
    from modelcycle.data import DataError, read_source
    from modelcycle.evaluation import BASELINE_MAX_ROWS, measure_baseline
    from modelcycle.spec import DataSpec, parse_spec, spec_from_text

    if out.exists() and not force:
        raise _fail(f"{out} exists; pass --force to overwrite it", EXIT_USAGE)
    try:
        frame = read_source(DataSpec(source=str(data.resolve()), target=target))
    except DataError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    if target not in frame.columns:
        raise _fail(f"--target: no column {target!r} in {data} (found: {', '.join(map(str, frame.columns))})", EXIT_USAGE)
    y = frame[target]
    n_classes = y.nunique()
    task = "binary_classification" if n_classes == 2 else (
        "multiclass_classification" if (not pd.api.types.is_float_dtype(y) and n_classes <= 20) else "regression")
    numeric, categorical, dates, id_column, time_column = [], [], [], None, None
    for col in frame.columns:
        if col == target:
            continue
        s = frame[col]
        if pd.api.types.is_datetime64_any_dtype(s):
            dates.append(col)
            time_column = time_column or col
        elif pd.api.types.is_bool_dtype(s):
            categorical.append(col)
        elif pd.api.types.is_numeric_dtype(s):
            numeric.append(col)
        elif s.nunique() > 0.9 * len(s) and id_column is None:
            id_column = col
        else:
            categorical.append(col)
    classification = task != "regression"
    metric = {"binary_classification": "roc_auc", "multiclass_classification": "f1", "regression": "r2"}[task]
    spec = {
        "name": re.sub(r"[^a-z0-9-]+", "-", (name or data.stem).lower()).strip("-")[:63] or "model",
        "task": task,
        "goal": {"description": "Say what the model is for, and what a mistake costs.",
                 "primary": {"metric": metric, "min": 0.0}},  # proposed from the baseline below
        "data": {"source": str(data), "target": target, **({"id_column": id_column} if id_column else {}),
                 **({"time_column": time_column} if time_column else {})},
        "features": {"numeric": numeric, "categorical": categorical, "datetime": dates},
        "split": {"strategy": "stratified" if classification else "random", "test_size": 0.2},
        "training": {"cv_folds": 3, "search_iterations": 6, "candidates": [
            {"algorithm": "logistic_regression" if classification else "ridge",
             "search_space": {"C" if classification else "alpha": {"loguniform": [0.01, 10]}}},
            {"algorithm": "random_forest", "search_space": {"max_depth": [6, 10, None], "min_samples_leaf": [1, 5, 20]}},
            {"algorithm": "hist_gradient_boosting", "search_space": {"learning_rate": {"loguniform": [0.03, 0.3]}}},
        ]},
        "budget": {"max_latency_ms_p95": 50, "max_artifact_mb": 100},
    }
    with console.status(f"measuring a baseline {metric} on {min(len(frame), BASELINE_MAX_ROWS):,} rows"):
        try:
            baseline = measure_baseline(parse_spec(spec, source=str(out)), frame)
        except ValueError as exc:
            raise _fail(f"{data}: {exc}", EXIT_USAGE) from None
    proposed = baseline.proposed_threshold()
    spec["goal"]["primary"] = proposed.model_dump(exclude_none=True)
    bound = f">= {proposed.min:g}" if proposed.min is not None else f"<= {proposed.max:g}"
    comment = "".join(f"  # {line}\n" for line in [
        f"The primary gate was proposed by `modelcycle init` from a quick baseline: {baseline.folds}-fold",
        f"cross-validated {metric} on {baseline.rows:,} rows of {data.name}, with the features below.",
        f"  {baseline.dummy:<24} {baseline.dummy_mean:.3f} ± {baseline.dummy_std:.3f}",
        f"  {baseline.linear:<24} {baseline.linear_mean:.3f} ± {baseline.linear_std:.3f}",
        f"{metric} {bound} is {baseline.rule}: a model below it has learned little.",
        "It is a floor, not a target: raise it to what a mistake costs the business.",
    ])
    text = yaml.safe_dump(spec, sort_keys=False, width=120).replace("\n  primary:\n", f"\n{comment}  primary:\n", 1)
    spec_from_text(text, source=str(out))  # what we write must load
    write_atomic(out, text.encode())
    console.print(f"wrote {out}: task [b]{task}[/], {len(numeric)} numeric, {len(categorical)} categorical, "
                  f"{len(dates)} datetime column(s).")
    console.print(f"baseline {metric}: {baseline.dummy} {baseline.dummy_mean:.3f} ± {baseline.dummy_std:.3f}, "
                  f"{baseline.linear} {baseline.linear_mean:.3f} ± {baseline.linear_std:.3f}; proposed gate "
                  f"{metric} {bound} ({baseline.rule}).")
    if not baseline.learns:
        console.print(f"[yellow]warning:[/] {baseline.linear} did no better than a dummy: check that {target!r} is the "
                      "column to predict and that the features can tell its values apart.")
    console.print(f"Review the goal, then run [b]modelcycle run {out}[/].")


class _PhaseProgress:
    """A stdout stand-in: keeps kfp.local's output in the log file and turns its task lines
    into a rich status line per phase (kfp.local replaces the root logger's handlers, so
    its stdout is the one place to listen)."""

    _start = re.compile(r"Executing task .*?'(?P<task>[\w-]+)'")
    _end = re.compile(r"Task .*?'(?P<task>[\w-]+)'.* finished with status .*?(?P<status>SUCCESS|FAILURE)")
    _color = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, status, log, out: Console) -> None:
        self.status = status
        self.out = out
        self.log = log
        self.running: dict[str, int] = {}
        self._partial = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(self._color.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def _line(self, text: str) -> None:
        if m := self._start.search(text):
            self.running[m["task"]] = self.running.get(m["task"], 0) + 1
        elif m := self._end.search(text):
            self.running[m["task"]] = self.running.get(m["task"], 1) - 1
            mark = "[green]✓[/]" if m["status"] == "SUCCESS" else "[red]✗[/]"
            self.out.print(f"  {mark} {m['task']}")
        else:
            return
        busy = [t if n == 1 else f"{t} ×{n}" for t, n in self.running.items() if n > 0]
        self.status.update(f"running {', '.join(busy)}" if busy else "working")


def _run(spec_path: Path, workdir: Path, registry: str | None) -> None:
    from modelcycle.pipelines import run_local
    from modelcycle.registry import parse_model_ref

    spec = _spec(spec_path)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "last-run.log"
    console.print(f"[b]{spec.name}[/]: {spec.task}, {len(spec.training.candidates)} candidate(s), "
                  f"primary {spec.goal.primary.metric}; running the pipeline locally (kfp.local)")
    screen = Console(file=sys.stdout)  # the terminal, before stdout is redirected to the log
    with screen.status("starting") as status, open(log_path, "w") as log:
        progress = _PhaseProgress(status, log, screen)
        try:
            with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(log):
                result = run_local(spec_path, workdir=workdir, registry_uri=registry)
        except RuntimeError as exc:
            tail = log_path.read_text().splitlines()
            reason = _failure_reason(tail)
            code = EXIT_INVALID_DATA if "data validation failed" in reason else EXIT_FAILURE
            raise _fail(f"{_PhaseProgress._color.sub('', str(exc))}\n{reason}\nfull log: {log_path}", code) from None
    name, ref = parse_model_ref(result.model_version)
    reg = _registry(registry, workdir)
    version = reg.get(name, ref)
    _print_version(version, registry=reg)
    console.print(f"\nreport:   {result.report}\nregistry: {registry or workdir / 'registry'}\n"
                  f"log:      {log_path}\ntook {result.seconds:.1f} s", soft_wrap=True)
    if version.status == "rejected":
        for gate in version.gates:
            if not gate.passed:
                console.print(f"[red]rejected[/]: {gate.describe()}", highlight=False)
        raise typer.Exit(EXIT_REJECTED)


def _failure_reason(lines: list[str]) -> str:
    """The last exception of the failed task, out of the kfp log: its first line and the
    indented lines that follow it, up to the first blank one."""
    lines = [_PhaseProgress._color.sub("", line).strip() for line in lines]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]+(Error|Exception): ", lines[i]):
            j = i
            while j + 1 < len(lines) and lines[j + 1]:
                j += 1
            return "\n".join(lines[i : j + 1])
    return ""


@app.command()
def run(
    spec: SpecArg = Path("modelcycle.yaml"),
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Run the training pipeline locally (kfp.local): ingest, validate, train, evaluate, register."""
    _run(spec, workdir, registry)


@app.command()
def demo(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    rows: Annotated[int, typer.Option(help="Rows of example data to generate.")] = 20_000,
) -> None:
    """Generate the bundled fraud example's data and run the whole pipeline on it."""
    import importlib.util

    spec_path = EXAMPLE_DIR / "modelcycle.yaml"
    data_path = EXAMPLE_DIR / "data" / "transactions.parquet"
    if not spec_path.exists():
        raise _fail(f"the example is not here: {spec_path} (run demo from a checkout)")
    if not data_path.exists():
        module_spec = importlib.util.spec_from_file_location("fraud_generate", EXAMPLE_DIR / "generate.py")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        frame = module.generate(rows)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(data_path.with_suffix(".tmp"), index=False)
        data_path.with_suffix(".tmp").replace(data_path)
        console.print(f"generated {len(frame):,} example transactions in {data_path}")
    _run(spec_path, workdir, None)


@app.command("compile")
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the IR YAML.")] = Path("modelcycle-pipeline.yaml"),
) -> None:
    """Compile the training pipeline to Kubeflow Pipelines IR YAML, for the Kubeflow UI."""
    from modelcycle.pipelines import compile_pipeline

    path = compile_pipeline(out)
    console.print(f"wrote {path}; upload it in the Kubeflow Pipelines UI and pass your spec as [b]spec_yaml[/].")


@data_app.command("validate")
def data_validate(
    data: Annotated[Path, typer.Argument(help="A CSV, JSON lines or Parquet file to check.")],
    spec: Annotated[Path, typer.Option("--spec", "-s", help="The project spec.")] = Path("modelcycle.yaml"),
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    examples: Annotated[int, typer.Option("--examples", "-n", min=1, help="Example rows shown per problem.")] = 3,
) -> None:
    """Check a data file against the schema of the latest data version that passed validation (or
    the spec's rules), and list every problem: errors and warnings, each with its column, check,
    count and example rows. Rows are 0-based data rows; lines are lines of the file, where known.

    Exit code 0 when there are warnings only, 4 when there is an error."""
    from rich.markup import escape
    from rich.table import Column

    from modelcycle.data import DataError, DataStore, first_data_line, read_source
    from modelcycle.lifecycle import SCHEMA_FILE
    from modelcycle.validation import DataSchema, infer_schema, validate

    project = _spec(spec)
    source = project.data.model_copy(update={"source": str(data.resolve()), "format": "auto"})
    try:
        frame = read_source(source)
    except DataError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    store = DataStore(workdir / "data")
    schema, against = None, "the spec's rules (no data version has passed validation yet)"
    for version in reversed(store.versions()):
        if store.invalid_report(version.id) is None and (text := store.attachment(version.id, SCHEMA_FILE)):
            schema, against = DataSchema.model_validate_json(text), f"data version {version.short_id}"
            break
    schema = schema or infer_schema(frame, project)
    report = validate(frame, schema, include_target=project.data.target in frame, id_column=project.data.id_column,
                      n_examples=examples)
    if report.issues and (where := first_data_line(source, rows=len(frame))):
        report = report.number_lines(source=str(data), first_line=where[1])
    if as_json:
        console.print_json(report.model_dump_json())
    else:
        console.print(f"checked {data} against {against}")
        table = Table("severity", "column", "check", Column("rows", justify="right"), "examples", show_lines=True)
        for issue in report.issues:
            check = escape(issue.check) + (f"\n[dim]{escape(issue.detail)}[/]" if issue.detail else "")
            table.add_row(f"[{'red' if issue.severity == 'error' else 'yellow'}]{issue.severity}[/]",
                          escape(issue.column or "-"), check, f"{issue.count:,}", escape(issue.shown("\n")))
        if report.issues:
            console.print(table, highlight=False)
            console.print(report.numbering, highlight=False)
        console.print(f"{report.rows:,} rows: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    if not report.ok:
        raise typer.Exit(EXIT_INVALID_DATA)


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


@shadow_app.command("report")
def shadow_report(
    log_dir: Annotated[Path, typer.Argument(help="The gateway's prediction log folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML report.")] = Path("shadow-report.html"),
    min_requests: Annotated[int, typer.Option(help="Compared requests needed before a promote verdict.")] = 500,
    min_agreement: Annotated[float, typer.Option(help="Smallest share of rows with the same prediction.")] = 0.95,
    max_latency_ratio: Annotated[float, typer.Option(help="Largest shadow/production p50 latency ratio.")] = 1.5,
    max_error_rate: Annotated[float, typer.Option(help="Largest share of mirrored requests the shadow failed.")] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON too.")] = False,
) -> None:
    """Compare the shadow with production from the prediction log; write an HTML report with plots.

    Exit code 0 for a promote or hold verdict, 3 for reject."""
    from pydantic import ValidationError

    from modelcycle.monitoring.predictions import read_prediction_log
    from modelcycle.monitoring.shadow import ShadowPolicy, compare_shadow, render_shadow_report

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


@app.command()
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


serving_commands(app)


@app.command(
    "md",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def md(ctx: typer.Context) -> None:
    """ModelDeployments on the cluster: promote | rollback | status ([b]modelcycle md --help[/] for more)."""
    # Loaded on use: the operator package imports kopf and the kubernetes client, which
    # would add seconds to every other command's start.
    from modelcycle.operator.cli import md_app

    md_app(args=ctx.args, prog_name="modelcycle md")


@app.command()
def predict(
    ref: Annotated[str, typer.Argument(help="The model version: name, name@version or name@alias.")],
    input_: Annotated[str, typer.Option("--input", "-i", help="CSV, Parquet or JSON lines at a path or fsspec URL; "
                                        "with --query, a SQLAlchemy URL.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where the predictions go, a path or fsspec URL "
                                        "ending .parquet, .csv or .jsonl.")],
    query: Annotated[Optional[str], typer.Option("--query", help="Read the input with this SQL query.")] = None,
    password_env: Annotated[Optional[str], typer.Option("--password-env", help="With --query: the environment "
                                                        "variable holding the database password (never in the URL).")] = None,
    rejects: Annotated[Optional[str], typer.Option("--rejects", help="Where rejected records go (JSON lines) "
                                                   "[default: next to the output, NAME.rejects.jsonl].")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows read and predicted at a time; "
                                            "memory follows it.")] = 100_000,
    engine: Annotated[str, typer.Option("--engine", help="sklearn, or onnx: the version's parity-checked "
                                        "ONNX export.")] = "sklearn",
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Predict every record of a file or query with a model version, in chunks. Records that break
    the model's data schema are not predicted: they go to the rejects file with the reason per field.
    A rerun over the same input and output resumes where it stopped and never duplicates rows.

    Exit code 0 when every record was predicted, 4 when some were rejected."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modelcycle.batch import predict_batch
    from modelcycle.data import DataError
    from modelcycle.registry import RegistryError, parse_model_ref
    from modelcycle.spec import SqlSource

    if engine not in ("sklearn", "onnx"):
        raise _fail(f"--engine: expected sklearn or onnx, found {engine!r}", EXIT_USAGE)
    name, version_ref = parse_model_ref(ref)
    try:
        source = SqlSource(url=input_, query=query, password_env=password_env) if query else input_
    except ValueError as exc:  # pydantic's ValidationError: a password in the URL, a bad variable name
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise _fail(f"--input: {messages}", EXIT_USAGE) from None
    progress = Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TimeElapsedColumn(), console=err, disable=not err.is_terminal, transient=True)
    with progress:
        task = progress.add_task("rows", total=None)
        try:
            result = predict_batch(_registry(registry, workdir), name, version_ref, source=source, output=output,
                                   rejects=rejects, chunk_rows=chunk_rows, engine=engine,
                                   on_chunk=lambda done, total: progress.update(task, completed=done, total=total))
        except (DataError, RegistryError, KeyError) as exc:
            raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    resumed = f", {result.resumed_chunks} of {result.chunks} chunks resumed" if result.resumed_chunks else ""
    console.print(f"{result.predicted:,} of {result.rows:,} records predicted with {name} ({result.engine}) "
                  f"into {result.output} in {result.seconds:.1f}s{resumed}", soft_wrap=True, highlight=False)
    if result.rejected:
        console.print(f"{result.rejected:,} rejected: {result.rejects}", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_INVALID_DATA)


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="The model version: name@version or name@alias.")],
    format_: Annotated[str, typer.Option("--format", help="The export format: onnx.")] = "onnx",
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder to write into.")] = Path("export"),
    spec: Annotated[Path, typer.Option("--spec", "-s", help="The spec the version was trained with (to rebuild its "
                                       "test split).")] = Path("modelcycle.yaml"),
    data: Annotated[Optional[Path], typer.Option("--data", help="Check parity on these rows (CSV, Parquet or JSON "
                                                 "lines) instead of the version's test split.")] = None,
    tolerance: Annotated[float, typer.Option(help="The largest probability difference allowed.")] = 1e-4,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
) -> None:
    """Export a model version as one ONNX file, preprocessing included, that runs on ONNX Runtime
    without scikit-learn or pandas; with its sha256, its data schema and a loader (numpy and
    onnxruntime only). Parity with the scikit-learn pipeline is checked on the version's test split
    first, and the export is recorded on the version.

    Exit code 0 when exported, 3 when refused (a step cannot be converted, or parity fails)."""
    if format_ != "onnx":
        raise _fail(f"--format: only onnx is supported, found {format_!r}", EXIT_USAGE)
    from modelcycle.data import DataError, DataStore, read_source
    from modelcycle.export import ExportRefused, export_onnx, test_split
    from modelcycle.registry import RegistryError, parse_model_ref
    from modelcycle.spec import DataSpec

    name, version_ref = parse_model_ref(ref)
    reg = _registry(registry, workdir)
    try:
        if data is not None:
            test = read_source(DataSpec(source=str(data.resolve()), target="(none: only the features are read)"))
        else:
            test = test_split(reg, name, version_ref, spec=_spec(spec), store=DataStore(workdir / "data"))
        result = export_onnx(reg, name, version_ref, test=test, out_dir=out, tolerance=tolerance)
    except ExportRefused as exc:
        raise _fail(f"export refused: {exc}", EXIT_REJECTED) from None
    except (DataError, RegistryError, KeyError) as exc:
        raise _fail(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    console.print(f"wrote {result.path} ({result.size_bytes / 1e3:.0f} kB, sha256 {result.sha256})", soft_wrap=True,
                  highlight=False)
    console.print(f"parity on {result.parity.rows:,} rows: largest difference {result.parity.max_difference:.3g} "
                  f"(tolerance {result.parity.tolerance:g})", highlight=False)
    console.print(f"loader: {result.loader}; schema: {result.schema}", soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
