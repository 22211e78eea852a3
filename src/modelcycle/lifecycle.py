"""The lifecycle's phases as plain functions: what each Kubeflow component calls.

Each phase takes the spec and plain values (paths, ids) and returns plain results, so the
same code runs inside a Kubeflow pod, in a `kfp.local` subprocess, or in a notebook. The
Kubeflow components in `modelcycle.components` only move artifacts in and out.

    ingest -> validate -> train (one per candidate) -> select, refit and evaluate -> register

A validation error stops the run before training; nothing reaches the registry. A model
that passes every gate is `registered`; one that fails a gate is still stored, as
`rejected`, so the attempt and its reasons are on record. Only a registered model gets an
alias (`champion`, `challenger`).

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
from modelcycle.data import DataStore, DataVersion, describe_source, first_data_line, ingest
from modelcycle.spec import ProjectSpec

if TYPE_CHECKING:
    from modelcycle.evaluation import Evaluation
    from modelcycle.monitoring.profiles import ReferenceProfile
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
    """Check the data against the schema of the nearest version before it that passed (or the
    spec's rules on the first run), and report every problem at once.

    On success store this version's own schema with it. On failure keep the version but mark
    it invalid, with the report, so that `DataStore.load` refuses it and later runs look past
    it for their schema (see `modelcycle.data`), and raise `DataValidationError`. Examples
    name 0-based data rows, and their lines when the source is a file of one record per line."""
    from modelcycle.validation import DataSchema, DataValidationError, infer_schema, validate

    frame = store.load(version.id, allow_invalid=True) if frame is None else frame
    schema = infer_schema(frame, spec)
    reference = next((DataSchema.model_validate_json(text) for before in store.ancestors(version.id)
                      if store.invalid_report(before.id) is None and (text := store.attachment(before.id, SCHEMA_FILE))),
                     schema)
    report = validate(frame, reference, id_column=spec.data.id_column)
    if report.issues and version.source == describe_source(spec.data.source) and (
            where := first_data_line(spec.data, rows=len(frame), base_dir=spec.base_dir)):
        report = report.number_lines(source=where[0], first_line=where[1])
    if not report.ok:
        store.mark_invalid(version.id, report.model_dump_json(indent=2))
        raise DataValidationError(report, context=f"data version {version.short_id} is kept but marked invalid, "
                                                  "and nothing can train on it")
    store.attach(version.id, SCHEMA_FILE, schema.model_dump_json(indent=2))
    store.mark_valid(version.id)
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
    splits: Splits
    sha256: str
    size_bytes: int


def evaluate_phase(spec: ProjectSpec, frame: pd.DataFrame, runs: list[CandidateRun], *, schema: DataSchema,
                   artifact_path: str | Path) -> Selection:
    """Select a candidate on its cross-validation scores, refit it on the training and validation
    rows, evaluate it in full, and save it with its threshold and schema.

    The threshold is chosen on the validation rows with the selected candidate's run as trained
    (on the training rows only), whose predictions there are out of sample; see `evaluate_model`."""
    from modelcycle.evaluation import evaluate_model, select_candidate
    from modelcycle.training import refit, split_data

    splits = split_data(frame, spec)
    winner, scores, why = select_candidate(spec, runs)
    run = runs[winner]
    held_out: TrainedModel = artifacts.load(run.artifact, sha256=run.sha256)
    development = splits.development
    model = refit(spec, run, development)
    model.schema = schema
    # The artifact's size is a gate, so it is measured on this model's own bytes; the threshold
    # that evaluation sets next is one float more, which no budget notices.
    evaluation = evaluate_model(model, spec, validation=splits.validation, test=splits.test,
                                out_of_time=splits.out_of_time, artifact_bytes=len(artifacts.dumps(model)),
                                threshold_model=held_out)
    profile = reference_profile(spec, model, development=development, test=splits.test, evaluation=evaluation)
    evaluation = evaluation.model_copy(update={"candidates": scores, "selection": why, "fit_rows": len(development),
                                               "profile": profile.model_dump(mode="json")})
    sha, size = artifacts.save(model, artifact_path)
    return Selection(model=model, evaluation=evaluation, splits=splits, sha256=sha, size_bytes=size)


def reference_profile(spec: ProjectSpec, model: TrainedModel, *, development: pd.DataFrame, test: pd.DataFrame,
                      evaluation: Evaluation) -> ReferenceProfile:
    """The profile drift checks compare live data with: the input columns of the rows the model
    was fitted on, its scores on the test split, the test metrics, the goal and the spec's
    monitoring section. Datetime columns are left out: time always moves on."""
    from modelcycle.monitoring.profiles import build_profile

    proba = model.predict_proba(test)
    return build_profile(
        development, numeric=[f.name for f in spec.features.numeric],
        categorical=[f.name for f in spec.features.categorical], task=spec.task, target=spec.data.target,
        classes=model.classes, threshold=evaluation.threshold, probabilities=proba,
        predictions=model.decide(proba) if proba is not None else model.predict(test),
        test_metrics=evaluation.sets["test"].metrics, goal=[spec.goal.primary, *spec.goal.secondary],
        monitoring=spec.monitoring,
    )


def report_html(spec: ProjectSpec, selection: Selection, *, data_version: str) -> str:
    from modelcycle.report import render_report

    return render_report(spec, selection.evaluation, data_version=data_version, splits=selection.splits.sizes())


def register_phase(spec: ProjectSpec, *, registry: Registry, model: TrainedModel, evaluation: Evaluation,
                   data_version: str, schema: DataSchema, run_id: str | None = None,
                   report: str | None = None, data_uri: str | None = None,
                   artifact: bytes | None = None) -> ModelVersion:
    """Record the selected model with its lineage; a model that passed every gate becomes the
    champion if there is none yet, the challenger otherwise.

    The lineage links the version to its pipeline run, its evaluation report, and its parent:
    the champion it was measured against and would replace, or, while there is no champion,
    the newest version before it (the attempt it follows)."""
    from modelcycle.registry import ModelNotFound

    try:
        champion = registry.get(spec.name, "champion")
    except ModelNotFound:
        champion = None
    parent = champion
    if parent is None:
        try:
            parent = registry.get(spec.name, "latest")
        except ModelNotFound:
            parent = None
    metrics = {f"{set_name}.{k}": v for set_name, s in evaluation.sets.items() for k, v in s.metrics.items()}
    metrics.update({"latency.p95_ms": evaluation.latency.p95_ms, "latency.p50_ms": evaluation.latency.p50_ms})
    if evaluation.threshold is not None:
        metrics["threshold"] = evaluation.threshold
    version = registry.register(
        spec.name,
        model if artifact is None else artifact,  # the evaluated bytes themselves, when the caller has them
        lineage={
            "data_version": data_version,
            "data_uri": data_uri,
            "schema_hash": schema.schema_hash(),
            "spec_hash": spec.spec_hash(),
            "code_version": code_version(),
            "parent_version": parent.version if parent else None,
            "run_id": run_id,
            "report": report,
        },
        params={"algorithm": model.algorithm, **model.params},
        metrics=metrics,
        status="registered" if evaluation.passed else "rejected",
        gates=[g.model_dump() for g in evaluation.gates],
        candidates=evaluation.candidates,
        selection=evaluation.selection,
        profile=evaluation.profile,
    )
    if evaluation.passed:
        registry.set_alias(spec.name, "challenger" if champion else "champion", version.version)
        version = registry.get(spec.name, version.version)
    return version
