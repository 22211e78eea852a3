"""The chart's Grafana dashboard and ServiceMonitor, rendered by the real helm: off by default,
and when on, a ConfigMap Grafana's sidecar picks up whose queries name only metrics the
gateway exports, and a ServiceMonitor that selects the gateways' Services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from modelcycle.cluster.binaries import MissingBinary, find
from modelcycle.operator.resources import labels
from modelcycle.serving.gateway import GatewayMetrics

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelcycle"


def _template(tmp_path: Path, *values: str) -> list[dict]:
    try:
        helm = find("helm")
    except MissingBinary as exc:
        pytest.fail(f"no helm binary ({exc}); `make test` builds it", pytrace=False)
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}
    args = [str(helm), "template", "mc", str(CHART), "--namespace", "ml"]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_both_are_off_by_default(tmp_path):
    kinds = {doc["kind"] for doc in _template(tmp_path)}
    assert "ServiceMonitor" not in kinds
    assert not [doc for doc in _template(tmp_path) if doc["kind"] == "ConfigMap"]


def test_the_dashboard_configmap_queries_what_the_gateway_exports(tmp_path):
    (configmap,) = [doc for doc in _template(tmp_path, "monitoring.grafanaDashboard.enabled=true")
                    if doc["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "ml"
    dashboard = json.loads(configmap["data"]["modelcycle-monitoring.json"])
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for query in queries for name in re.findall(r"\b(modelcycle_[a-z_]+)", query)}
    metrics = GatewayMetrics(asyncio.Queue())
    metrics.track_scores([0.5, 1.0])
    families = {family.name: family.type for family in metrics.registry.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {name + suffix for name, kind in families.items() for suffix in suffixes[kind]}
    assert used and used <= exported, used - exported
    for name in ("modelcycle_dataset_drift", "modelcycle_drift_score", "modelcycle_live_metric",
                 "modelcycle_prediction_score_bucket"):
        assert name in used


def test_the_service_monitor_selects_the_gateways(tmp_path):
    (monitor,) = [doc for doc in _template(tmp_path, "monitoring.serviceMonitor.enabled=true",
                                           "watchNamespaces={ml,team}") if doc["kind"] == "ServiceMonitor"]
    gateway = labels({"metadata": {"name": "fraud", "namespace": "ml"}, "spec": {"model": "fraud"}}, "gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= gateway.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml", "team"]}
    (alone,) = [doc for doc in _template(tmp_path, "monitoring.serviceMonitor.enabled=true")
                if doc["kind"] == "ServiceMonitor"]
    assert alone["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}  # the release's namespace only
    (everywhere,) = [doc for doc in _template(tmp_path, "monitoring.serviceMonitor.enabled=true", "clusterWide=true")
                     if doc["kind"] == "ServiceMonitor"]
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s",
                                             "scrapeTimeout": "10s"}]
