"""The API server enforces a CRD's schema and its CEL rules, and names the field at fault."""

from collections.abc import Iterator

import pytest

from modelcycle.cluster import Cluster, KubectlError

pytestmark = pytest.mark.cluster

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: trafficsplits.testing.modelcycle.io
spec:
  group: testing.modelcycle.io
  scope: Namespaced
  names: {plural: trafficsplits, singular: trafficsplit, kind: TrafficSplit}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [productionWeight]
              properties:
                productionWeight: {type: integer, minimum: 0, maximum: 100}
                shadowWeight: {type: integer, minimum: 0, maximum: 100}
              x-kubernetes-validations:
                - rule: "!has(self.shadowWeight) || self.productionWeight + self.shadowWeight == 100"
                  message: productionWeight and shadowWeight must add up to 100
                  fieldPath: .shadowWeight
"""


def split(name: str, **spec: int) -> str:
    fields = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    return f"""
apiVersion: testing.modelcycle.io/v1
kind: TrafficSplit
metadata:
  name: {name}
spec:{fields}
"""


@pytest.fixture(scope="module")
def crd(control_plane: Cluster) -> Iterator[None]:
    control_plane.kubectl("apply", "-f", "-", input=CRD)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s",
        "crd/trafficsplits.testing.modelcycle.io",
    )
    yield
    control_plane.kubectl("delete", "crd", "trafficsplits.testing.modelcycle.io", "--wait=false")


def test_valid_object_is_stored(crd: None, kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=split("ok", productionWeight=90, shadowWeight=10))

    stored = kubectl("get", "-n", namespace, "trafficsplit", "ok", "-o", "jsonpath={.spec.shadowWeight}")

    assert stored.stdout == "10"


def test_schema_violation_names_the_field(crd: None, kubectl, namespace: str) -> None:
    with pytest.raises(KubectlError) as rejected:
        kubectl("apply", "-n", namespace, "-f", "-", input=split("too-much", productionWeight=150))

    assert "spec.productionWeight" in rejected.value.stderr
    assert "less than or equal to 100" in rejected.value.stderr


def test_cel_rule_violation_names_the_field(crd: None, kubectl, namespace: str) -> None:
    with pytest.raises(KubectlError) as rejected:
        kubectl(
            "apply", "-n", namespace, "-f", "-",
            input=split("over-100", productionWeight=80, shadowWeight=30),
        )

    assert "spec.shadowWeight" in rejected.value.stderr
    assert "productionWeight and shadowWeight must add up to 100" in rejected.value.stderr
    missing = kubectl("get", "-n", namespace, "trafficsplit", "over-100", check=False)
    assert missing.returncode != 0
