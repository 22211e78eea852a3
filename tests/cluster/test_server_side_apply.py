"""Server-side apply records who owns which field, and refuses to let another manager
silently take a field over."""

import json

import pytest

from modelcycle.cluster import KubectlError

pytestmark = pytest.mark.cluster


def config_map(threshold: str) -> str:
    return f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: drift-policy
data:
  threshold: "{threshold}"
"""


def test_apply_records_its_field_manager(kubectl, namespace: str) -> None:
    kubectl(
        "apply", "--server-side", "--field-manager=modelcycle-test", "-n", namespace, "-f", "-",
        input=config_map("0.2"),
    )

    stored = json.loads(
        kubectl("get", "configmap", "drift-policy", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    )
    entries = {entry["manager"]: entry for entry in stored["metadata"]["managedFields"]}
    assert entries["modelcycle-test"]["operation"] == "Apply"
    assert "f:threshold" in entries["modelcycle-test"]["fieldsV1"]["f:data"]


def test_other_manager_conflicts_on_an_owned_field(kubectl, namespace: str) -> None:
    apply = ("apply", "--server-side", "-n", namespace, "-f", "-")
    kubectl(*apply, "--field-manager=modelcycle-test", input=config_map("0.2"))

    with pytest.raises(KubectlError) as conflict:
        kubectl(*apply, "--field-manager=someone-else", input=config_map("0.5"))

    assert "conflict" in conflict.value.stderr.lower()
    assert "modelcycle-test" in conflict.value.stderr
    threshold = kubectl("get", "configmap", "drift-policy", "-n", namespace, "-o", "jsonpath={.data.threshold}")
    assert threshold.stdout == "0.2"
