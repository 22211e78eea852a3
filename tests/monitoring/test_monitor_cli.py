"""`modelcycle monitor` gives a verdict, a JSON result and an HTML report, from a data file and
from a gateway's prediction log with feedback, with exit codes a CronJob can act on."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from typer.testing import CliRunner

from modelcycle.cli import EXIT_DRIFT, EXIT_PERFORMANCE, EXIT_USAGE, app
from tests.monitoring.conftest import write_traffic

runner = CliRunner()


def _monitor(monitored, tmp_path, *args: str):
    result = runner.invoke(app, ["monitor", "fraud@1", *args, "--registry", str(monitored.registry.uri),
                                 "--out", str(tmp_path / "report.html"), "--result", str(tmp_path / "result.json")])
    document = json.loads((tmp_path / "result.json").read_text()) if (tmp_path / "result.json").exists() else None
    return result, document


def _plots(path) -> int:
    page = path.read_text()
    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        assert base64.b64decode(data).startswith(b"\x89PNG")
    return page.count("data:image/png;base64,")


def test_data_like_training_is_ok(monitored, tmp_path, generate_fraud):
    generate_fraud(3000, seed=101).to_parquet(tmp_path / "new.parquet")
    result, document = _monitor(monitored, tmp_path, "--data", str(tmp_path / "new.parquet"))
    assert result.exit_code == 0, result.output
    assert "verdict ok" in result.output
    assert document["verdict"] == "ok" and document["drift"]["drifted_columns"] == []
    assert document["performance"]["metrics"][0]["metric"] == "roc_auc"
    assert document["performance"]["metrics"][0]["outcome"] != "fail"
    assert _plots(tmp_path / "report.html") == 9  # eight input columns and the model's score


def test_drifted_data_without_labels_exits_5_naming_the_columns(monitored, tmp_path, generate_fraud):
    drifted = generate_fraud(3000, seed=102, drift=1.0).drop(columns=["is_fraud"])
    drifted.to_csv(tmp_path / "new.csv", index=False)
    result, document = _monitor(monitored, tmp_path, "--data", str(tmp_path / "new.csv"))
    assert result.exit_code == EXIT_DRIFT, result.output
    assert document["verdict"] == "drift" and document["performance"] is None
    assert {"amount", "channel", "merchant_category"} <= set(document["drift"]["drifted_columns"])
    assert document["drift"]["prediction"]["drifted"]
    assert any("crypto_exchange" in w for w in document["warnings"])  # an unseen category


def test_a_spec_given_on_the_command_line_sets_the_thresholds(monitored, tmp_path, generate_fraud):
    import yaml

    from fraud_example import small_spec_dict

    generate_fraud(3000, seed=107, drift=1.0).drop(columns=["is_fraud"]).to_parquet(tmp_path / "new.parquet")
    _, document = _monitor(monitored, tmp_path, "--data", str(tmp_path / "new.parquet"))
    assert document["drift"]["drift_share_threshold"] == 0.5 and not document["drift"]["dataset_drift"]
    spec = {**small_spec_dict(), "monitoring": {"drift_share": 0.25, "columns": {"amount": {"threshold": 5.0}}}}
    (tmp_path / "modelcycle.yaml").write_text(yaml.safe_dump(spec))
    _, document = _monitor(monitored, tmp_path, "--data", str(tmp_path / "new.parquet"),
                           "--spec", str(tmp_path / "modelcycle.yaml"))
    assert document["drift"]["drift_share_threshold"] == 0.25 and document["drift"]["dataset_drift"]
    assert "amount" not in document["drift"]["drifted_columns"]  # its distance is far below 5


def test_drifted_labelled_data_that_breaches_the_goal_exits_6(monitored, tmp_path, generate_fraud):
    generate_fraud(4000, seed=103, drift=1.0).to_parquet(tmp_path / "new.parquet")
    result, document = _monitor(monitored, tmp_path, "--data", str(tmp_path / "new.parquet"))
    assert result.exit_code == EXIT_PERFORMANCE, result.output
    roc = document["performance"]["metrics"][0]
    assert roc["outcome"] == "fail" and roc["high"] < roc["threshold"] < roc["test_value"]


def test_the_prediction_log_with_feedback_gives_live_metrics(monitored, tmp_path, generate_fraud):
    now = time.time()
    write_traffic(tmp_path / "log", monitored.model, generate_fraud(600, seed=104, drift=1.0), ts=now - 3 * 86400)
    write_traffic(tmp_path / "log", monitored.model, generate_fraud(2500, seed=105), ts=now - 3600, labelled=0.8,
                  refused=7)
    result, document = _monitor(monitored, tmp_path, "--log-dir", str(tmp_path / "log"), "--window", "24h")
    assert result.exit_code == 0, result.output
    assert document["rows"] == 2500  # the drifted traffic of three days ago is outside the window
    assert document["quality"]["refused_requests"] == 7 and document["quality"]["requests"] == 2507
    assert document["performance"]["labelled_rows"] == 2000
    assert document["model"] == "fraud" and document["version"] == "1"
    assert _plots(tmp_path / "report.html") == 9

    result, document = _monitor(monitored, tmp_path, "--log-dir", str(tmp_path / "log"), "--window", "7d")
    assert document["rows"] == 3100 and document["drift"]["drifted_columns"]


def test_drifted_traffic_in_the_log_exits_5(monitored, tmp_path, generate_fraud):
    write_traffic(tmp_path / "log", monitored.model, generate_fraud(1500, seed=106, drift=1.0), ts=time.time() - 60,
                  labelled=0)
    result, document = _monitor(monitored, tmp_path, "--log-dir", str(tmp_path / "log"))
    assert result.exit_code == EXIT_DRIFT, result.output
    assert document["performance"] is None and "channel" in document["drift"]["drifted_columns"]


@pytest.mark.parametrize(("args", "message"), [
    ([], "give one of --data FILE or --log-dir DIR"),
    (["--log-dir", "absent"], "--log-dir: absent is not a prediction log folder"),
    (["--data", "absent.csv"], "--data"),
    (["--log-dir", ".", "--window", "soon"], "--window: expected a duration"),
])
def test_usage_errors_exit_2_and_say_what_is_wrong(monitored, tmp_path, args, message):
    result, _ = _monitor(monitored, tmp_path, *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.output


def test_a_version_without_a_profile_is_a_usage_error(monitored, tmp_path):
    monitored.registry.register("plain", monitored.model, lineage={}, params={}, metrics={})
    result = runner.invoke(app, ["monitor", "plain", "--data", "x.csv", "--registry", str(monitored.registry.uri)])
    assert result.exit_code == EXIT_USAGE and "has no reference profile" in result.output
