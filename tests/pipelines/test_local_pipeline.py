"""The whole pipeline, run locally through kfp.local by the CLI, as a person would run it.

The runs share one project folder and go in order: a model that passes its gates becomes
the champion; the same data with an impossible goal is rejected, says which gate and where
its threshold came from, and leaves the champion alone; bad data stops the run before
training and leaves the registry as it was. Apart from those, a project started with `init`
on a hard data set passes the gates that init proposed.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fraud_example import small_spec_dict
from modelcycle.registry import Registry
from modelcycle.spec import load_spec

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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def test_1_passing_model_becomes_champion(workspace):
    _write_spec(workspace, primary={"metric": "accuracy", "min": 0.5})
    result = _run(workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    for phase in ("ingest", "validate", "train", "evaluate", "register"):
        assert f"✓ {phase}" in result.stdout
    registry = Registry(workspace / ".modelcycle" / "registry")
    v = registry.get("fraud", "champion")
    assert v.version == 1 and v.status == "registered"
    assert v.lineage.data_version and v.lineage.spec_hash and v.lineage.schema_hash and v.lineage.code_version
    assert v.lineage.run_id and "report" in Path(v.lineage.report).name and Path(v.lineage.report).is_file()
    # The summary names the winner, its parameters, and the CV scores of every candidate behind the choice.
    out = _one_line(result.stdout)
    params = ", ".join(f"{k}={val:.4g}" if isinstance(val, float) else f"{k}={val}"
                       for k, val in v.params.items() if k != "algorithm")
    assert f"fraud@1 registered, alias champion selected {v.params['algorithm']} ({params})" in out
    assert [c.algorithm for c in v.candidates] == ["logistic_regression", "random_forest", "hist_gradient_boosting"]
    assert [c.selected for c in v.candidates].count(True) == 1
    (chosen,) = [c for c in v.candidates if c.selected]
    assert chosen.algorithm == v.params["algorithm"] and chosen.params == {k: val for k, val in v.params.items()
                                                                           if k != "algorithm"}
    assert "candidates: 2-fold CV" in out and v.selection and _one_line(v.selection) in out
    for c in v.candidates:
        assert f"{c.algorithm} {c.cv_mean:.4f} {c.cv_std:.4f}" in out
    assert "candidate</b>" not in (Path(v.lineage.report).read_text())
    assert v.params["algorithm"] in {"logistic_regression", "random_forest", "hist_gradient_boosting"}
    assert {"test.roc_auc", "out_of_time.roc_auc", "threshold"} <= set(v.metrics)
    # The registry holds the very bytes evaluation saved and checked, not a second pickle of them.
    (evaluated,) = (workspace / ".modelcycle" / "runs").glob("*/artifacts/*/evaluate/best_model")
    assert v.sha256 == hashlib.sha256(evaluated.read_bytes()).hexdigest()
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
    # The rejection names the gate and the spec key that set its threshold.
    assert "rejected: FAIL test.roc_auc: roc_auc = " in _one_line(result.stdout)
    assert "(needs >= 0.999, set by goal.primary.min in the spec)" in _one_line(result.stdout)
    # The version links to its run, its report, and the champion it was measured against.
    shown = subprocess.run([*CLI, "models", "show", "fraud@2"], cwd=workspace, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    lineage = dict(line.strip().split(": ", 1) for line in shown.stdout.split("lineage")[1].split("metrics")[0].splitlines()
                   if ": " in line)
    assert lineage["parent_version"] == "1" and lineage["run_id"] not in ("", "None")
    assert lineage["run_id"] != registry.get("fraud", 1).lineage.run_id
    assert Path(lineage["report"]).is_file() and "Rejected" in Path(lineage["report"]).read_text()
    assert "compared with fraud@1 (champion): test.roc_auc" in _one_line(shown.stdout)
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


def test_init_proposes_a_gate_from_a_baseline_that_a_sound_model_passes(tmp_path):
    """A noisy target, as in real data: the best a model can reach is an R² near 0.3, below the
    fixed R² >= 0.5 that init used to write, which rejected every run. Now init measures a
    baseline, writes its figures and the gate it proposes, and the run registers the model."""
    rng = np.random.default_rng(3)
    x1, x2, x3 = rng.normal(size=(3, 1200))
    region = rng.choice(["north", "south", "east"], size=1200)
    y = x1 + 0.5 * x2 + 0.3 * (region == "north") + rng.normal(scale=1.6, size=1200)
    pd.DataFrame({"x1": x1, "x2": x2, "x3": x3, "region": region, "price": y}).to_csv(tmp_path / "houses.csv", index=False)
    init = subprocess.run([*CLI, "init", "houses.csv", "--target", "price"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    text = (tmp_path / "modelcycle.yaml").read_text()
    assert "#   dummy (mean)" in text and "#   ridge" in text and "is halfway from a dummy to a linear model" in text
    primary = load_spec(tmp_path / "modelcycle.yaml").goal.primary
    assert primary.metric == "r2" and 0.05 < primary.min < 0.3
    v = Registry(tmp_path / ".modelcycle" / "registry").get("houses", "champion")
    assert v.status == "registered" and primary.min <= v.metrics["test.r2"] < 0.5
    gate = next(g for g in v.gates if g.name == "test.r2")
    assert gate.passed and gate.source == f"goal.primary.min ({primary.note})"
    assert "halfway from a dummy" in _one_line(result.stdout)
