"""Validation names the column, the check, the count and example rows."""

import numpy as np

from modelcycle.validation import DataSchema, infer_schema, validate


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
        ("tx_last_24h", "required_column"), ("amount", "coerce_dtype"), ("customer_age", "greater_than_or_equal_to"),
        ("customer_age", "less_than_or_equal_to"), ("channel", "isin"), ("channel", "not_nullable"),
    }
    coerce = by_check[("amount", "coerce_dtype")]
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
