"""The whole pipeline, run locally through kfp.local by the CLI, as a person would run it.

The runs share one project folder and go in order: a model that passes its gates becomes
the champion; the same data with an impossible goal is registered as rejected and leaves
the champion alone; bad data stops the run before training and leaves the registry as it
was.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fraud_example import small_spec_dict
from modelcycle.registry import Registry

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "modelcycle.cli"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, generate_fraud):
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    generate_fraud(5000, seed=11).to_parquet(root / "data" / "transactions.parquet", index=False)
    return root


def _write_spec(root: Path, *, primary: dict) -> Path:
    spec = small_spec_dict()
    spec["goal"]["primary"] = primary
    spec["goal"]["secondary"] = []
    path = root / "modelcycle.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "modelcycle.yaml"], cwd=root, capture_output=True, text=True, timeout=600)


def test_1_passing_model_becomes_champion(workspace):
    _write_spec(workspace, primary={"metric": "accuracy", "min": 0.5})
    result = _run(workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    for phase in ("ingest", "validate", "train", "evaluate", "register"):
        assert f"✓ {phase}" in result.stdout
    registry = Registry(workspace / ".modelcycle" / "registry")
    v = registry.get("fraud", "champion")
    assert v.version == 1 and v.status == "candidate"
    assert v.lineage.data_version and v.lineage.spec_hash and v.lineage.schema_hash and v.lineage.code_version
    assert v.params["algorithm"] in {"logistic_regression", "random_forest", "hist_gradient_boosting"}
    assert {"test.roc_auc", "out_of_time.roc_auc", "threshold"} <= set(v.metrics)
    model = registry.load("fraud", "champion")
    frame = __import__("pandas").read_parquet(workspace / "data" / "transactions.parquet").head(50)
    assert len(model.predict(frame)) == 50
    assert model.schema is not None and model.threshold == v.metrics["threshold"]
    report = next((workspace / ".modelcycle" / "runs").glob("*/report.html"))
    assert str(report) in result.stdout.replace("\n", "")
    page = report.read_text()
    assert 'alt="ROC curve"' in page and page.count("data:image/png;base64,") >= 6
    result_json = json.loads((report.parent / "result.json").read_text())
    assert result_json["model_version"] == "fraud@1"


def test_2_failed_gate_registers_rejected_and_keeps_champion(workspace):
    _write_spec(workspace, primary={"metric": "roc_auc", "min": 0.999})
    result = _run(workspace)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "rejected" in result.stdout and "FAIL" in result.stdout
    registry = Registry(workspace / ".modelcycle" / "registry")
    v2 = registry.get("fraud", 2)
    assert v2.status == "rejected" and not v2.aliases
    assert any(not g.passed and g.name == "test.roc_auc" for g in v2.gates)
    assert registry.get("fraud", "champion").version == 1
    # Same data, same data version: ingest is idempotent.
    assert v2.lineage.data_version == registry.get("fraud", 1).lineage.data_version


def test_3_bad_data_stops_before_training_and_registry_is_unchanged(workspace):
    import pandas as pd

    registry_dir = workspace / ".modelcycle" / "registry"
    before = sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*") if ".lock" not in p.name)
    frame = pd.read_parquet(workspace / "data" / "transactions.parquet")
    frame.loc[5, "channel"] = "carrier_pigeon"
    frame.loc[9, "customer_age"] = 7
    frame.to_parquet(workspace / "data" / "transactions.parquet", index=False)
    _write_spec(workspace, primary={"metric": "accuracy", "min": 0.5})
    result = _run(workspace)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "✓ train" not in result.stdout
    assert "carrier_pigeon" in result.stderr and "channel" in result.stderr and "customer_age" in result.stderr
    after = sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*") if ".lock" not in p.name)
    assert after == before
