"""The peer for bench/pipeline.py: the same fit, written as a plain scikit-learn script.

No modelcycle import: a data scientist's script that reads the Parquet file, makes the
same splits with the same seeds, builds an equivalent preprocessing pipeline, runs the
same random searches with the same cross-validation, refits each candidate's winner on
the training set and scores the best one on the test set.

    python bench/plain_sklearn.py data.parquet bench-spec.json
"""

import json
import sys
import time

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

started = time.perf_counter()
data_path, spec_path = sys.argv[1], sys.argv[2]
spec = json.load(open(spec_path))
df = pd.read_parquet(data_path)
seed = spec["split"]["seed"]

order = df["ts"].argsort(kind="stable")
cut = int(round(len(df) * (1 - spec["split"]["out_of_time_size"])))
df, oot = df.iloc[order[:cut]], df.iloc[order[cut:]]
rest, test = train_test_split(df, test_size=spec["split"]["test_size"], random_state=seed, stratify=df["is_fraud"])
train, val = train_test_split(rest, test_size=spec["split"]["validation_size"] / (1 - spec["split"]["test_size"]),
                              random_state=seed + 1, stratify=rest["is_fraud"])


def add_features(X):
    X = X.copy()
    for col in ["amount", "customer_age", "account_age_days", "tx_last_24h", "distance_from_home_km"]:
        X[col] = pd.to_numeric(X[col], errors="coerce")
    X["log_amount"] = np.log1p(X["amount"].clip(lower=0))
    X["amount_per_recent_tx"] = (X["amount"] / X["tx_last_24h"].where(X["tx_last_24h"] != 0)).replace([np.inf, -np.inf], np.nan)
    ts = pd.to_datetime(X.pop("ts"))
    for part in ("hour", "day_of_week", "day", "month"):
        X[f"ts_{part}"] = getattr(ts.dt, part).astype("float64")
    for col in ["channel", "merchant_category", "country"]:
        X[col] = X[col].astype(object).where(X[col].notna(), None)
    return X


numeric = ["amount", "customer_age", "account_age_days", "tx_last_24h", "distance_from_home_km", "log_amount",
           "amount_per_recent_tx", "ts_hour", "ts_day_of_week", "ts_day", "ts_month"]
categorical = ["channel", "merchant_category", "country"]
features = Pipeline([
    ("derive", FunctionTransformer(add_features)),
    ("encode", ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                              ("scale", StandardScaler())]), numeric),
        ("categorical", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                                  ("encode", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
                                                           max_categories=50, sparse_output=False))]), categorical),
    ], sparse_threshold=0.0)),
])
estimators = {
    "logistic_regression": lambda p: LogisticRegression(max_iter=2000, random_state=seed, **p),
    "random_forest": lambda p: RandomForestClassifier(n_jobs=1, random_state=seed, **p),
    "hist_gradient_boosting": lambda p: HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **p),
}


def space(cand):
    out = {}
    for name, s in cand.get("search_space", {}).items():
        if isinstance(s, list):
            out[f"model__{name}"] = s
        else:
            (kind, (lo, hi)), = s.items()
            out[f"model__{name}"] = stats.loguniform(lo, hi) if kind == "loguniform" else stats.uniform(lo, hi - lo)
    return out


max_rows = spec["training"]["search_max_rows"]
sample = train if len(train) <= max_rows else train_test_split(train, train_size=max_rows, random_state=seed,
                                                                 stratify=train["is_fraud"])[0]
cv = StratifiedKFold(spec["training"]["cv_folds"], shuffle=True, random_state=seed)
best_auc, best_name = -1.0, None
for cand in spec["training"]["candidates"]:
    pipe = Pipeline([("features", features), ("model", estimators[cand["algorithm"]](cand.get("params", {})))])
    search = RandomizedSearchCV(pipe, space(cand), n_iter=spec["training"]["search_iterations"], scoring="roc_auc",
                                cv=cv, refit=False, random_state=seed, n_jobs=-1, error_score="raise")
    search.fit(sample, sample["is_fraud"])
    pipe.set_params(**search.cv_results_["params"][search.best_index_])
    pipe.fit(train, train["is_fraud"])
    auc = roc_auc_score(val["is_fraud"], pipe.predict_proba(val)[:, 1])
    if auc > best_auc:
        best_auc, best_name, best = auc, cand["algorithm"], pipe
test_auc = roc_auc_score(test["is_fraud"], best.predict_proba(test)[:, 1])
print(json.dumps({"seconds": time.perf_counter() - started, "best": best_name, "test_roc_auc": test_auc}))
