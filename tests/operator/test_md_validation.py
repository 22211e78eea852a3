"""The API server rejects invalid ModelDeployments with the CRD's schema and CEL rules, and
the error names the field and says what is expected."""

from __future__ import annotations

import pytest
from modeldeployments import ModelDeployments, base_spec

from modelcycle.cluster import KubectlError

pytestmark = pytest.mark.cluster


def rejection(mds: ModelDeployments, spec: dict, name: str = "fraud") -> str:
    with pytest.raises(KubectlError) as caught:
        mds.apply(name, spec)
    return caught.value.stderr


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (base_spec(shadow={"version": 3, "image": "fraud:3-abc"}), "spec.shadow.version",
         "must differ from spec.production.version"),
        (base_spec(shadow={"version": "3", "image": "fraud:3-abc"}), "spec.shadow.version",
         "must differ from spec.production.version"),
        (base_spec(shadow={"mirrorPercent": 50}), "spec.shadow.version", "spec.shadow needs a version"),
        (base_spec(shadow={"version": 4, "image": "x", "mirrorPercent": 150}), "spec.shadow.mirrorPercent",
         "less than or equal to 100"),
        (base_spec(promotion={"mode": "sometimes"}), "spec.promotion.mode", 'supported values: "auto", "manual"'),
        (base_spec(promotion={"minDuration": "ten minutes"}), "spec.promotion.minDuration",
         "must be a duration such as 30s"),
        (base_spec(promotion={"minAgreement": 1.5}), "spec.promotion.minAgreement", "less than 1"),
        (base_spec(production={"version": 0, "image": "x"}), "spec.production.version", "a version is a number from 1"),
        ({"model": "fraud", "production": {"version": 3}}, "spec.production.image", "Required value"),
        (base_spec(monitoring={"retrain": {"enabled": True, "specConfigMap": "s", "storeUri": "s3://d"}}),
         "spec.registry", "retrain.enabled needs spec.registry"),
        (base_spec(registry="s3://r", monitoring={"retrain": {"enabled": True, "storeUri": "s3://d"}}),
         "spec.monitoring.retrain.specConfigMap", "retrain.enabled needs retrain.specConfigMap"),
        (base_spec(registry="s3://r", monitoring={"retrain": {"enabled": True, "runner": "kfp", "specConfigMap": "s",
                                                              "storeUri": "s3://d", "kfp": {"host": "http://kfp"}}}),
         "spec.monitoring.retrain.pipeline", "retrain.enabled needs retrain.pipeline with runner kfp"),
        (base_spec(monitoring={"retrain": {"pipeline": "https://example.com/p.yaml"}}),
         "spec.monitoring.retrain.pipeline", "not a URL"),
        (base_spec(monitoring={"schedule": "every hour"}), "spec.monitoring.schedule", "should match"),
        (base_spec(monitoring={"retrain": {"cooldown": "soon"}}), "spec.monitoring.retrain.cooldown", "should match"),
    ],
    ids=["same-version", "same-version-as-string", "mirror-without-shadow", "mirror-over-100", "mode-enum",
         "min-duration", "min-agreement", "version-zero", "image-required", "retrain-registry",
         "retrain-spec-configmap", "retrain-kfp-pipeline", "pipeline-url", "schedule", "cooldown"],
)
def test_invalid_spec_is_rejected_with_the_field(mds: ModelDeployments, spec: dict, field: str, says: str) -> None:
    message = rejection(mds, spec)
    assert field in message and says in message, message


def test_a_name_too_long_for_its_children_is_rejected(mds: ModelDeployments) -> None:
    message = rejection(mds, base_spec(), name="m" * 53)
    assert "metadata.name must be at most 52 characters" in message


def test_defaults_are_filled_in(mds: ModelDeployments) -> None:
    mds.apply("fraud", base_spec(shadow={"version": 4, "image": "fraud:4-def"}))
    spec = mds.get("fraud")["spec"]
    assert spec["production"]["replicas"] == 1
    assert spec["shadow"] == {"version": 4, "image": "fraud:4-def", "mirrorPercent": 100, "replicas": 1, "approved": False}
    assert spec["promotion"] == {"mode": "manual", "minRequests": 500, "minAgreement": 0.95, "maxLatencyRatio": 1.5,
                                 "maxErrorRate": 0.01, "minDuration": "10m"}


def test_kubectl_explain_teaches_the_api(mds: ModelDeployments) -> None:
    explained = mds.cluster.kubectl("explain", "modeldeployment.spec.shadow.mirrorPercent").stdout
    assert "percent (0-100)" in explained
