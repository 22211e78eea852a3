"""The commands that take a project from a data file to a registered model: `init` writes the
spec, `run` (and `demo`, on the bundled example) runs the training pipeline locally,
`compile` writes it for the Kubeflow UI, and `data validate` checks a new file against the
schema the last data version was validated with.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from modelcycle import __version__
from modelcycle.cli.common import (
    DEFAULT_WORKDIR,
    EXIT_FAILURE,
    EXIT_INVALID_DATA,
    EXIT_REJECTED,
    EXIT_USAGE,
    RegistryOpt,
    SpecArg,
    WorkdirOpt,
    _fail,
    _print_version,
    _registry,
    _spec,
    console,
)

EXAMPLE_DIR = Path(__file__).resolve().parents[3] / "examples" / "fraud"

commands = typer.Typer()
data_app = typer.Typer(help="Data versions and validation.", no_args_is_help=True)


@commands.command()
def version() -> None:
    """Print the modelcycle version."""
    console.print(__version__)


@commands.command()
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


class TrainingFailed(Exception):
    """The pipeline failed; `code` is the exit code (EXIT_INVALID_DATA when validation refused the data)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def train(spec_path: Path, workdir: Path, registry: str | None, store: str | None = None):
    """Run the pipeline locally with a status line per phase; return the registered version
    (which may be `rejected`) and the run. Raise `TrainingFailed` when the pipeline fails."""
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
            with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(log), _root_handlers_kept():
                result = run_local(spec_path, workdir=workdir, registry_uri=registry, store_uri=store)
        except RuntimeError as exc:
            tail = log_path.read_text().splitlines()
            reason = _failure_reason(tail)
            code = EXIT_INVALID_DATA if "data validation failed" in reason else EXIT_FAILURE
            raise TrainingFailed(f"{_PhaseProgress._color.sub('', str(exc))}\n{reason}\nfull log: {log_path}",
                                 code) from None
    name, ref = parse_model_ref(result.model_version)
    return _registry(registry, workdir).get(name, ref), result


@contextlib.contextmanager
def _root_handlers_kept():
    """Put the root logger's handlers back as they were. kfp.local calls `logging.info()`
    outside its own logging context, and with no handler on the root logger that calls
    `logging.basicConfig()`: a handler on the stderr of the moment, this run's log file,
    which is closed once the run ends. A second run in the same process (`modelcycle loop`)
    then wrote "--- Logging error ---" tracebacks for every message logged."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    try:
        yield
    finally:
        root.handlers[:] = handlers


from modelcycle.monitoring.retraining import RUN_RESULT_ENV


def _write_result(**fields) -> None:
    """The run's result as one line of JSON into $MODELCYCLE_RUN_RESULT, when it is set."""
    import json
    import os

    if path := os.environ.get(RUN_RESULT_ENV):
        with open(path, "w") as out:
            out.write(json.dumps(fields) + "\n")


def _run(spec_path: Path, workdir: Path, registry: str | None, store: str | None = None) -> None:
    try:
        version, result = train(spec_path, workdir, registry, store)
    except TrainingFailed as exc:
        _write_result(status="failed", invalid_data=exc.code == EXIT_INVALID_DATA, error=str(exc)[-2000:])
        raise _fail(str(exc), exc.code) from None
    _write_result(model_version=f"{version.name}@{version.version}", status=version.status,
                  data_version=version.lineage.data_version, seconds=round(result.seconds, 1))
    _print_version(version, registry=_registry(registry, workdir))
    console.print(f"\nreport:   {result.report}\nregistry: {registry or workdir / 'registry'}\n"
                  f"log:      {workdir / 'last-run.log'}\ntook {result.seconds:.1f} s", soft_wrap=True)
    if version.status == "rejected":
        for gate in version.gates:
            if not gate.passed:
                console.print(f"[red]rejected[/]: {gate.describe()}", highlight=False)
        raise typer.Exit(EXIT_REJECTED)


def _failure_reason(lines: list[str]) -> str:
    """The last exception of the failed task, out of the kfp log: its first line and the
    indented lines that follow it, up to the first blank one. modelcycle's own exceptions
    come first, ahead of any a library logs after the task's (kfp's logging did, in a second
    run in one process, before `_root_handlers_kept`)."""
    lines = [_PhaseProgress._color.sub("", line).strip() for line in lines]
    ours = [i for i, line in enumerate(lines) if re.match(r"^modelcycle\.[\w.]+(Error|Exception): ", line)]
    candidates = ours[-1:] or range(len(lines) - 1, -1, -1)
    for i in candidates:
        if re.match(r"^[\w.]+(Error|Exception): ", lines[i]):
            j = i
            while j + 1 < len(lines) and lines[j + 1]:
                j += 1
            return "\n".join(lines[i : j + 1])
    return ""


@commands.command()
def run(
    spec: SpecArg = Path("modelcycle.yaml"),
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    registry: RegistryOpt = None,
    store: Annotated[Optional[str], typer.Option(
        "--store", help="Data store path or fsspec URL (default: WORKDIR/data).")] = None,
) -> None:
    """Run the training pipeline locally (kfp.local): ingest, validate, train, evaluate, register.

    With MODELCYCLE_RUN_RESULT set to a file, writes one line of JSON there at the end: the
    registered version and its status, or the failure (what a Job's termination message shows)."""
    _run(spec, workdir, registry, store)


@commands.command()
def demo(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    rows: Annotated[int, typer.Option(help="Rows of example data to generate.")] = 20_000,
    drift: Annotated[float, typer.Option(min=0, max=1, help="How far the world moves: the example "
                                         "generator's drift knob, 0 (not at all) to 1.")] = 0.8,
    port: Annotated[int, typer.Option(help="The gateway's port.")] = 8080,
    train_only: Annotated[bool, typer.Option("--train-only", help="Only train and register v1, as "
                                             "`modelcycle run` on the example.")] = False,
) -> None:
    """The whole lifecycle on the bundled fraud example, with no human: train v1 and serve it,
    replay traffic, drift, detect, retrain v2, serve it as shadow, promote."""
    from modelcycle.cli.loop import run_demo

    spec_path = EXAMPLE_DIR / "modelcycle.yaml"
    if not spec_path.exists():
        raise _fail(f"the example is not here: {spec_path} (run demo from a checkout)")
    if not train_only:
        run_demo(example_dir=EXAMPLE_DIR, workdir=workdir, rows=rows, port=port, drift=drift)
        return
    import importlib.util

    data_path = EXAMPLE_DIR / "data" / "transactions.parquet"
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


@commands.command("compile")
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
