"""Kubeflow Pipelines v2 components, one per lifecycle phase.

Each component is a lightweight Python component whose body imports `modelcycle` and
calls one phase of `modelcycle.lifecycle`; it only moves typed KFP artifacts in and out
(Dataset, Model, Metrics, ClassificationMetrics, HTML). They run on the modelcycle image
(`MODELCYCLE_IMAGE`, see the Dockerfile), which has the package installed, so nothing is
pip-installed at run time (`install_kfp_package=False`). Locally, `kfp.local`'s
SubprocessRunner runs the same bodies with the current interpreter.

The spec travels as YAML text in the `spec_yaml` parameter, so a compiled pipeline is
self-contained and the Kubeflow UI shows the exact spec of every run.

A model artifact's sha256 is written into its metadata by the component that saved it,
and the next component checks it before unpickling. `register` signs the version it
registers (`modelcycle.signing`) with the key its environment names: ``MODELCYCLE_SIGNING_KEY``,
a mounted Secret's file or the Secret's key as the variable itself, set on its pod like the
``AWS_*`` credentials (kfp.local's SubprocessRunner passes the parent's environment on; a
DockerRunner takes it in its ``environment``).
"""


import os
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

MODELCYCLE_IMAGE = os.environ.get("MODELCYCLE_IMAGE", "modelcycle/modelcycle-python:0.1.0")

component = dsl.component(base_image=MODELCYCLE_IMAGE, install_kfp_package=False)


@component
def plan(spec_yaml: str) -> List[int]:
    """The candidates to train, as indexes into `training.candidates`, for the ParallelFor."""
    from modelcycle.spec import spec_from_text

    return list(range(len(spec_from_text(spec_yaml).training.candidates)))


@component
def ingest(spec_yaml: str, base_dir: str, store_uri: str, data: Output[Dataset]) -> str:
    """Snapshot the spec's data source into the data store; the Dataset is the snapshot.
    `base_dir` is where relative paths in the spec start; empty for the task's folder."""
    from modelcycle.data import DataStore
    from modelcycle.lifecycle import ingest_phase
    from modelcycle.spec import spec_from_text

    spec = spec_from_text(spec_yaml, base_dir=base_dir or None)
    store = DataStore(store_uri)
    version = ingest_phase(spec, store=store)
    store.fetch(version.id, data.path)
    data.metadata.update({"version": version.id, "rows": version.rows, "sha256": version.sha256, "source": version.source,
                          "uri": version.path})
    print(f"data version {version.short_id}: {version.rows:,} rows from {version.source}")
    return version.id


@component
def validate(spec_yaml: str, base_dir: str, store_uri: str, data_version: str, schema: Output[Artifact]):
    """Validate the snapshot against the schema of the version before it; fail the run on errors."""
    from modelcycle.data import DataStore
    from modelcycle.lifecycle import validate_phase
    from modelcycle.spec import spec_from_text

    spec = spec_from_text(spec_yaml, base_dir=base_dir or None)
    store = DataStore(store_uri)
    inferred, report = validate_phase(spec, store.get(data_version), store=store)
    with open(schema.path, "w") as fh:
        fh.write(inferred.model_dump_json(indent=2))
    schema.metadata.update({"schema_hash": inferred.schema_hash(), "warnings": len(report.warnings)})
    print(report.summary())


@component
def train(spec_yaml: str, data: Input[Dataset], candidate: int, model: Output[Model], metrics: Output[Metrics]):
    """Search one candidate's hyperparameters with cross-validation and refit the best on the training split.

    MODELCYCLE_TRAIN_JOBS, when set, caps the search's processes: kfp.local runs two
    candidates at once on one machine, where a pod on a cluster has its own CPUs."""
    import os

    import pandas as pd

    from modelcycle.lifecycle import train_phase
    from modelcycle.spec import spec_from_text

    spec = spec_from_text(spec_yaml)
    jobs = os.environ.get("MODELCYCLE_TRAIN_JOBS")
    run = train_phase(spec, pd.read_parquet(data.path), int(candidate), artifact_path=model.path,
                      n_jobs=int(jobs) if jobs else None)
    model.metadata.update({"run": run.model_dump_json(), "sha256": run.sha256, "algorithm": run.algorithm})
    metrics.log_metric(f"cv_{run.cv_metric}", run.cv_mean)
    metrics.log_metric(f"cv_{run.cv_metric}_std", run.cv_std)
    metrics.log_metric("fit_seconds", run.fit_seconds + run.search_seconds)
    print(f"{run.algorithm}: cv {run.cv_metric} {run.cv_mean:.4f} ± {run.cv_std:.4f}, params {run.params}")


@component
def evaluate(
    spec_yaml: str,
    data: Input[Dataset],
    schema: Input[Artifact],
    candidates: Input[List[Model]],
    best_model: Output[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
):
    """Select a candidate on its cross-validation scores, refit it on training and validation rows,
    evaluate it, apply the gates, write the report."""
    import pandas as pd

    from modelcycle.lifecycle import evaluate_phase, report_html
    from modelcycle.spec import spec_from_text
    from modelcycle.training import CandidateRun
    from modelcycle.validation import DataSchema

    spec = spec_from_text(spec_yaml)
    runs = []
    for artifact in candidates:
        run = CandidateRun.model_validate_json(artifact.metadata["run"])
        runs.append(run.model_copy(update={"artifact": artifact.path}))
    with open(schema.path) as fh:
        data_schema = DataSchema.model_validate_json(fh.read())
    selection = evaluate_phase(spec, pd.read_parquet(data.path), runs, schema=data_schema, artifact_path=best_model.path)
    ev = selection.evaluation
    best_model.metadata.update({"sha256": selection.sha256, "algorithm": ev.algorithm, "passed": ev.passed})
    with open(evaluation.path, "w") as fh:
        fh.write(ev.model_dump_json())
    evaluation.metadata["passed"] = ev.passed
    for set_name, s in ev.sets.items():
        for name, value in s.metrics.items():
            metrics.log_metric(f"{set_name}.{name}", value)
    test = ev.sets["test"]
    if test.roc:
        classification.log_roc_curve(test.roc["fpr"], test.roc["tpr"], test.roc["threshold"])
    if test.confusion_matrix:
        classification.log_confusion_matrix(test.labels, test.confusion_matrix)
    with open(report.path, "w") as fh:
        fh.write(report_html(spec, selection, data_version=data.metadata["version"]))
    print(ev.selection)
    for gate in ev.gates:
        print(gate.describe())


@component
def register(
    spec_yaml: str,
    registry_uri: str,
    data: Input[Dataset],
    schema: Input[Artifact],
    best_model: Input[Model],
    evaluation: Input[Artifact],
    report: Input[HTML],
    run_id: str,
) -> str:
    """Register the selected model with its lineage (down to the run and its report); returns `name@version`."""
    from modelcycle import artifacts
    from modelcycle.evaluation import Evaluation
    from modelcycle.lifecycle import register_phase
    from modelcycle.registry import Registry
    from modelcycle.spec import spec_from_text
    from modelcycle.validation import DataSchema

    spec = spec_from_text(spec_yaml)
    with open(best_model.path, "rb") as fh:
        artifact = fh.read()
    model = artifacts.loads(artifact, sha256=best_model.metadata["sha256"], what=f"the selected model {best_model.uri}")
    with open(evaluation.path) as fh:
        ev = Evaluation.model_validate_json(fh.read())
    with open(schema.path) as fh:
        data_schema = DataSchema.model_validate_json(fh.read())
    version = register_phase(spec, registry=Registry(registry_uri), model=model, evaluation=ev,
                             data_version=data.metadata["version"], data_uri=data.metadata.get("uri"),
                             schema=data_schema, run_id=run_id, report=report.uri, artifact=artifact)
    print(f"registered {version.name}@{version.version} as {version.status}, aliases {version.aliases}")
    return f"{version.name}@{version.version}"


__all__ = ["MODELCYCLE_IMAGE", "evaluate", "ingest", "plan", "register", "train", "validate"]
