"""Registering a model makes a complete, numbered version whose manifest tells the truth."""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modelcycle.registry import Gate, InvalidName, Lineage, ModelNotFound, Registry, RegistryError

from .conftest import LINEAGE, REJECTED


def test_versions_are_numbered_from_one_and_latest_is_the_newest(registry, register):
    first, second = register(), register(model={"weights": [0.3]})
    assert (first.version, second.version) == (1, 2)
    assert registry.get("fraud").version == 2
    assert registry.get("fraud", 1).version == registry.get("fraud", "1").version == 1
    assert [v.version for v in registry.versions("fraud")] == [1, 2]
    assert registry.load("fraud", 1) == {"weights": [0.1, 0.2]}
    assert registry.load("fraud") == {"weights": [0.3]}


def test_manifest_records_digest_size_time_and_lineage_of_what_is_on_disk(root, registry, register):
    before = datetime.now(UTC)
    version = register(lineage=LINEAGE | {"parent_version": None, "pipeline_run": "run-7"},
                       gates=[{"name": "test.roc_auc", "metric": "roc_auc", "op": ">=",
                               "threshold": 0.8, "value": 0.91, "passed": True}])
    artifact = root / "fraud" / "versions" / "1" / "model.joblib"
    data = artifact.read_bytes()
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    assert version.size_bytes == len(data)
    assert version.artifact_uri == artifact.as_uri()
    assert before <= version.created_at <= datetime.now(UTC) and version.created_at.utcoffset() == timedelta(0)

    stored = registry.get("fraud", 1)
    assert stored == version
    assert stored.lineage.data_version == LINEAGE["data_version"]
    assert stored.lineage.pipeline_run == "run-7"  # extra lineage fields are kept
    assert stored.gates == [Gate(name="test.roc_auc", metric="roc_auc", op=">=", threshold=0.8,
                                       value=0.91, passed=True)]
    manifest = json.loads((root / "fraud" / "versions" / "1" / "version.json").read_text())
    assert manifest["sha256"] == version.sha256 and "aliases" not in manifest


def test_a_fitted_estimator_round_trips(registry):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    model = LogisticRegression().fit(x, y)
    registry.register("fraud", model, lineage=Lineage(data_version="d1"), params=model.get_params(), metrics={})
    np.testing.assert_array_equal(registry.load("fraud").predict_proba(x), model.predict_proba(x))


def test_the_same_artifact_and_lineage_twice_makes_two_versions(registry, register):
    first, second = register(), register()
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == second.sha256
    assert first.lineage == second.lineage


def test_gates_may_be_any_object_with_the_gate_fields(registry, register):
    @dataclass
    class Gate:  # stands for modelcycle.evaluation.Gate, which has these attributes
        name: str
        metric: str
        op: str
        threshold: float
        value: float | None
        passed: bool

    register(gates=[Gate("budget.latency", "p95_ms_per_row", "<=", 5.0, 1.2, True)])
    assert registry.get("fraud").gates[0].metric == "p95_ms_per_row"


def test_a_model_that_failed_a_gate_cannot_be_registered_and_nothing_is_written(registry, register):
    with pytest.raises(RegistryError, match=r"failed gates test\.roc_auc.*'rejected'"):
        register(status="registered", gates=REJECTED["gates"])
    assert registry.models() == []
    assert register(**REJECTED).status == "rejected"


@pytest.mark.parametrize("bad", [
    {"params": {"seed": object()}},
    {"status": "approved"},
    {"lineage": {"parent_version": "the previous one"}},
])
def test_invalid_manifest_content_is_refused_before_anything_is_written(root, registry, register, bad):
    with pytest.raises(RegistryError, match="cannot register model 'fraud'"):
        register(**bad)
    assert registry.models() == [] and not (root / "fraud" / "versions").exists()


@pytest.mark.parametrize("name", ["Fraud", "fraud_v1", "-fraud", "fraud-", "", "a" * 64, "../etc", "fraud@1"])
def test_a_bad_model_name_is_refused_naming_the_name_and_the_rule(registry, name):
    with pytest.raises(InvalidName) as caught:
        registry.register(name, {}, lineage={}, params={}, metrics={})
    assert repr(name) in str(caught.value) and "lowercase letters, digits and '-'" in str(caught.value)
    with pytest.raises(InvalidName):
        registry.get(name)


def test_the_longest_valid_name_is_accepted(registry, register):
    assert register("a" * 63).name == "a" * 63


def test_an_unknown_model_lists_the_known_models(registry, register):
    register("fraud"), register("churn")
    with pytest.raises(ModelNotFound, match="model 'frad' not found .* known models: churn, fraud") as caught:
        registry.get("frad")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(ModelNotFound, match="known models: churn, fraud"):
        registry.versions("frad")
    assert registry.models() == ["churn", "fraud"]
    with pytest.raises(ModelNotFound, match=r"known models: \(none\)"):
        Registry(registry.root + "-empty").get("fraud")


def test_an_unknown_version_lists_the_versions(registry, register):
    register(), register()
    with pytest.raises(ModelNotFound, match="model 'fraud' has no version 7; versions: 1, 2"):
        registry.get("fraud", 7)
