"""A fraud model trained, evaluated and registered by the lifecycle's own phases, so that its
reference profile is the one the pipeline stores; shared by the monitoring tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from fraud_example import small_spec_dict
from modelcycle.lifecycle import evaluate_phase, register_phase, train_phase
from modelcycle.monitoring.predictions import PredictionLogWriter
from modelcycle.monitoring.profiles import ReferenceProfile
from modelcycle.registry import Registry
from modelcycle.spec import parse_spec
from modelcycle.validation import infer_schema


@dataclass
class Monitored:
    workdir: Path
    registry: Registry
    model: object
    profile: ReferenceProfile


@pytest.fixture(scope="session")
def monitored(tmp_path_factory, generate_fraud) -> Monitored:
    workdir = tmp_path_factory.mktemp("monitored")
    spec_dict = small_spec_dict()
    spec_dict["training"]["candidates"] = [c for c in spec_dict["training"]["candidates"]
                                           if c["algorithm"] == "logistic_regression"]
    spec = parse_spec(spec_dict)
    frame = generate_fraud(8000)
    run = train_phase(spec, frame, 0, artifact_path=workdir / "candidate.joblib", n_jobs=1)
    schema = infer_schema(frame, spec)
    selection = evaluate_phase(spec, frame, [run], schema=schema, artifact_path=workdir / "model.joblib")
    registry = Registry(workdir / "registry")
    register_phase(spec, registry=registry, model=selection.model, evaluation=selection.evaluation,
                   data_version="test", schema=schema)
    profile = ReferenceProfile.model_validate(registry.profile("fraud", 1))
    return Monitored(workdir=workdir, registry=registry, model=selection.model, profile=profile)


def answer(model, records: list[dict]) -> dict:
    """What a model server following the serving contract answers for `records`."""
    import pandas as pd

    proba = model.predict_proba(pd.DataFrame(records))
    classes = [str(c) for c in model.classes]
    return {"model": "fraud", "version": "1", "predictions": [int(p) for p in model.decide(proba)],
            "probabilities": [dict(zip(classes, row)) for row in proba.tolist()], "latency_ms": 2.0,
            "status": 200, "error": None}


def write_traffic(log_dir: Path, model, frame, *, ts: float, labelled: float = 1.0, refused: int = 0) -> None:
    """Log `frame`'s rows as single-record requests answered by `model` at time `ts`, with
    feedback for the first `labelled` share of them, and `refused` requests answered 422."""
    records = json.loads(frame.drop(columns=["is_fraud"]).to_json(orient="records", date_format="iso"))
    answers = answer(model, records)  # one batch, then one answer per request
    with PredictionLogWriter(log_dir) as log:
        for n, record in enumerate(records):
            request_id = f"r{ts:.0f}-{n}"
            production = {**answers, "predictions": answers["predictions"][n:n + 1],
                          "probabilities": answers["probabilities"][n:n + 1]}
            log.write_request(request_id=request_id, records=[record], production=production,
                              mirrored=False, shadow_reason="no shadow configured", ts=ts + n * 0.01)
            if n < labelled * len(records):
                log.write_feedback(request_id=request_id, label=int(frame["is_fraud"].iloc[n]), ts=ts + 60)
        for n in range(refused):
            log.write_request(request_id=f"bad{ts:.0f}-{n}", records=[{"channel": "fax"}], mirrored=False,
                              production={"model": None, "version": None, "predictions": None,
                                          "probabilities": None, "latency_ms": 1.0, "status": 422,
                                          "error": "field 'channel' must be one of pos, online, atm"},
                              shadow_reason="no shadow configured", ts=ts)
