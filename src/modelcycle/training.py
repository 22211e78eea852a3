"""Training: candidate algorithms compete, each with its own hyperparameter search.

Splits are made once from the spec: an out-of-time set (the latest rows by the time
column), a held-out test set, a validation set (to choose the decision threshold) and the
training set.

Each candidate is a scikit-learn Pipeline (the feature pipeline, then the estimator),
searched with `RandomizedSearchCV` over the spec's search space with k-fold
cross-validation on the training set. Why scikit-learn's search and not Optuna: the search
spaces here are small (a handful of parameters, a few draws), random search is
embarrassingly parallel over the 2 cores and over Kubeflow pods, it needs no study storage
to be reproducible, and it adds no dependency. The search runs on a sample of at most
`search_max_rows` rows; every candidate draws the same sample and the same folds (both
follow the spec's seed), so their CV scores are comparable, and the candidates
are ranked on them (`evaluation.select_candidate`). Each candidate's best parameters are
refit on the whole training set; the selected one is refit once more, on training and
validation rows together (`refit`), before it is tested.

Every candidate's search is a tracked run (`CandidateRun`): the parameters, the CV
scores, the fit time and the artifact's path and sha256.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import KFold, RandomizedSearchCV, StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline

from modelcycle import artifacts
from modelcycle.features import build_preprocessor
from modelcycle.spec import Candidate, ProjectSpec


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    out_of_time: pd.DataFrame | None

    @property
    def development(self) -> pd.DataFrame:
        """Every row that is neither test nor out-of-time: what the selected model is refit on."""
        return pd.concat([self.train, self.validation])

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "out_of_time": 0 if self.out_of_time is None else len(self.out_of_time),
        }


def split_data(frame: pd.DataFrame, spec: ProjectSpec) -> Splits:
    """Out-of-time first (by the time column), then test and validation from the rest."""
    cfg = spec.split
    frame = frame.reset_index(drop=True)
    oot = None
    oot_size = cfg.out_of_time_size if cfg.strategy != "out_of_time" else max(cfg.out_of_time_size, cfg.test_size)
    if oot_size > 0:
        order = pd.to_datetime(frame[spec.data.time_column]).argsort(kind="stable")
        cut = int(round(len(frame) * (1 - oot_size)))
        frame, oot = frame.iloc[order[:cut]], frame.iloc[order[cut:]]
    stratify = cfg.strategy == "stratified"

    def _split(part: pd.DataFrame, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        y = part[spec.data.target] if stratify else None
        return train_test_split(part, test_size=size, random_state=seed, stratify=y)

    if cfg.strategy == "out_of_time":
        # The out-of-time set is the test set; validation is the latest slice before it.
        order = pd.to_datetime(frame[spec.data.time_column]).argsort(kind="stable")
        cut = int(round(len(frame) * (1 - cfg.validation_size)))
        train, validation = frame.iloc[order[:cut]], frame.iloc[order[cut:]]
        return Splits(train=train, validation=validation, test=oot, out_of_time=None)
    rest, test = _split(frame, cfg.test_size, cfg.seed)
    train, validation = _split(rest, cfg.validation_size / (1 - cfg.test_size), cfg.seed + 1)
    return Splits(train=train, validation=validation, test=test, out_of_time=oot)


_ESTIMATORS: dict[tuple[str, bool], type[BaseEstimator]] = {
    ("logistic_regression", True): LogisticRegression,
    ("linear_regression", False): LinearRegression,
    ("ridge", False): Ridge,
    ("random_forest", True): RandomForestClassifier,
    ("random_forest", False): RandomForestRegressor,
    ("hist_gradient_boosting", True): HistGradientBoostingClassifier,
    ("hist_gradient_boosting", False): HistGradientBoostingRegressor,
}
LINEAR_ALGORITHMS = frozenset({"logistic_regression", "linear_regression", "ridge"})
"""The simplest candidates: preferred when they score within noise of a tree ensemble."""
_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"max_iter": 2000},
    "random_forest": {"n_estimators": 200, "n_jobs": 1},
    "hist_gradient_boosting": {"early_stopping": False},
}


def make_estimator(algorithm: str, *, classification: bool, params: dict[str, Any], seed: int) -> BaseEstimator:
    cls = _ESTIMATORS[(algorithm, classification)]
    kwargs = {**_DEFAULTS.get(algorithm, {}), **params}
    if "random_state" in cls().get_params():
        kwargs.setdefault("random_state", seed)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"training: {algorithm}: bad parameter: {exc}") from None


def distributions(candidate: Candidate) -> dict[str, Any]:
    """The spec's search space as scipy distributions and lists, keyed for the Pipeline."""
    out: dict[str, Any] = {}
    for name, space in candidate.search_space.items():
        key = f"model__{name}"
        if isinstance(space, list):
            out[key] = space
        elif isinstance(space, dict) and len(space) == 1:
            (kind, bounds), = space.items()
            low, high = bounds
            if kind == "uniform":
                out[key] = stats.uniform(low, high - low)
            elif kind == "loguniform":
                out[key] = stats.loguniform(low, high)
            elif kind == "randint":
                out[key] = stats.randint(low, high + 1)
            else:
                raise ValueError(f"training.search_space.{name}: expected uniform, loguniform or randint, found {kind!r}")
        else:
            raise ValueError(f"training.search_space.{name}: expected a list or {{kind: [low, high]}}, found {space!r}")
    return out


SEARCH_SCORING = {
    "accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "f1",
    "roc_auc": "roc_auc", "pr_auc": "average_precision", "log_loss": "neg_log_loss",
    "brier": "neg_brier_score", "mse": "neg_mean_squared_error", "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error", "r2": "r2",
}
_MULTICLASS = {"precision": "precision_macro", "recall": "recall_macro", "f1": "f1_macro", "roc_auc": "roc_auc_ovr"}


def search_scoring(spec: ProjectSpec) -> str:
    metric = spec.goal.primary.metric
    if spec.task == "multiclass_classification" and metric in _MULTICLASS:
        return _MULTICLASS[metric]
    if spec.task == "multiclass_classification" and metric == "pr_auc":
        return "accuracy"
    return SEARCH_SCORING[metric]


def score_sign(scoring: str) -> float:
    """-1 for scikit-learn's negated scorers (`neg_...`): multiply to get the metric back."""
    return -1.0 if scoring.startswith("neg_") else 1.0


def cv_splitter(spec: ProjectSpec, folds: int | None = None) -> KFold | StratifiedKFold:
    """The spec's cross-validation folds, shuffled with its seed: the same for every candidate."""
    folds = spec.training.cv_folds if folds is None else folds
    seed = spec.split.seed
    if spec.is_classification:
        return StratifiedKFold(folds, shuffle=True, random_state=seed)
    return KFold(folds, shuffle=True, random_state=seed)


class TrainedModel:
    """A fitted Pipeline with what serving needs to answer: classes and the decision threshold."""

    def __init__(self, *, pipeline: Pipeline, task: str, target: str, classes: list[Any] | None,
                 input_columns: list[str], algorithm: str, params: dict[str, Any]):
        self.pipeline = pipeline
        self.task = task
        self.target = target
        self.classes = classes
        self.input_columns = input_columns
        self.algorithm = algorithm
        self.params = params
        self.threshold = 0.5
        #: The `DataSchema` of the training data, set at evaluation; serving validates requests with it.
        self.schema = None

    @property
    def positive_class(self) -> Any:
        return self.classes[-1] if self.task == "binary_classification" else None

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.task == "regression":
            return None
        return self.pipeline.predict_proba(frame)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            return self.pipeline.predict(frame)
        proba = self.pipeline.predict_proba(frame)
        return self.decide(proba)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        classes = np.asarray(self.classes)
        if self.task == "binary_classification":
            return np.where(proba[:, 1] >= self.threshold, classes[1], classes[0])
        return classes[proba.argmax(axis=1)]


class CandidateRun(BaseModel):
    """One tracked training run: a candidate's search and its refit winner."""

    algorithm: str
    params: dict[str, Any]
    cv_metric: str
    cv_mean: float
    cv_std: float
    cv_folds: int
    cv_results: list[dict[str, Any]]
    search_rows: int
    train_rows: int
    fit_seconds: float
    search_seconds: float
    artifact: str
    sha256: str
    size_bytes: int


def sample_rows(frame: pd.DataFrame, spec: ProjectSpec, n: int) -> pd.DataFrame:
    """At most `n` rows of `frame`, stratified by the target for classification, with the spec's seed."""
    if len(frame) <= n:
        return frame
    stratify = frame[spec.data.target] if spec.is_classification else None
    sample, _ = train_test_split(frame, train_size=n, random_state=spec.split.seed, stratify=stratify)
    return sample


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _pipeline(spec: ProjectSpec, algorithm: str, params: dict[str, Any]) -> Pipeline:
    return Pipeline([
        ("features", build_preprocessor(spec)),
        ("model", make_estimator(algorithm, classification=spec.is_classification, params=params, seed=spec.split.seed)),
    ])


def _trained(spec: ProjectSpec, pipeline: Pipeline, algorithm: str, params: dict[str, Any]) -> TrainedModel:
    return TrainedModel(
        pipeline=pipeline, task=spec.task, target=spec.data.target,
        classes=[_jsonable(c) for c in pipeline.classes_] if spec.is_classification else None,
        input_columns=spec.features.input_columns, algorithm=algorithm, params=params,
    )


def train_candidate(spec: ProjectSpec, candidate: Candidate, train: pd.DataFrame, *, artifact_path: str,
                    n_jobs: int | None = None) -> tuple[TrainedModel, CandidateRun]:
    """Search `candidate`'s space with CV on (a sample of) `train`, refit the winner on all of it.
    `n_jobs` overrides the spec's when the caller knows how many searches share the machine."""
    n_jobs = spec.training.n_jobs if n_jobs is None else n_jobs
    target = spec.data.target
    seed = spec.split.seed
    pipeline = _pipeline(spec, candidate.algorithm, candidate.params)
    space = distributions(candidate)
    sample = sample_rows(train, spec, spec.training.search_max_rows)
    cv = cv_splitter(spec)
    scoring = search_scoring(spec)
    started = time.perf_counter()
    if space:
        search = RandomizedSearchCV(
            pipeline, space, n_iter=spec.training.search_iterations, scoring=scoring, cv=cv, refit=False,
            random_state=seed, n_jobs=n_jobs, error_score="raise",
        )
        search.fit(sample, sample[target])
        results = search.cv_results_
        best = int(search.best_index_)
    else:  # nothing to search: cross-validate the fixed parameters
        scores = cross_val_score(pipeline, sample, sample[target], scoring=scoring, cv=cv, n_jobs=n_jobs)
        results = {"params": [{}], "mean_test_score": [scores.mean()], "std_test_score": [scores.std()]}
        best = 0
    search_seconds = time.perf_counter() - started
    best_params = {k.removeprefix("model__"): _jsonable(v) for k, v in results["params"][best].items()}
    params = {**candidate.params, **best_params}

    started = time.perf_counter()
    final = pipeline.set_params(**{f"model__{k}": v for k, v in best_params.items()})
    final.fit(train, train[target])
    fit_seconds = time.perf_counter() - started

    model = _trained(spec, final, candidate.algorithm, params)
    sha, size = artifacts.save(model, artifact_path)
    sign = score_sign(scoring)
    run = CandidateRun(
        algorithm=candidate.algorithm,
        params=params,
        cv_metric=spec.goal.primary.metric,
        cv_mean=float(sign * results["mean_test_score"][best]),
        cv_std=float(results["std_test_score"][best]),
        cv_folds=cv.get_n_splits(),
        cv_results=[
            {"params": {k.removeprefix("model__"): _jsonable(v) for k, v in p.items()},
             "mean": float(sign * m), "std": float(s)}
            for p, m, s in zip(results["params"], results["mean_test_score"], results["std_test_score"])
        ],
        search_rows=len(sample),
        train_rows=len(train),
        fit_seconds=fit_seconds,
        search_seconds=search_seconds,
        artifact=str(artifact_path),
        sha256=sha,
        size_bytes=size,
    )
    return model, run


def refit(spec: ProjectSpec, run: CandidateRun, frame: pd.DataFrame) -> TrainedModel:
    """`run`'s algorithm with the parameters its search chose, fitted afresh on `frame`."""
    pipeline = _pipeline(spec, run.algorithm, run.params)
    pipeline.fit(frame, frame[spec.data.target])
    return _trained(spec, pipeline, run.algorithm, run.params)
