"""The commands that take a registered version out of the serving path: `predict` scores a
file or a query in chunks, `export` writes the version as one parity-checked ONNX file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelcycle.cli.common import (
    DEFAULT_WORKDIR,
    EXIT_INVALID_DATA,
    EXIT_REJECTED,
    EXIT_USAGE,
    RegistryOpt,
    WorkdirOpt,
    _fail,
    _registry,
    _spec,
    console,
    err,
)

commands = typer.Typer()


@commands.command()
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


@commands.command()
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
