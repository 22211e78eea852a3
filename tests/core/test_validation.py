"""Validation names the column, the check, the count and example rows."""

import numpy as np
import pandas as pd
import pytest
import yaml

from fraud_example import small_spec_dict
from modelcycle.data import DataError, DataStore, read_source
from modelcycle.lifecycle import SCHEMA_FILE, ingest_phase, validate_phase
from modelcycle.spec import DataSpec, load_spec
from modelcycle.validation import (
    DataSchema,
    DataValidationError,
    MissingRate,
    ValidationIssue,
    ValidationReport,
    infer_schema,
    validate,
)


def test_training_data_passes_its_own_schema(fraud_frame, spec):
    schema = infer_schema(fraud_frame, spec)
    report = validate(fraud_frame, schema, id_column="transaction_id")
    assert report.ok and not report.issues, report.summary()
    assert DataSchema.model_validate_json(schema.model_dump_json()) == schema


def test_errors_name_column_check_rows_and_values(fraud_frame, spec):
    schema = infer_schema(fraud_frame, spec)
    bad = fraud_frame.copy()
    bad["amount"] = bad["amount"].astype(object)
    bad.loc[7, "amount"] = "abc"
    bad.loc[[3, 4], "customer_age"] = [5.0, 300.0]
    bad.loc[10, "channel"] = "telepathy"
    bad.loc[11, "channel"] = None
    bad = bad.drop(columns=["tx_last_24h"])
    report = validate(bad, schema, id_column="transaction_id")
    assert not report.ok
    by_check = {(i.column, i.check.split("(")[0]): i for i in report.errors}
    assert set(by_check) >= {
        ("tx_last_24h", "required_column"), ("amount", "is_number"), ("customer_age", "greater_than_or_equal_to"),
        ("customer_age", "less_than_or_equal_to"), ("channel", "isin"), ("channel", "not_nullable"),
    }
    coerce = by_check[("amount", "is_number")]
    assert coerce.count == 1 and coerce.examples[0].row == 7 and coerce.examples[0].value == "abc"
    assert coerce.examples[0].id == fraud_frame.transaction_id[7]
    assert by_check[("channel", "isin")].examples[0].value == "telepathy"
    text = report.summary()
    assert "column 'tx_last_24h' is missing" in text
    assert "row 10" in text and "telepathy" in text


def test_drift_gives_warnings_not_errors(fraud_frame, spec, generate_fraud):
    schema = infer_schema(fraud_frame, spec)
    drifted = generate_fraud(2000, seed=3, drift=1.0)
    drifted.loc[drifted.index[:1500], "customer_age"] = np.nan
    report = validate(drifted, schema)
    assert report.ok, report.summary()
    checks = {(w.column, w.check.split("(")[0].split("<")[0]) for w in report.warnings}
    assert ("merchant_category", "seen_in_training") in checks
    assert ("customer_age", "missing_rate") in checks
    assert ("amount", "in_range") in checks


def test_serving_validation_ignores_the_target(fraud_frame, spec):
    schema = infer_schema(fraud_frame, spec)
    requests = fraud_frame.drop(columns=["is_fraud"]).head(5)
    assert validate(requests, schema, include_target=False).ok


#: The issue's dirty file: rows with a value that is not a number, with a merchant category
#: training never saw, and with `account_age_days` missing, which training never was.
NOT_NUMBERS = [3, 100, 200, 300, 400]
UNSEEN = list(range(10, 30))
MISSING = list(range(500, 1100, 10))


def dirty_transactions(generate_fraud, rows: int = 1500) -> pd.DataFrame:
    """New transactions with the issue's three problems: 5 non-numbers in `amount`, 20 rows of
    an unseen merchant category, 60 missing `account_age_days` (4%, where training had none)."""
    frame = generate_fraud(rows, seed=5)
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[NOT_NUMBERS, "amount"] = ["unknown", "twelve", "?", "1,5", "--"]
    frame.loc[UNSEEN, "merchant_category"] = "crypto_exchange"
    frame.loc[MISSING, "account_age_days"] = np.nan
    return frame


def by_check(report: ValidationReport) -> dict[tuple[str | None, str], ValidationIssue]:
    return {(i.column, i.check.split("(")[0]): i for i in report.issues}


def test_a_dirty_file_gets_one_report_naming_every_problem(tmp_path, fraud_frame, spec, generate_fraud):
    path = tmp_path / "new.csv"
    dirty_transactions(generate_fraud).to_csv(path, index=False)
    frame = read_source(DataSpec(source=str(path), target="is_fraud"))
    report = validate(frame, infer_schema(fraud_frame, spec), id_column="transaction_id")
    found = by_check(report)
    not_numbers = found[("amount", "is_number")]
    unseen = found[("merchant_category", "seen_in_training")]
    missing = found[("account_age_days", "missing_rate")]
    assert (not_numbers.severity, not_numbers.count) == ("error", 5)
    assert (unseen.severity, unseen.count) == ("warning", 20)
    assert (missing.severity, missing.count) == ("warning", 60)
    assert report.errors == [not_numbers]
    assert [(e.row, e.id, e.value) for e in not_numbers.examples] == [
        (3, "tx-5-00000003", "unknown"), (100, "tx-5-00000100", "twelve"), (200, "tx-5-00000200", "?")]
    assert [(e.row, e.id, e.value) for e in unseen.examples] == [(r, f"tx-5-{r:08d}", "crypto_exchange") for r in UNSEEN[:3]]
    assert [(e.row, e.id, e.value) for e in missing.examples] == [(r, f"tx-5-{r:08d}", None) for r in MISSING[:3]]
    assert "60 of 1,500 missing (4.0%) where training had 0.0%" in missing.detail
    # The column of the non-numbers is still checked, on its other values.
    assert ("amount", "greater_than_or_equal_to") not in found
    text = report.summary()
    assert "1 error(s)" in text and "rows are 0-based data rows" in text
    assert "column 'amount': check is_number failed on 5 rows" in text
    assert "column 'merchant_category'" in text and "failed on 20 rows" in text
    assert "column 'account_age_days'" in text and "failed on 60 rows" in text
    every_row = validate(frame, infer_schema(fraud_frame, spec), id_column="transaction_id", n_examples=100)
    assert [e.row for e in by_check(every_row)[("account_age_days", "missing_rate")].examples] == MISSING


def test_a_value_of_the_wrong_type_is_reported_once_and_its_column_still_checked(fraud_frame, spec):
    schema = infer_schema(fraud_frame, spec)
    bad = fraud_frame.head(500).copy()
    bad["customer_age"] = bad["customer_age"].astype(object)
    bad.loc[[1, 2], "customer_age"] = ["old", "n/a"]
    bad.loc[3, "customer_age"] = 5
    found = by_check(validate(bad, schema))
    assert found[("customer_age", "is_number")].count == 2
    assert [e.row for e in found[("customer_age", "greater_than_or_equal_to")].examples] == [3]
    assert not any(e.row in (1, 2) for i in found.values() if i.check != "is_number" for e in i.examples)


def test_four_percent_missing_where_training_had_none_is_reported(fraud_frame, spec, generate_fraud):
    schema = infer_schema(fraud_frame, spec)
    assert next(r for r in schema.columns if r.name == "account_age_days").observed_missing_rate == 0.0
    new = generate_fraud(1000, seed=8)
    new.loc[new.index[::25], "account_age_days"] = np.nan
    report = validate(new, schema, id_column="transaction_id")
    issue = by_check(report)[("account_age_days", "missing_rate")]
    assert issue.severity == "warning" and issue.count == 40
    assert issue.examples[1].row == 25 and issue.examples[1].id == new.transaction_id[25]


def test_missing_values_are_judged_against_the_training_rate_and_sample_size(fraud_frame, spec, generate_fraud):
    rng = np.random.default_rng(0)

    def test(missing: int, rows: int, rate: float, training_rows: int | None = 4000) -> bool:
        return MissingRate(missing=missing, rows=rows, training_rate=rate, training_rows=training_rows).excessive

    # Sampling noise around a nonzero training rate, and a few blanks where there were none, pass.
    assert not any(test(rng.binomial(2000, 0.10), 2000, 0.10) for _ in range(200))
    assert not any(test(rng.binomial(100_000, 0.10), 100_000, 0.10) for _ in range(200))
    assert not test(3, 1000, 0.0) and not test(1, 50, 0.0)
    # A real rise is reported, from 0% and from 10%, and the more rows the smaller the rise it takes.
    assert all(test(rng.binomial(2000, 0.18), 2000, 0.10) for _ in range(200))
    assert test(40, 1000, 0.0) and test(40, 1000, 0.0, training_rows=None)
    assert not test(14, 100, 0.10) and test(1400, 10_000, 0.10)
    # Through validation: fresh samples of the example's columns that miss values now and then.
    schema = infer_schema(fraud_frame, spec)
    for seed in range(1, 4):
        report = validate(generate_fraud(3000, seed=seed), schema)
        assert not [w for w in report.warnings if w.check.startswith("missing_rate")], report.summary()


def test_a_failed_version_is_kept_marked_invalid_and_skipped(tmp_path, fraud_frame, generate_fraud):
    spec_dict = small_spec_dict()
    spec_dict["data"]["source"] = "data/transactions.csv"
    (tmp_path / "data").mkdir()
    (tmp_path / "modelcycle.yaml").write_text(yaml.safe_dump(spec_dict))
    spec = load_spec(tmp_path / "modelcycle.yaml")
    source = tmp_path / "data" / "transactions.csv"
    store = DataStore(tmp_path / "store")
    fraud_frame.to_csv(source, index=False)
    good = ingest_phase(spec, store=store)
    validate_phase(spec, good, store=store)

    dirty_transactions(generate_fraud).to_csv(source, index=False)
    dirty = ingest_phase(spec, store=store)
    with pytest.raises(DataValidationError, match=f"data version {dirty.short_id} is kept but marked invalid") as failed:
        validate_phase(spec, dirty, store=store)
    report = failed.value.report
    assert {("amount", "is_number"), ("merchant_category", "seen_in_training"),
            ("account_age_days", "missing_rate")} <= set(by_check(report))
    lines = source.read_text().splitlines()
    assert report.lines_in == str(source) and f"lines are lines of {source}" in str(failed.value)
    for issue in report.issues:
        for e in issue.examples:
            assert e.line == e.row + 2 and lines[e.line - 1].startswith(f"{e.id},")
    assert ValidationReport.model_validate_json(store.invalid_report(dirty.id)) == report
    with pytest.raises(DataError, match="marked invalid"):
        store.load(dirty.id)
    assert len(store.load(good.id)) == len(fraud_frame)
    assert store.attachment(dirty.id, SCHEMA_FILE) is None

    # The next version is checked against the last one that passed, not against the failed one.
    newer = generate_fraud(1500, seed=6)
    newer.loc[:19, "merchant_category"] = "crypto_exchange"
    newer.to_csv(source, index=False)
    third = ingest_phase(spec, store=store)
    assert third.parent == dirty.id
    _, passed = validate_phase(spec, third, store=store)
    assert by_check(passed)[("merchant_category", "seen_in_training")].count == 20
    assert store.invalid_report(third.id) is None and store.attachment(third.id, SCHEMA_FILE)
