"""The promotion policy's defaults are written once, in `ShadowPolicy`: the operator, the
gateway's flags and `modelcycle shadow report` take them from it, and the CRD, which is
YAML that `kubectl explain` reads, is checked against it here (defaults and bounds)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from annotated_types import Ge, Gt, Le, Lt
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.monitoring.shadow import ShadowPolicy
from modelcycle.operator.promotion import POLICY_FIELDS, shadow_policy
from modelcycle.operator.resources import POLICY_KEY, gateway_config

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "modelcycle" / "crds" / "modeldeployments.yaml"
DEFAULTS = ShadowPolicy().model_dump()


def _promotion_schema() -> dict[str, Any]:
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["promotion"]["properties"]


def _crd_bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low included, high, high included) of a CRD number or integer."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_in = low is not None and not schema.get("exclusiveMinimum", False)
    high_in = high is not None and not schema.get("exclusiveMaximum", False)
    if schema["type"] == "integer" and low is not None and not low_in:
        low, low_in = low + 1, True
    return low, low_in, high, high_in


def _policy_bounds(field: str) -> tuple[float | None, bool, float | None, bool]:
    """The same of a ShadowPolicy field, from its annotated constraints."""
    info = ShadowPolicy.model_fields[field]
    low, low_in, high, high_in = None, False, None, False
    for constraint in info.metadata:
        if isinstance(constraint, Gt):
            low, low_in = constraint.gt, False
        elif isinstance(constraint, Ge):
            low, low_in = constraint.ge, True
        elif isinstance(constraint, Lt):
            high, high_in = constraint.lt, False
        elif isinstance(constraint, Le):
            high, high_in = constraint.le, True
    if info.annotation is int and low is not None and not low_in:
        low, low_in = low + 1, True
    return low, low_in, high, high_in


def test_the_crd_defaults_and_bounds_are_the_policys() -> None:
    schema = _promotion_schema()
    thresholds = set(schema) - {"mode", "minDuration"}
    assert thresholds == set(POLICY_FIELDS), "every threshold of spec.promotion maps to a ShadowPolicy field"
    assert set(POLICY_FIELDS.values()) == set(ShadowPolicy.model_fields) - {"confidence"}
    for name, field in POLICY_FIELDS.items():
        assert schema[name]["default"] == DEFAULTS[field], f"spec.promotion.{name}'s default"
        assert schema[name]["type"] == {int: "integer", float: "number"}[ShadowPolicy.model_fields[field].annotation]
        assert _crd_bounds(schema[name]) == _policy_bounds(field), f"spec.promotion.{name}'s bounds"


def test_the_operator_gives_the_gateway_the_policys_defaults() -> None:
    md = {"metadata": {"name": "fraud", "namespace": "ns", "uid": "u"},
          "spec": {"model": "fraud", "production": {"version": 3, "image": "fraud:3"}}}
    assert json.loads(gateway_config(md)[POLICY_KEY]) == DEFAULTS
    md["spec"]["promotion"] = {"mode": "auto", "minRequests": 40, "maxErrorRate": 0.2}
    assert json.loads(gateway_config(md)[POLICY_KEY]) == {**DEFAULTS, "min_requests": 40, "max_error_rate": 0.2}
    assert shadow_policy({}) == ShadowPolicy()


def test_the_operator_reads_the_policy_without_the_scientific_stack() -> None:
    """The operator image has no numpy, pandas or scipy (the `operator` extra)."""
    script = (
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numpy', 'pandas', 'scipy', 'sklearn', 'matplotlib'):\n"
        "            raise ImportError(f'{name} is not in the operator image')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "import modelcycle.operator.handlers, modelcycle.operator.resources\n"
        "from modelcycle.operator.promotion import shadow_policy\n"
        "print(shadow_policy({}).model_dump_json())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == DEFAULTS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_gateway_without_policy_flags_uses_the_policys_defaults(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelcycle.serving.gateway", "--production-url", "http://127.0.0.1:9",
         "--shadow-url", "http://127.0.0.1:9", "--log-dir", str(tmp_path / "log"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/shadow/comparison", timeout=30) as answer:
                    comparison = json.loads(answer.read())
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert comparison["policy"] == DEFAULTS


def test_shadow_report_uses_the_policys_defaults(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    result = CliRunner().invoke(app, ["shadow", "report", str(tmp_path / "log"), "--out", str(tmp_path / "r.html"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output[:result.output.rindex("}") + 1])
    assert document["policy"] == DEFAULTS
