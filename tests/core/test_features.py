"""One fitted feature pipeline: types, derived features, dates, unseen categories, missing values."""

import numpy as np
import pandas as pd

from modelcycle.features import build_preprocessor, numeric_columns


def test_fits_on_train_and_transforms_raw_json_like_records(fraud_frame, spec):
    pre = build_preprocessor(spec).fit(fraud_frame)
    matrix = pre.transform(fraud_frame)
    assert matrix.shape[0] == len(fraud_frame)
    assert np.isfinite(matrix).all()
    # A request as JSON gives strings for numbers and dates, and may carry extra fields.
    record = fraud_frame.iloc[[0]].astype(str).assign(extra="ignored")
    np.testing.assert_allclose(pre.transform(record), matrix[[0]], rtol=1e-9)


def test_unseen_category_and_missing_values_are_not_fatal(fraud_frame, spec):
    pre = build_preprocessor(spec).fit(fraud_frame)
    odd = fraud_frame.head(3).copy()
    odd["merchant_category"] = "never_seen_before"
    odd["customer_age"] = np.nan
    odd["country"] = None
    out = pre.transform(odd)
    assert np.isfinite(out).all()


def test_derived_features_and_date_parts(fraud_frame, spec):
    pre = build_preprocessor(spec)
    frame = pre[:-1].fit_transform(fraud_frame.head(50))
    np.testing.assert_allclose(frame["log_amount"], np.log1p(fraud_frame.amount.head(50)))
    zero = fraud_frame.tx_last_24h.head(50) == 0
    assert frame.loc[zero, "amount_per_recent_tx"].isna().all()
    assert (frame["ts_hour"] == pd.to_datetime(fraud_frame.ts.head(50)).dt.hour).all()
    assert set(numeric_columns(spec)) <= set(frame.columns)
    assert "ts" not in frame.columns


def test_statistics_come_from_the_fitted_split_only(fraud_frame, spec):
    train, other = fraud_frame.iloc[:2000], fraud_frame.iloc[2000:].assign(amount=lambda d: d.amount * 100)
    pre = build_preprocessor(spec).fit(train)
    scaler = pre.named_steps["encode"].named_transformers_["numeric"].named_steps["scale"]
    refit = build_preprocessor(spec).fit(other)
    scaler2 = refit.named_steps["encode"].named_transformers_["numeric"].named_steps["scale"]
    assert abs(scaler.mean_[0] - train.amount.mean()) < 1e-6
    assert abs(scaler2.mean_[0] - scaler.mean_[0]) > 100
