"""Features: one scikit-learn Pipeline, fitted once, that travels with the model.

`build_preprocessor(spec)` turns the spec's feature declarations into a single
Pipeline: coerce the raw columns to their declared types, compute the derived features,
expand dates into their parts, then impute, encode and scale. It is fitted on the
training split only, and becomes the first step of the model's own Pipeline, so the
artifact in the registry holds exactly the transforms training used, and serving
applies them to raw records without any code of its own.

A category never seen in training is not an error: the encoder maps it to the
"infrequent" bucket (or to all zeros when there is none). Missing values are imputed
and flagged with indicator columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from modelcycle.spec import DerivedFeature, ProjectSpec

DATE_PARTS = ("hour", "day_of_week", "day", "month")
MISSING_CATEGORY = "__missing__"


class CoerceTypes(TransformerMixin, BaseEstimator):
    """Select the declared input columns and give each its declared type.

    Requests arrive as JSON, where a number may be a string and a date is text; this
    step makes them look like the training frame. Unparseable numbers become NaN and are
    imputed downstream; the validation schema is where they are reported.
    """

    def __init__(self, numeric: list[str], categorical: list[str], datetime: list[str]):
        self.numeric = numeric
        self.categorical = categorical
        self.datetime = datetime

    def fit(self, X: pd.DataFrame, y=None) -> CoerceTypes:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in [*self.numeric, *self.categorical, *self.datetime] if c not in X.columns]
        if missing:
            raise KeyError(f"input is missing column(s) {', '.join(missing)}")
        out = {}
        for col in self.numeric:
            s = X[col]
            out[col] = s.astype("float64") if pd.api.types.is_numeric_dtype(s) else pd.to_numeric(s, errors="coerce")
        for col in self.categorical:
            s = X[col]
            values = s.astype(str).to_numpy(dtype=object)
            values[s.isna().to_numpy()] = None
            out[col] = values
        for col in self.datetime:
            s = X[col]
            out[col] = s if pd.api.types.is_datetime64_any_dtype(s) else pd.to_datetime(s, errors="coerce", utc=False)
        return pd.DataFrame(out, index=X.index)


class DerivedFeatures(TransformerMixin, BaseEstimator):
    """Add the spec's derived numeric features. Stateless, so it is safe before the split's fit."""

    def __init__(self, derived: list[dict]):
        self.derived = derived

    def fit(self, X: pd.DataFrame, y=None) -> DerivedFeatures:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        X = X.copy()
        for d in self.derived:
            cols = [X[c].astype("float64") for c in d["inputs"]]
            op = d["op"]
            with np.errstate(divide="ignore", invalid="ignore"):
                if op == "log1p":
                    value = np.log1p(cols[0].clip(lower=0))
                elif op == "abs":
                    value = cols[0].abs()
                elif op == "ratio":
                    value = cols[0] / cols[1].where(cols[1] != 0)
                elif op == "difference":
                    value = cols[0] - cols[1]
                elif op == "product":
                    value = cols[0]
                    for c in cols[1:]:
                        value = value * c
                elif op == "sum":
                    value = sum(cols[1:], cols[0])
                else:  # the spec's Literal makes this unreachable for a validated spec
                    raise ValueError(f"derived feature {d['name']!r}: unknown op {op!r}")
            X[d["name"]] = value.replace([np.inf, -np.inf], np.nan)
        return X


class DateParts(TransformerMixin, BaseEstimator):
    """Expand each datetime column into hour, day of week, day of month and month."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def fit(self, X: pd.DataFrame, y=None) -> DateParts:
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        X = X.copy()
        for col in self.columns:
            dt = pd.to_datetime(X.pop(col), errors="coerce")
            for part in DATE_PARTS:
                X[f"{col}_{part}"] = getattr(dt.dt, part).astype("float64")
        return X

    def get_feature_names_out(self, input_features=None):
        return np.asarray(input_features if input_features is not None else [], dtype=object)


def numeric_columns(spec: ProjectSpec) -> list[str]:
    """Every numeric column the encoder sees: declared, derived and date parts."""
    return (
        [f.name for f in spec.features.numeric]
        + [d.name for d in spec.features.derived]
        + [f"{c}_{p}" for c in spec.features.datetime for p in DATE_PARTS]
    )


def build_preprocessor(spec: ProjectSpec) -> Pipeline:
    """The unfitted feature pipeline for `spec`: raw frame in, numeric matrix out."""
    feats = spec.features
    categorical = [f.name for f in feats.categorical]
    numeric = numeric_columns(spec)
    steps: list[tuple[str, object]] = [
        ("coerce", CoerceTypes([f.name for f in feats.numeric], categorical, list(feats.datetime))),
        ("derive", DerivedFeatures([_as_dict(d) for d in feats.derived])),
        ("dates", DateParts(list(feats.datetime))),
    ]
    transformers = []
    if numeric:
        transformers.append((
            "numeric",
            Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                      ("scale", StandardScaler())]),
            numeric,
        ))
    if categorical:
        transformers.append((
            "categorical",
            Pipeline([
                ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                ("encode", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
                                         max_categories=50, sparse_output=False)),
            ]),
            categorical,
        ))
    steps.append(("encode", ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)))
    return Pipeline(steps)


def _as_dict(d: DerivedFeature) -> dict:
    return {"name": d.name, "op": d.op, "inputs": list(d.inputs)}
