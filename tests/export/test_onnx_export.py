"""`modelcycle export MODEL@VERSION --format onnx`: one ONNX file, preprocessing included, checked
for parity on the version's test split, recorded on the version, refused with the reason when
it cannot be faithful."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from export.trained import modelcycle, records
from fraud_example import regression_spec_dict, small_spec_dict
from modelcycle import embedded
from modelcycle.export import PARITY_TOLERANCE, ExportRefused, check_parity, to_onnx
from modelcycle.spec import parse_spec
from modelcycle.training import split_data, train_candidate


@pytest.mark.parametrize("name", ["fraud", "amount"])
def test_export_writes_the_file_its_sha256_schema_and_loader_and_records_it(project_dir, name):
    out = project_dir.root / f"export-{name}"
    done = modelcycle("export", f"{name}@1", "--format", "onnx", "--spec", str(project_dir.specs[name]),
                      "-o", str(out), cwd=project_dir.root)
    assert done.returncode == 0, done.stderr
    onnx_file = out / f"{name}-1.onnx"
    digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert (out / f"{name}-1.onnx.sha256").read_text() == f"{digest}  {onnx_file.name}\n"
    assert json.loads((out / f"{name}-1.schema.json").read_text())["target"] == project_dir.spec(name).data.target
    assert (out / "modelcycle_embedded.py").read_text() == open(embedded.__file__).read()

    notes = project_dir.registry.get(name, 1).annotations
    assert notes["export.onnx.sha256"] == digest
    assert notes["export.onnx.path"] == str(onnx_file.resolve())
    assert int(notes["export.onnx.parity_rows"]) == len(project_dir.test_split(name))
    assert float(notes["export.onnx.parity_max_difference"]) <= PARITY_TOLERANCE
    assert f"parity on {len(project_dir.test_split(name)):,} rows" in done.stdout


BLOCK_SKLEARN_AND_PANDAS = """
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sklearn", "pandas", "modelcycle", "skl2onnx"):
            raise ImportError(f"{name} is not allowed here")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, sys.argv[1])
from modelcycle_embedded import EmbeddedModel
model = EmbeddedModel.load(sys.argv[2])
predictions, proba = model.predict_records(json.load(sys.stdin))
print(json.dumps({"predictions": predictions, "proba": None if proba is None else proba.tolist()}))
"""


@pytest.mark.parametrize("name", ["fraud", "amount"])
def test_the_loader_runs_with_onnxruntime_and_numpy_only_and_agrees(project_dir, name):
    out = project_dir.root / f"loader-{name}"
    done = modelcycle("export", f"{name}@1", "--spec", str(project_dir.specs[name]), "-o", str(out),
                      cwd=project_dir.root)
    assert done.returncode == 0, done.stderr
    test = project_dir.test_split(name).head(200)
    sent = records(test.drop(columns=[project_dir.spec(name).data.target]))
    sent[0]["customer_age"] = "41"  # a number as text: read as the pipeline reads it
    sent[1]["tx_last_24h"] = "many"  # not a number: missing, then imputed, on both paths
    sent[2]["merchant_category"] = None
    ran = subprocess.run([sys.executable, "-c", BLOCK_SKLEARN_AND_PANDAS, str(out), str(out / f"{name}-1.onnx")],
                         input=json.dumps(sent), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)

    model = project_dir.registry.load(name, 1)
    frame = pd.DataFrame(sent)
    if name == "fraud":
        np.testing.assert_allclose(answer["proba"], model.predict_proba(frame), atol=PARITY_TOLERANCE)
        assert answer["predictions"] == model.predict(frame).tolist()
    else:
        assert answer["proba"] is None
        np.testing.assert_allclose(answer["predictions"], model.predict(frame), rtol=1e-5)


def test_export_refuses_when_parity_fails_and_records_nothing(project_dir):
    before = project_dir.registry.get("fraud", 1).annotations
    done = modelcycle("export", "fraud@1", "--spec", str(project_dir.specs["fraud"]), "--tolerance", "1e-300",
                      "-o", str(project_dir.root / "too-strict"), cwd=project_dir.root)
    assert done.returncode == 3
    assert "export refused: parity failed" in done.stderr and "above the tolerance 1e-300" in done.stderr
    assert not (project_dir.root / "too-strict" / "fraud-1.onnx").exists()
    assert project_dir.registry.get("fraud", 1).annotations == before


def test_export_refuses_a_spec_the_version_was_not_trained_with(project_dir):
    done = modelcycle("export", "fraud@1", "--spec", str(project_dir.specs["amount"]), cwd=project_dir.root)
    assert done.returncode == 3
    assert "is not the one fraud version 1 was trained with" in done.stderr


@pytest.fixture(scope="module")
def fraud_splits(fraud_frame):
    spec = parse_spec(small_spec_dict())
    return spec, split_data(fraud_frame, spec)


@pytest.mark.parametrize("algorithm, params", [
    ("logistic_regression", {}),
    ("random_forest", {"n_estimators": 20, "max_depth": 8}),
    ("hist_gradient_boosting", {"max_iter": 30}),
])
def test_every_candidate_algorithm_exports_within_tolerance(tmp_path, fraud_splits, algorithm, params):
    spec, splits = fraud_splits
    (candidate,) = [c for c in spec.training.candidates if c.algorithm == algorithm]
    model, _ = train_candidate(spec, candidate.model_copy(update={"search_space": {}, "params": params}),
                               splits.train, artifact_path=str(tmp_path / "m.joblib"))
    parity = check_parity(model, embedded.EmbeddedModel(to_onnx(model)), splits.test)
    assert parity.rows == len(splits.test)
    assert parity.passed, parity


def test_a_regression_exports_within_tolerance(tmp_path, fraud_frame):
    spec = parse_spec(regression_spec_dict())
    splits = split_data(fraud_frame, spec)
    model, _ = train_candidate(spec, spec.training.candidates[0].model_copy(update={"search_space": {}}),
                               splits.train, artifact_path=str(tmp_path / "m.joblib"))
    assert check_parity(model, embedded.EmbeddedModel(to_onnx(model)), splits.test).passed


def test_an_estimator_skl2onnx_cannot_convert_is_refused_with_the_reason(tmp_path, fraud_splits):
    spec, splits = fraud_splits
    model, _ = train_candidate(spec, spec.training.candidates[0].model_copy(update={"search_space": {}}),
                               splits.train.head(300), artifact_path=str(tmp_path / "m.joblib"))
    model.pipeline.steps[-1] = ("model", DummyClassifier().fit(np.zeros((4, 1)), [0, 1, 0, 1]))
    with pytest.raises(ExportRefused, match="the estimator DummyClassifier cannot be converted by skl2onnx"):
        to_onnx(model)
