"""Registered models, a packaged bento and a running bento server, shared by the serving tests.

Everything is built once per session in one workdir, the way `modelcycle` lays it out: the
registry under ``registry/`` and BentoML's stores under ``bentoml/``. Version 1 (logistic
regression, the champion) and version 2 (a small random forest, so that it sometimes
disagrees) are trained on the example's fraud data in-process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from modelcycle.registry import Registry
from modelcycle.serving.local import ServerProcess, serve_bento, stop_process, wait_ready
from modelcycle.serving.packaging import PackagedBento, package
from modelcycle.spec import parse_spec
from modelcycle.training import split_data, train_candidate
from modelcycle.validation import infer_schema

SPEC = Path(__file__).resolve().parents[2] / "examples" / "fraud" / "modelcycle.yaml"
PASSED = [{"name": "test.roc_auc", "metric": "roc_auc", "op": ">=", "threshold": 0.5, "value": 0.9, "passed": True}]


@dataclass
class Served:
    """The session's registry and what was trained into it."""

    workdir: Path
    registry: Registry
    models: dict[int, object]
    """Version number -> the TrainedModel as registered."""
    records: list[dict]
    """Held-out records as a client sends them: JSON types, dates as ISO strings."""


@pytest.fixture(scope="session")
def served(tmp_path_factory, fraud_frame) -> Served:
    workdir = tmp_path_factory.mktemp("serving")
    spec_dict = yaml.safe_load(SPEC.read_text())
    spec_dict["training"].update(cv_folds=2, n_jobs=1)
    spec = parse_spec(spec_dict)
    splits = split_data(fraud_frame, spec)
    schema = infer_schema(splits.train, spec)
    registry = Registry(workdir / "registry")
    models = {}
    for algorithm in ("logistic_regression", "random_forest"):
        (candidate,) = [c for c in spec.training.candidates if c.algorithm == algorithm]
        candidate = candidate.model_copy(update={"search_space": {}, "params": {"n_estimators": 20, "max_depth": 6}
                                                 if algorithm == "random_forest" else {}})
        model, _ = train_candidate(spec, candidate, splits.train, artifact_path=str(workdir / f"{algorithm}.joblib"))
        model.schema = schema
        version = registry.register("fraud", model, lineage={"data_version": "test"},
                                    params={"algorithm": algorithm}, metrics={}, gates=PASSED)
        models[version.version] = model
    registry.set_alias("fraud", "champion", 1)
    test = splits.test.drop(columns=[spec.data.target]).head(40)
    records = json.loads(test.to_json(orient="records", date_format="iso"))
    return Served(workdir=workdir, registry=registry, models=models, records=records)


@pytest.fixture(scope="session")
def bento(served) -> PackagedBento:
    """Version 1, packaged."""
    return package(served.registry, "fraud@1", workdir=served.workdir)


@pytest.fixture(scope="session")
def bento_server(served, bento) -> Iterator[ServerProcess]:
    """`bentoml serve` on version 1's bento, on a free port of 127.0.0.1."""
    server = serve_bento(bento, role="bento-under-test", workdir=served.workdir)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_process(server)


@pytest.fixture
def client(bento_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bento_server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="session")
def in_process(served):
    """`in_process(version, records)`: what the registered model predicts for `records` in this
    process, in the serving contract's form (predictions, probabilities)."""

    def predict(version: int, records: list[dict]) -> tuple[list, list[dict[str, float]]]:
        model = served.models[version]
        proba = model.predict_proba(pd.DataFrame(records))
        classes = [str(c) for c in model.classes]
        return model.decide(proba).tolist(), [dict(zip(classes, row)) for row in proba.tolist()]

    return predict
