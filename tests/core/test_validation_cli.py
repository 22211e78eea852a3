"""A dirty file through the command line, as the issue's user met it: `modelcycle data validate`
prints every problem in one table, and `modelcycle run` stops with exit code 4, names every
problem, and leaves the data version marked invalid."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fraud_example import small_spec_dict
from modelcycle.cli import EXIT_INVALID_DATA
from modelcycle.data import DataError, DataStore
from modelcycle.lifecycle import ingest_phase, validate_phase
from modelcycle.spec import load_spec
from test_validation import MISSING, NOT_NUMBERS, UNSEEN, dirty_transactions

MODELCYCLE = str(Path(sys.executable).with_name("modelcycle"))


@pytest.fixture
def validated_project(tmp_path, fraud_frame) -> Path:
    """A project whose CSV source has one data version that passed validation."""
    spec = small_spec_dict()
    spec["data"]["source"] = "data/transactions.csv"
    (tmp_path / "data").mkdir()
    fraud_frame.to_csv(tmp_path / "data" / "transactions.csv", index=False)
    (tmp_path / "modelcycle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    project = load_spec(tmp_path / "modelcycle.yaml")
    store = DataStore(tmp_path / ".modelcycle" / "data")
    validate_phase(project, ingest_phase(project, store=store), store=store)
    return tmp_path


def _modelcycle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MODELCYCLE, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "250"})


def test_data_validate_prints_every_problem_in_one_table(validated_project, generate_fraud):
    dirty_transactions(generate_fraud).to_csv(validated_project / "new.csv", index=False)
    result = _modelcycle("data", "validate", "new.csv", "-s", "modelcycle.yaml", cwd=validated_project)
    assert result.returncode == EXIT_INVALID_DATA, result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 5 and cells[0]:
            rows[(cells[1], cells[2].split("(")[0])] = (cells[0], cells[3], cells[4])
    assert rows[("amount", "is_number")] == ("error", "5", "row 3 (line 5, id tx-5-00000003) = unknown")
    assert rows[("merchant_category", "seen_in_training")] == (
        "warning", "20", f"row {UNSEEN[0]} (line {UNSEEN[0] + 2}, id tx-5-{UNSEEN[0]:08d}) = crypto_exchange")
    assert rows[("account_age_days", "missing_rate")] == (
        "warning", "60", f"row {MISSING[0]} (line {MISSING[0] + 2}, id tx-5-{MISSING[0]:08d})")
    assert "rows are 0-based data rows" in result.stdout and "lines are lines of new.csv" in result.stdout
    assert "1 error(s)" in result.stdout and "against data version" in result.stdout

    as_json = _modelcycle("data", "validate", "new.csv", "-s", "modelcycle.yaml", "--json", "-n", "100",
                          cwd=validated_project)
    report = json.loads(as_json.stdout)
    issues = {(i["column"], i["check"].split("(")[0]): i for i in report["issues"]}
    assert [e["row"] for e in issues[("amount", "is_number")]["examples"]] == NOT_NUMBERS
    assert [e["line"] for e in issues[("account_age_days", "missing_rate")]["examples"]] == [r + 2 for r in MISSING]


@pytest.mark.slow
def test_run_on_a_dirty_file_exits_4_names_every_problem_and_marks_the_version_invalid(validated_project,
                                                                                        generate_fraud):
    dirty_transactions(generate_fraud).to_csv(validated_project / "data" / "transactions.csv", index=False)
    result = _modelcycle("run", "modelcycle.yaml", cwd=validated_project)
    assert result.returncode == EXIT_INVALID_DATA, result.stdout + result.stderr
    assert "✓ train" not in result.stdout
    err = result.stderr
    assert "1 error(s), 3 warning(s)" in err
    assert "column 'amount': check is_number failed on 5 rows" in err
    assert "column 'merchant_category': check seen_in_training" in err and "failed on 20 rows" in err
    assert "column 'account_age_days': check missing_rate" in err and "failed on 60 rows" in err
    assert "row 500 (line 502, id tx-5-00000500)" in err
    store = DataStore(validated_project / ".modelcycle" / "data")
    failed = store.versions()[-1]
    assert failed.rows == 1500 and f"data version {failed.short_id} is kept but marked invalid" in err
    assert json.loads(store.invalid_report(failed.id))["rows"] == 1500
    with pytest.raises(DataError, match="marked invalid"):
        store.load(failed.id)
    registry = validated_project / ".modelcycle" / "registry"
    assert not registry.exists() or not any(p.is_file() for p in registry.rglob("*") if ".lock" not in p.name)
