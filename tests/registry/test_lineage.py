"""A version links to the run that trained it, that run's report, and the version it was
measured against or follows; manifests written with the former status word still read."""

import json
from types import SimpleNamespace

import pytest

from modelcycle.evaluation import Evaluation, Latency, SetEvaluation
from modelcycle.lifecycle import register_phase
from modelcycle.registry import Registry
from modelcycle.spec import CandidateScore, Gate
from modelcycle.validation import infer_schema


def _evaluation(*, passed: bool) -> Evaluation:
    value = 0.9 if passed else 0.6
    gate = Gate(name="test.roc_auc", metric="roc_auc", op=">=", threshold=0.8, value=value, passed=passed,
                source="goal.primary.min in the spec")
    scores = [CandidateScore(algorithm="logistic_regression", params={"C": 1.0}, metric="roc_auc", cv_mean=0.91,
                             cv_std=0.01, cv_folds=3, cv_rows=2000, selected=True),
              CandidateScore(algorithm="random_forest", params={"max_depth": 6}, metric="roc_auc", cv_mean=0.90,
                             cv_std=0.02, cv_folds=3, cv_rows=2000)]
    return Evaluation(algorithm="logistic_regression", params={"C": 1.0}, candidates=scores,
                      selection="logistic_regression has the best mean cross-validated roc_auc", fit_rows=2500,
                      threshold=0.3, sets={"test": SetEvaluation(rows=500, metrics={"roc_auc": value})}, importance={},
                      latency=Latency(p50_ms=1.0, p95_ms=2.0, batch_rows_per_s=1e4), artifact_bytes=100, gates=[gate])


@pytest.fixture
def register(registry, spec, fraud_frame):
    schema = infer_schema(fraud_frame, spec)

    def register(run: int, *, passed: bool, name: str = "fraud"):
        model = SimpleNamespace(algorithm="logistic_regression", params={"C": 1.0})
        return register_phase(spec.model_copy(update={"name": name}), registry=registry, model=model,
                              evaluation=_evaluation(passed=passed), data_version="d1", schema=schema,
                              run_id=f"run-{run}", report=f"/runs/{run}/report.html")

    return register


def test_a_version_links_to_its_run_its_report_and_the_champion_it_was_measured_against(register):
    first = register(1, passed=True)
    assert (first.version, first.status, first.aliases) == (1, "registered", ["champion"])
    assert first.lineage.parent_version is None  # nothing came before it
    assert (first.lineage.run_id, first.lineage.report) == ("run-1", "/runs/1/report.html")
    second = register(2, passed=True)
    assert (second.aliases, second.lineage.parent_version) == (["challenger"], 1)
    assert (second.lineage.run_id, second.lineage.report) == ("run-2", "/runs/2/report.html")
    third = register(3, passed=False)
    assert (third.status, third.aliases, third.lineage.parent_version) == ("rejected", [], 1)
    # What won, and against what, is on the version.
    assert [(c.algorithm, c.cv_mean, c.selected) for c in third.candidates] == [
        ("logistic_regression", 0.91, True), ("random_forest", 0.90, False)]
    assert third.selection.startswith("logistic_regression has the best mean")


def test_without_a_champion_a_version_follows_the_newest_one_before_it(register):
    first = register(1, passed=False, name="churn")
    second = register(2, passed=False, name="churn")
    assert (first.lineage.parent_version, second.lineage.parent_version) == (None, 1)
    third = register(3, passed=True, name="churn")
    assert (third.aliases, third.lineage.parent_version) == (["champion"], 2)


def test_a_manifest_that_says_candidate_reads_as_registered(root, registry: Registry):
    registry.register("fraud", {"w": 1}, lineage={"data_version": "d1"}, params={}, metrics={})
    manifest = root / "fraud" / "versions" / "1" / "version.json"
    old = json.loads(manifest.read_text())
    old["status"] = "candidate"
    for key in ("candidates", "selection"):
        old.pop(key)
    manifest.write_text(json.dumps(old))
    version = registry.get("fraud", 1)
    assert (version.status, version.candidates, version.lineage.run_id) == ("registered", [], None)
    registry.set_alias("fraud", "champion", 1)
    assert registry.get("fraud", "champion").version == 1
