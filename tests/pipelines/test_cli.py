"""The CLI's small commands: init, compile, data validate, models list/show/alias, exit codes."""

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
    for _ in range(2):
        reg.register("fraud", {"w": 1}, lineage={"data_version": "abc"}, params={"algorithm": "ridge"},
                     metrics={"test.roc_auc": 0.9}, gates=gates)
    reg.register("fraud", {"w": 2}, lineage={}, params={}, metrics={}, status="rejected",
                 gates=[{**gates[0], "value": 0.5, "passed": False}])
    return tmp_path / "registry"


def test_models_list_show_alias(registry):
    args = ["--registry", str(registry)]
    listed = runner.invoke(app, ["models", "list", *args])
    assert listed.exit_code == 0 and listed.output.count("fraud") == 3
    moved = runner.invoke(app, ["models", "alias", "fraud@2", "champion", *args])
    assert moved.exit_code == 0, moved.output
    shown = runner.invoke(app, ["models", "show", "fraud@champion", *args])
    assert shown.exit_code == 0 and "fraud@2" in shown.output and "data_version: abc" in shown.output
    refused = runner.invoke(app, ["models", "alias", "fraud@3", "champion", *args])
    assert refused.exit_code == EXIT_USAGE and "rejected" in refused.output
    missing = runner.invoke(app, ["models", "show", "fraud@9", *args])
    assert missing.exit_code == EXIT_USAGE
