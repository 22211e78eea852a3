"""`modelcycle shadow report` turns a gateway's prediction log into a verdict and an HTML page."""

from typer.testing import CliRunner

from modelcycle.cli import EXIT_REJECTED, EXIT_USAGE, app
from tests.monitoring.test_shadow_comparison import write_log

runner = CliRunner()


def test_promote_writes_report(tmp_path):
    write_log(tmp_path / "log", requests=600, disagreements=6)
    out = tmp_path / "shadow.html"
    result = runner.invoke(app, ["shadow", "report", str(tmp_path / "log"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "verdict promote" in result.output
    assert out.read_text().count("data:image/png;base64,") == 4


def test_reject_exits_3_and_says_why(tmp_path):
    write_log(tmp_path / "log", requests=600, disagreements=120)
    result = runner.invoke(app, ["shadow", "report", str(tmp_path / "log"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == EXIT_REJECTED
    assert "verdict reject" in result.output and "agreement" in result.output


def test_bad_policy_and_missing_log_are_usage_errors(tmp_path):
    result = runner.invoke(app, ["shadow", "report", str(tmp_path), "--min-agreement", "1.5"])
    assert result.exit_code == EXIT_USAGE and "--min-agreement" in result.output
    result = runner.invoke(app, ["shadow", "report", str(tmp_path / "absent")])
    assert result.exit_code == EXIT_USAGE and "no such prediction log folder" in result.output
