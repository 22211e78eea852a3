"""Batch prediction: a registered version over a file or a query, in bounded memory.

`predict_batch` reads its input in chunks of `chunk_rows` rows (CSV, Parquet or JSON lines
at any fsspec URL, or a SQL query through SQLAlchemy), so memory depends on the chunk size,
never on the input's. Each chunk's records are checked against the version's data schema
by the rules that are errors in validation (the rules the bento applies to a request,
here vectorised over the chunk): a record that breaks one is not predicted but written to
the rejects file (JSON lines) with the reason for each field it breaks. Rejects never fail
the run; `BatchResult.rejected` says how many there were.

The output has one row per predicted record: its id (the schema's id column, else its
0-based row in the input), the prediction, one probability column per class, the model,
its version and the run's timestamp. Its format follows its name (``.parquet``, ``.csv``,
``.jsonl``).

Restart. Chunks are written to a staging folder next to the output (``OUTPUT.parts/``),
each atomically and marked done, with a manifest of the run (input fingerprint, model
sha256, chunk size, timestamp). A rerun over the same input and output skips the chunks
already done; when all are, the parts are streamed into the output, which replaces any
earlier one whole, and the staging folder goes. So an interrupted run resumes, a finished
one rerun replaces its output, and no row is ever written twice.

Summary. A finished run writes one line of JSON next to the output (``NAME.summary.json``:
rows, predicted, rejected, seconds, the version, when it finished), for whatever reads the
output next. When `SUMMARY_ENV` names a local file, the same line goes there too: the
operator's scheduled batch sets it to the container's termination-message file, so the
kubelet puts the figures in the pod's status, where the operator reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from modelcycle import artifacts
from modelcycle.data import DataError, sql_connection
from modelcycle.registry import Registry
from modelcycle.spec import SqlSource
from modelcycle.training import TrainedModel
from modelcycle.validation import ColumnRule, DataSchema

DEFAULT_CHUNK_ROWS = 100_000
"""Rows per chunk: about 100 MB of working memory for the fraud example's ten columns."""
Format = Literal["csv", "parquet", "jsonl"]
Engine = Literal["sklearn", "onnx"]
SUMMARY_ENV = "MODELCYCLE_BATCH_SUMMARY"
"""Names a local file that also receives the run's summary line (see the module)."""


class Predictor(Protocol):
    """What predicts a chunk: the scikit-learn pipeline or a parity-checked ONNX export."""

    engine: Engine

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, class probabilities or None) for the records of `frame`."""


class SklearnPredictor:
    engine: Engine = "sklearn"

    def __init__(self, model: TrainedModel):
        self.model = model

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        proba = self.model.predict_proba(frame)
        if proba is None:
            return np.asarray(self.model.predict(frame)), None
        return self.model.decide(proba), proba


class OnnxPredictor:
    engine: Engine = "onnx"

    def __init__(self, exported):
        self.exported = exported

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        predictions, proba = self.exported.predict({c: frame[c].to_numpy() for c in self.exported.input_columns})
        return np.asarray(predictions), proba


@dataclass
class BatchResult:
    rows: int
    predicted: int
    rejected: int
    output: str
    rejects: str
    chunks: int
    resumed_chunks: int
    seconds: float
    engine: Engine


def output_format(url: str) -> Format:
    name = url.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise DataError(f"--output: cannot tell the format of {url}: name it .parquet, .csv or .jsonl")


# -- reading -------------------------------------------------------------------------------

def read_chunks(source: str | SqlSource, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The input in frames of at most `chunk_rows` rows, read as they are needed."""
    if isinstance(source, SqlSource):
        import sqlalchemy

        with sql_connection(source, password_field="--password-env", failure_field="--input") as conn:
            conn = conn.execution_options(stream_results=True)
            yield from pd.read_sql(sqlalchemy.text(source.query), conn, chunksize=chunk_rows)
        return
    fmt = output_format_or_none(source) or "csv"
    try:
        with fsspec.open(source, "rb", compression="infer") as fh:
            if fmt == "parquet":
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas()
            elif fmt == "jsonl":
                yield from pd.read_json(fh, lines=True, chunksize=chunk_rows)
            else:
                yield from pd.read_csv(fh, chunksize=chunk_rows)
    except FileNotFoundError:
        raise DataError(f"--input: no file at {source}") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"--input: cannot read {source} as {fmt}: {exc}") from None


def count_rows(source: str | SqlSource) -> int | None:
    """The input's rows when they are known without reading it (Parquet's footer), else None."""
    if isinstance(source, SqlSource) or output_format_or_none(source) != "parquet":
        return None
    try:
        with fsspec.open(source, "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    except (OSError, ValueError):
        return None


def output_format_or_none(url: str) -> Format | None:
    try:
        return output_format(url)
    except DataError:
        return None


def fingerprint(source: str | SqlSource) -> str:
    """What identifies the input for a restart: the file's identity (size, time, etag), or the query."""
    if isinstance(source, SqlSource):
        return hashlib.sha256(f"{source.url}\n{source.query}".encode()).hexdigest()
    fs, path = fsspec.core.url_to_fs(source)
    try:
        return f"{fs.unstrip_protocol(path)}:{fs.ukey(path)}"
    except FileNotFoundError:
        raise DataError(f"--input: no file at {source}") from None


# -- checking ------------------------------------------------------------------------------

def check_records(frame: pd.DataFrame, schema: DataSchema) -> tuple[np.ndarray, list[list[dict[str, str]]]]:
    """(ok, problems): which rows pass the schema's error rules, and for each row that does not,
    one ``{"field", "reason"}`` per field it breaks (in the order of the rows that fail)."""
    n = len(frame)
    found: list[tuple[str, np.ndarray, Callable[[int], str]]] = []
    for rule in schema.feature_rules():
        if rule.name not in frame.columns:
            found.append((rule.name, np.ones(n, dtype=bool), lambda i: "required field is missing"))
            continue
        values = frame[rule.name]
        null = values.isna().to_numpy()
        if not rule.nullable and null.any():
            found.append((rule.name, null, lambda i: "may not be null"))
        for bad, reason in _rule_failures(rule, values, null):
            found.append((rule.name, bad, reason))
    bad_rows = np.zeros(n, dtype=bool)
    for _, bad, _ in found:
        bad_rows |= bad
    problems = []
    for i in np.flatnonzero(bad_rows):
        problems.append([{"field": name, "reason": reason(i)} for name, bad, reason in found if bad[i]])
    return ~bad_rows, problems


def _rule_failures(rule: ColumnRule, values: pd.Series, null: np.ndarray):
    raw = values.to_numpy()
    shown = lambda i: _shown(raw[i])  # noqa: E731 - a closure per rule reads best inline
    if rule.kind == "numeric":
        if pd.api.types.is_bool_dtype(values):
            yield ~null, lambda i: f"expected a number, found {shown(i)}"
            return
        numbers = (values.astype("float64") if pd.api.types.is_numeric_dtype(values)
                   else pd.to_numeric(values, errors="coerce")).to_numpy(dtype=np.float64, na_value=np.nan)
        unread = np.isnan(numbers) & ~null
        if unread.any():
            yield unread, lambda i: f"expected a number, found {shown(i)}"
        infinite = np.isinf(numbers)
        if infinite.any():
            yield infinite, lambda i: f"expected a finite number, found {shown(i)}"
        with np.errstate(invalid="ignore"):
            outside = np.zeros(len(numbers), dtype=bool)
            if rule.min is not None:
                outside |= numbers < rule.min
            if rule.max is not None:
                outside |= numbers > rule.max
        if outside.any():
            bounds = " and ".join(p for p in (f">= {rule.min:g}" if rule.min is not None else "",
                                              f"<= {rule.max:g}" if rule.max is not None else "") if p)
            yield outside & ~infinite, lambda i: f"expected a number {bounds}, found {shown(i)}"
    elif rule.kind == "categorical" and rule.categories is not None:
        text = values if pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values) \
            else values.astype(str)
        unknown = ~null & ~text.isin(rule.categories).to_numpy()
        if unknown.any():
            listed = ", ".join(repr(c) for c in rule.categories[:12]) + (", ..." if len(rule.categories) > 12 else "")
            yield unknown, lambda i: f"expected one of {listed}, found {shown(i)}"
    elif rule.kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
        unread = parsed.isna().to_numpy() & ~null
        if unread.any():  # what ISO 8601 does not read may still be a date pandas reads
            retry = pd.to_datetime(values[unread], errors="coerce", format="mixed")
            unread[unread] = retry.isna().to_numpy()
        if unread.any():
            yield unread, lambda i: f"expected a date and time, such as 2026-01-31T13:45:00, found {shown(i)}"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# -- writing -------------------------------------------------------------------------------

def _encode(table: pa.Table, fmt: Format) -> bytes:
    """A part's bytes: CSV and JSON lines as they will be in the output; Parquet parts as Arrow
    IPC (no encoding, no compression), written as Parquet once, by the merge."""
    buffer = io.BytesIO()
    if fmt == "parquet":
        with pa.ipc.new_file(buffer, table.schema) as writer:
            writer.write_table(table)
    elif fmt == "csv":
        pa_csv.write_csv(table, buffer)
    else:
        table.to_pandas().to_json(buffer, orient="records", lines=True, date_format="iso")
    return buffer.getvalue()


def _merge(fs, parts: list[str], dest: str, fmt: Format) -> None:
    """Stream `parts` into `dest`, which appears whole or not at all. Every CSV part has the
    header (so that any of them can come first); only the first one's is kept."""
    tmp = f"{dest}.writing"
    with fs.open(tmp, "wb") as out:
        if fmt == "parquet":
            writer = None
            for part in parts:
                with fs.open(part, "rb") as fh:
                    table = pa.ipc.open_file(fh).read_all()
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table.cast(writer.schema))
            if writer is not None:
                writer.close()
        else:
            for number, part in enumerate(parts):
                with fs.open(part, "rb") as fh:
                    if fmt == "csv" and number:
                        fh.readline()
                    out.write(fh.read())
    fs.mv(tmp, dest)


# -- the run -------------------------------------------------------------------------------

def predict_batch(registry: Registry, name: str, ref: str | int, *, source: str | SqlSource, output: str,
                  rejects: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS, engine: Engine = "sklearn",
                  on_chunk: Callable[[int, int | None], None] | None = None) -> BatchResult:
    """Predict every record of `source` with the version `name@ref`, into `output`; see the module."""
    started = time.perf_counter()
    version = registry.get(name, ref)
    model = registry.load(name, version.version)
    if not isinstance(model, TrainedModel) or model.schema is None:
        raise DataError(f"model {name} version {version.version} has no data schema: its records cannot be checked")
    predictor: Predictor = SklearnPredictor(model)
    if engine == "onnx":
        from modelcycle.export import recorded_export

        exported = recorded_export(registry, name, version.version)
        if exported is None:
            raise DataError(f"model {name} version {version.version} has no ONNX export: run "
                            f"`modelcycle export {name}@{version.version} --format onnx` first")
        predictor = OnnxPredictor(exported)
    fmt = output_format(output)
    rejects = rejects or _rejects_url(output)
    fs, out_path = fsspec.core.url_to_fs(output)
    _, rejects_path = fsspec.core.url_to_fs(rejects)
    staging = f"{out_path}.parts"
    manifest = {"input": fingerprint(source), "model": name, "version": version.version, "sha256": version.sha256,
                "chunk_rows": chunk_rows, "output": fmt, "engine": predictor.engine}
    previous = _read_json(fs, f"{staging}/run.json")
    if previous is None or {k: previous.get(k) for k in manifest} != manifest:
        if fs.exists(staging):
            fs.rm(staging, recursive=True)
        fs.makedirs(staging, exist_ok=True)
        previous = {**manifest, "run_at": datetime.now(UTC).isoformat(timespec="seconds")}
        artifacts.write_object(fs, f"{staging}/run.json", json.dumps(previous).encode())
    run_at = previous["run_at"]

    id_rules = [c.name for c in model.schema.columns if c.kind == "id"]
    id_column = id_rules[0] if id_rules else None
    classes = [str(c) for c in model.classes] if model.classes is not None else None
    total = count_rows(source)
    rows = predicted = rejected = resumed = chunks = 0
    parts: list[str] = []
    reject_parts: list[str] = []
    for index, chunk in enumerate(read_chunks(source, chunk_rows=chunk_rows)):
        chunks += 1
        part = f"{staging}/part-{index:06d}.{'arrow' if fmt == 'parquet' else fmt}"
        reject_part = f"{staging}/rejects-{index:06d}.jsonl"
        done = _read_json(fs, f"{staging}/chunk-{index:06d}.done")
        if done is None:
            done = _predict_chunk(chunk, first_row=rows, model=model, predictor=predictor, id_column=id_column,
                                  classes=classes, name=name, version=str(version.version), run_at=run_at,
                                  fs=fs, part=part, reject_part=reject_part, fmt=fmt)
            artifacts.write_object(fs, f"{staging}/chunk-{index:06d}.done", json.dumps(done).encode())
        else:
            resumed += 1
        if done["predicted"]:
            parts.append(part)
        if done["rejected"]:
            reject_parts.append(reject_part)
        rows += len(chunk)
        predicted += done["predicted"]
        rejected += done["rejected"]
        if on_chunk is not None:
            on_chunk(rows, total)
    if parts:
        _merge(fs, parts, out_path, fmt)
    else:
        artifacts.write_object(fs, out_path, _empty(fmt, id_column, classes))
    if reject_parts:
        _merge(fs, reject_parts, rejects_path, "jsonl")
    elif fs.exists(rejects_path):
        fs.rm(rejects_path)
    fs.rm(staging, recursive=True)
    result = BatchResult(rows=rows, predicted=predicted, rejected=rejected, output=output, rejects=rejects,
                         chunks=chunks, resumed_chunks=resumed, seconds=time.perf_counter() - started,
                         engine=predictor.engine)
    _write_summary(result, fs=fs, path=_summary_path(out_path), model=name, version=str(version.version))
    return result


def _write_summary(result: BatchResult, *, fs, path: str, model: str, version: str) -> None:
    """The run's figures as one line of JSON, next to the output and at `$MODELCYCLE_BATCH_SUMMARY`."""
    line = json.dumps({"model": model, "version": version, "rows": result.rows, "predicted": result.predicted,
                       "rejected": result.rejected, "seconds": round(result.seconds, 3),
                       "finishedAt": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n"
    artifacts.write_object(fs, path, line.encode())
    local = os.environ.get(SUMMARY_ENV)
    if local:
        with open(local, "w", encoding="utf-8") as fh:
            fh.write(line)


def _predict_chunk(chunk: pd.DataFrame, *, first_row: int, model: TrainedModel, predictor: Predictor,
                   id_column: str | None, classes: list[str] | None, name: str, version: str, run_at: str,
                   fs, part: str, reject_part: str, fmt: Format) -> dict[str, int]:
    ok, problems = check_records(chunk, model.schema)
    row_numbers = np.arange(first_row, first_row + len(chunk))
    id_values = chunk[id_column] if id_column and id_column in chunk.columns else pd.Series(row_numbers)
    ids = id_values.to_numpy()
    if problems:
        bad = np.flatnonzero(~ok)
        lines = []
        for i, found in zip(bad, problems):
            record = {k: (None if _is_missing(v) else _plain(v)) for k, v in chunk.iloc[i].items()}
            lines.append(json.dumps({"row": int(row_numbers[i]), "id": _plain(ids[i]), "errors": found,
                                     "record": record}, default=str))
        artifacts.write_object(fs, reject_part, ("\n".join(lines) + "\n").encode())
    good = chunk[ok] if not ok.all() else chunk
    if len(good):
        predictions, proba = predictor.predict(good)
        n = len(good)
        out = {id_column or "row": pa.array(id_values[ok] if not ok.all() else id_values, from_pandas=True),
               "prediction": pa.array(predictions)}
        if proba is not None:
            out.update({f"probability_{c}": pa.array(proba[:, j]) for j, c in enumerate(classes)})
        for column, value in (("model", name), ("model_version", version), ("predicted_at", run_at)):
            out[column] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))
        artifacts.write_object(fs, part, _encode(pa.table(out), fmt))
    return {"predicted": int(ok.sum()), "rejected": len(problems)}


def _empty(fmt: Format, id_column: str | None, classes: list[str] | None) -> bytes:
    columns = [id_column or "row", "prediction", *(f"probability_{c}" for c in classes or []),
               "model", "model_version", "predicted_at"]
    table = pa.table({c: pa.array([], pa.string()) for c in columns})
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()
    return _encode(table, fmt)


def _rejects_url(output: str) -> str:
    return f"{_base(output)}.rejects.jsonl"


def _summary_path(output: str) -> str:
    return f"{_base(output)}.summary.json"


def _base(output: str) -> str:
    for suffix in (".gz", ".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv"):
        output = output.removesuffix(suffix)
    return output


def _read_json(fs, path: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
