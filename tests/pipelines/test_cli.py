"""The CLI's small commands: init, compile, data validate, models list/show/alias, exit codes."""

import re

import pytest
import yaml
from typer.testing import CliRunner

from modelcycle.cli import EXIT_INVALID_DATA, EXIT_USAGE, app
from modelcycle.registry import Registry
from modelcycle.spec import load_spec

runner = CliRunner()


def test_init_writes_a_spec_that_loads(tmp_path, fraud_frame):
    data = tmp_path / "tx.parquet"
    fraud_frame.to_parquet(data, index=False)
    out = tmp_path / "modelcycle.yaml"
    result = runner.invoke(app, ["init", str(data), "--target", "is_fraud", "--out", str(out)])
    assert result.exit_code == 0, result.output
    spec = load_spec(out)
    assert spec.task == "binary_classification"
    assert spec.data.id_column == "transaction_id" and spec.data.time_column == "ts"
    assert {"amount", "customer_age"} <= {f.name for f in spec.features.numeric}
    assert {"channel", "country"} <= {f.name for f in spec.features.categorical}
    # The primary gate is proposed from a baseline measured on this file, written with its figures.
    text = out.read_text()
    dummy = re.search(r"^  #\s+dummy \(class prior\)\s+(\d\.\d{3}) ± \d\.\d{3}$", text, re.M)
    linear = re.search(r"^  #\s+logistic_regression\s+(\d\.\d{3}) ± \d\.\d{3}$", text, re.M)
    assert dummy and linear, text
    assert float(dummy[1]) == 0.5 and float(linear[1]) > 0.6
    primary = spec.goal.primary
    assert primary.metric == "roc_auc" and primary.max is None
    assert abs(primary.min - (float(dummy[1]) + float(linear[1])) / 2) <= 0.0015
    assert primary.note.startswith(f"{primary.min:g} proposed from a baseline: halfway") and linear[1] in primary.note
    assert "# roc_auc >= " in text and "raise it to what a mistake costs" in text
    assert "baseline roc_auc" in result.output and f">= {primary.min:g}" in result.output
    again = runner.invoke(app, ["init", str(data), "--target", "is_fraud", "--out", str(out)])
    assert again.exit_code == EXIT_USAGE and "--force" in again.output
    wrong = runner.invoke(app, ["init", str(data), "--target", "nope", "--out", str(tmp_path / "x.yaml")])
    assert wrong.exit_code == EXIT_USAGE and "no column 'nope'" in wrong.output


def test_compile_writes_yaml(tmp_path):
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["compile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text())["pipelineInfo"]["name"] == "modelcycle-training"


def test_data_validate_exit_codes(tmp_path, project, fraud_frame):
    good = tmp_path / "good.csv"
    fraud_frame.head(200).to_csv(good, index=False)
    result = runner.invoke(app, ["data", "validate", str(good), "--spec", str(project), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    bad = fraud_frame.head(200).copy()
    bad.loc[3, "channel"] = "fax"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "bad.csv"), "--spec", str(project),
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == EXIT_INVALID_DATA
    assert "channel" in result.output and "fax" in result.output


def test_bad_spec_is_a_usage_error(tmp_path):
    spec = tmp_path / "modelcycle.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "task": "clustering"}))
    result = runner.invoke(app, ["run", str(spec), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == EXIT_USAGE
    assert "task: expected" in result.output


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry")
    gates = [{"name": "test.roc_auc", "metric": "roc_auc", "op": ">=", "threshold": 0.8, "value": 0.9, "passed": True}]
    for parent in (None, 1):
        reg.register("fraud", {"w": 1}, lineage={"data_version": "abc", "parent_version": parent},
                     params={"algorithm": "ridge"}, metrics={"test.roc_auc": 0.9}, gates=gates)
    reg.register("fraud", {"w": 2}, lineage={}, params={}, metrics={}, status="rejected",
                 gates=[{**gates[0], "value": 0.5, "passed": False}])
    return tmp_path / "registry"


def test_models_list_show_alias(registry):
    args = ["--registry", str(registry)]
    listed = runner.invoke(app, ["models", "list", *args])
    assert listed.exit_code == 0 and listed.output.count("fraud") == 3
    moved = runner.invoke(app, ["models", "alias", "fraud@2", "champion", *args])
    assert moved.exit_code == 0, moved.output
    assert "registered" in listed.output and "rejected" in listed.output and "candidate" not in listed.output
    shown = runner.invoke(app, ["models", "show", "fraud@champion", *args])
    assert shown.exit_code == 0 and "fraud@2" in shown.output and "data_version: abc" in shown.output
    assert "registered, alias champion" in shown.output and "selected ridge" in shown.output
    assert "compared with fraud@1 (registered): test.roc_auc 0.9000 -> 0.9000" in shown.output
    rejected = runner.invoke(app, ["models", "show", "fraud@3", *args])
    assert "rejected (failed test.roc_auc)" in rejected.output and "no alias" in rejected.output
    refused = runner.invoke(app, ["models", "alias", "fraud@3", "champion", *args])
    assert refused.exit_code == EXIT_USAGE and "rejected" in refused.output
    missing = runner.invoke(app, ["models", "show", "fraud@9", *args])
    assert missing.exit_code == EXIT_USAGE
