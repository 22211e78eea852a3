"""A project folder with trained, registered versions, laid out as `modelcycle run` leaves it.

Shared by the export and batch tests: the spec file, the data version in
``.modelcycle/data`` and the registry in ``.modelcycle/registry``, each version with the
lineage (data version, spec hash) that rebuilds its test split. Models are trained
in-process with a fixed candidate (no search), as the serving tests do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from fraud_example import regression_spec_dict, small_spec_dict
from modelcycle.data import DataStore
from modelcycle.registry import Registry
from modelcycle.spec import ProjectSpec, load_spec
from modelcycle.training import split_data, train_candidate
from modelcycle.validation import infer_schema

MODELCYCLE = str(Path(sys.executable).with_name("modelcycle"))
PASSED = [{"name": "test.score", "metric": "score", "op": ">=", "threshold": 0.0, "value": 1.0, "passed": True}]


@dataclass
class Project:
    root: Path
    registry: Registry
    store: DataStore
    specs: dict[str, Path]
    """Model name -> its spec file."""

    def spec(self, name: str) -> ProjectSpec:
        return load_spec(self.specs[name])

    def test_split(self, name: str) -> pd.DataFrame:
        spec = self.spec(name)
        return split_data(self.store.load(self.registry.get(name).lineage.data_version), spec).test


def build_project(root: Path, frame: pd.DataFrame, models: dict[str, tuple[dict, str, dict]]) -> Project:
    """Register one version per entry of `models`: name -> (spec dict, algorithm, params)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "data" / "transactions.parquet", index=False)
    workdir = root / ".modelcycle"
    store, registry = DataStore(workdir / "data"), Registry(workdir / "registry")
    data_version = store.snapshot(frame, source="data/transactions.parquet")
    specs = {}
    for name, (spec_dict, algorithm, params) in models.items():
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**spec_dict, "name": name}, sort_keys=False))
        spec = load_spec(path)
        splits = split_data(frame, spec)
        (candidate,) = [c for c in spec.training.candidates if c.algorithm == algorithm]
        candidate = candidate.model_copy(update={"search_space": {}, "params": params})
        model, _ = train_candidate(spec, candidate, splits.train, artifact_path=str(root / f"{name}.joblib"))
        model.schema = infer_schema(splits.train, spec)
        registry.register(name, model, lineage={"data_version": data_version.id, "spec_hash": spec.spec_hash()},
                          params={"algorithm": algorithm}, metrics={}, gates=PASSED)
        specs[name] = path
    return Project(root=root, registry=registry, store=store, specs=specs)


def fraud_and_amount(root: Path, frame: pd.DataFrame) -> Project:
    """`fraud` (the example's binary classification, logistic regression) and `amount` (a ridge
    regression of the amount)."""
    return build_project(root, frame, {
        "fraud": (small_spec_dict(), "logistic_regression", {}),
        "amount": (regression_spec_dict(), "ridge", {}),
    })


def modelcycle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([MODELCYCLE, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "250"})


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as a JSON client sends them: JSON types, dates as ISO strings."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))
