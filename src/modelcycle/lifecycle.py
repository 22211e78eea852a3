"""The lifecycle's phases as plain functions: what each Kubeflow component calls.

Each phase takes the spec and plain values (paths, ids) and returns plain results, so the
same code runs inside a Kubeflow pod, in a `kfp.local` subprocess, or in a notebook. The
Kubeflow components in `modelcycle.components` only move artifacts in and out.

    ingest -> validate -> train (one per candidate) -> evaluate and select -> register

A validation error stops the run before training; nothing reaches the registry. A model
that fails a gate is still registered, as `rejected`, so the attempt and its reasons are
on record; only a model that passes every gate gets an alias.

Every Kubeflow task is a fresh process, so each phase imports only what it needs:
scikit-learn, pandera and matplotlib cost seconds to import, and ingest needs none of them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from modelcycle import __version__, artifacts
from modelcycle.data import DataStore, DataVersion, ingest
from modelcycle.spec import ProjectSpec

if TYPE_CHECKING:
    from modelcycle.evaluation import Evaluation
    from modelcycle.registry import ModelVersion, Registry
    from modelcycle.training import CandidateRun, Splits, TrainedModel
    from modelcycle.validation import DataSchema, ValidationReport

SCHEMA_FILE = "schema.json"


def code_version() -> str:
    """The package version, and the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def ingest_phase(spec: ProjectSpec, *, store: DataStore) -> DataVersion:
    return ingest(spec.data, store=store, base_dir=spec.base_dir)


def validate_phase(spec: ProjectSpec, version: DataVersion, *, store: DataStore, frame: pd.DataFrame | None = None) -> tuple[DataSchema, ValidationReport]:
    """Check the data against the schema of the version before it (or the spec's rules on the
    first run); on success store this version's own schema with it. Raises `DataValidationError`."""
    from modelcycle.validation import DataSchema, DataValidationError, infer_schema, validate

    frame = store.load(version.id) if frame is None else frame
    schema = infer_schema(frame, spec)
    reference = schema
    if version.parent and (text := store.attachment(version.parent, SCHEMA_FILE)):
        reference = DataSchema.model_validate_json(text)
    report = validate(frame, reference, id_column=spec.data.id_column)
    if not report.ok:
        raise DataValidationError(report)
    store.attach(version.id, SCHEMA_FILE, schema.model_dump_json(indent=2))
    return schema, report


def train_phase(spec: ProjectSpec, frame: pd.DataFrame, candidate: int, *, artifact_path: str | Path,
                n_jobs: int | None = None) -> CandidateRun:
    from modelcycle.training import split_data, train_candidate

    splits = split_data(frame, spec)
    _, run = train_candidate(spec, spec.training.candidates[candidate], splits.train,
                             artifact_path=str(artifact_path), n_jobs=n_jobs)
    return run


@dataclass
class Selection:
    model: TrainedModel
    evaluation: Evaluation
    leaderboard: list[dict]
    splits: Splits
    sha256: str
    size_bytes: int


def evaluate_phase(spec: ProjectSpec, frame: pd.DataFrame, runs: list[CandidateRun], *, schema: DataSchema,
                   artifact_path: str | Path) -> Selection:
    """Rank candidates on validation, evaluate the winner in full, save it with its threshold and schema."""
    from modelcycle.evaluation import evaluate_model, leaderboard
    from modelcycle.training import split_data

    splits = split_data(frame, spec)
    models = {f"{i}-{r.algorithm}": artifacts.load(r.artifact, sha256=r.sha256) for i, r in enumerate(runs)}
    board = leaderboard(spec, models, splits.validation)
    for row in board:
        run = runs[int(row["candidate"].split("-", 1)[0])]
        row.update(cv_mean=run.cv_mean, fit_seconds=round(run.fit_seconds + run.search_seconds, 2))
    best: TrainedModel = models[board[0]["candidate"]]
    best.schema = schema
    best_run = runs[int(board[0]["candidate"].split("-", 1)[0])]
    evaluation = evaluate_model(best, spec, validation=splits.validation, test=splits.test,
                                out_of_time=splits.out_of_time, artifact_bytes=best_run.size_bytes)
    sha, size = artifacts.save(best, artifact_path)
    return Selection(model=best, evaluation=evaluation, leaderboard=board, splits=splits, sha256=sha, size_bytes=size)


def report_html(spec: ProjectSpec, selection: Selection, *, data_version: str) -> str:
    from modelcycle.report import render_report

    return render_report(spec, selection.evaluation, leaderboard=selection.leaderboard, data_version=data_version,
                         splits=selection.splits.sizes())


def register_phase(spec: ProjectSpec, *, registry: Registry, model: TrainedModel, evaluation: Evaluation,
                   data_version: str, schema: DataSchema, run_id: str | None = None) -> ModelVersion:
    """Record the selected model with its lineage; a model that passed every gate becomes the
    champion if there is none yet, the challenger otherwise."""
    try:
        champion = registry.get(spec.name, "champion")
    except KeyError:
        champion = None
    metrics = {f"{set_name}.{k}": v for set_name, s in evaluation.sets.items() for k, v in s.metrics.items()}
    metrics.update({"latency.p95_ms": evaluation.latency.p95_ms, "latency.p50_ms": evaluation.latency.p50_ms})
    if evaluation.threshold is not None:
        metrics["threshold"] = evaluation.threshold
    version = registry.register(
        spec.name,
        model,
        lineage={
            "data_version": data_version,
            "schema_hash": schema.schema_hash(),
            "spec_hash": spec.spec_hash(),
            "code_version": code_version(),
            "parent_version": champion.version if champion else None,
            "run_id": run_id,
        },
        params={"algorithm": model.algorithm, **model.params},
        metrics=metrics,
        status="candidate" if evaluation.passed else "rejected",
        gates=[g.model_dump() for g in evaluation.gates],
    )
    if evaluation.passed:
        registry.set_alias(spec.name, "challenger" if champion else "champion", version.version)
        version = registry.get(spec.name, version.version)
    return version
