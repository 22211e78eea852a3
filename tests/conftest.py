"""Shared pytest configuration: plugins every test folder may use."""

pytest_plugins = ["modelcycle.cluster.testing"]

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fraud"


def _generator():
    spec = importlib.util.spec_from_file_location("fraud_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generate_fraud():
    """The bundled example's seeded generator: `generate_fraud(rows, seed=, drift=)`."""
    return _generator().generate


@pytest.fixture(scope="session")
def fraud_frame(generate_fraud) -> pd.DataFrame:
    return generate_fraud(4000)


def small_spec_dict() -> dict:
    """The example spec with a search small enough for tests."""
    spec = yaml.safe_load((EXAMPLE / "modelcycle.yaml").read_text())
    spec["training"]["search_iterations"] = 2
    spec["training"]["cv_folds"] = 2
    spec["training"]["n_jobs"] = 1
    for cand in spec["training"]["candidates"]:
        if cand["algorithm"] == "random_forest":
            cand["params"] = {"n_estimators": 20}
        if cand["algorithm"] == "hist_gradient_boosting":
            cand["params"] = {"max_iter": 30}
    return spec


@pytest.fixture
def project(tmp_path, fraud_frame):
    """A project folder: the small example spec and its data file, ready to run."""
    (tmp_path / "data").mkdir()
    fraud_frame.to_parquet(tmp_path / "data" / "transactions.parquet", index=False)
    spec_path = tmp_path / "modelcycle.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec_dict(), sort_keys=False))
    return spec_path


@pytest.fixture
def spec(project):
    from modelcycle.spec import load_spec

    return load_spec(project)


