"""A Deployment rolls out on kwok's fake nodes: scheduled, "running" and Available."""

import json

import pytest

pytestmark = pytest.mark.cluster

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: model-server
spec:
  replicas: 2
  selector:
    matchLabels: {app: model-server}
  template:
    metadata:
      labels: {app: model-server}
    spec:
      containers:
        - name: server
          image: registry.invalid/model-server:1
"""


def test_deployment_becomes_available_on_kwok_nodes(kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)

    kubectl(
        "wait", "-n", namespace, "--for=condition=Available", "--timeout=60s",
        "deployment/model-server",
    )

    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l", "app=model-server", "-o", "json").stdout)
    kwok_nodes = kubectl("get", "nodes", "-l", "type=kwok", "-o", "name").stdout.split()
    assert len(pods["items"]) == 2
    for pod in pods["items"]:
        assert pod["status"]["phase"] == "Running"
        assert f"node/{pod['spec']['nodeName']}" in kwok_nodes
