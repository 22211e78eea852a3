"""Evaluation: is the model good enough, cheap enough and fast enough to serve?

Candidates are compared on their cross-validation scores, which the search computed on
the same folds for every candidate, by the one-standard-error rule (`select_candidate`).
The selected candidate is refit on the training and validation rows together; it is then
measured once on the held-out test set and, when the spec keeps one, on the out-of-time
set, which says how the model ages. For a binary task with a cost matrix the decision
threshold is the one with the lowest expected cost on the validation set, predicted by the
same candidate fitted on the training rows only (the refit model has seen the validation
rows), never on the test set.

Gates compare the figures with the spec: the primary and secondary KPIs on the test set
(and the out-of-time set), the p95 predict latency of one row and the artifact's size
against the budget. Each gate says which key of the spec set its threshold, with the
spec's note on where that number came from. A model that fails a gate is kept in the
registry as `rejected`, with the reasons. Permutation importance is computed on the raw input columns,
which is what a stakeholder can act on.

A baseline (`measure_baseline`) says what a model must beat on a data set: a dummy model
and a plain linear one, cross-validated. `modelcycle init` proposes the primary gate from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.inspection import permutation_importance
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from modelcycle.features import build_preprocessor
from modelcycle.spec import LOWER_IS_BETTER, CandidateScore, Gate, MetricThreshold, ProjectSpec
from modelcycle.training import (
    LINEAR_ALGORITHMS,
    CandidateRun,
    TrainedModel,
    cv_splitter,
    make_estimator,
    sample_rows,
    score_sign,
    search_scoring,
)

CURVE_POINTS = 200


class Latency(BaseModel):
    p50_ms: float
    p95_ms: float
    batch_rows_per_s: float


class SetEvaluation(BaseModel):
    """The figures of one model on one data set."""

    rows: int
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] | None = None
    labels: list[str] | None = None
    roc: dict[str, list[float]] | None = None
    pr: dict[str, list[float]] | None = None
    calibration: dict[str, list[float]] | None = None
    residuals: dict[str, list[float]] | None = None


class Evaluation(BaseModel):
    algorithm: str
    params: dict = {}
    candidates: list[CandidateScore] = []
    """Every candidate's cross-validated score; the selected one is marked."""
    selection: str = ""
    """Why the selected candidate won, in words."""
    fit_rows: int | None = None
    """Rows the evaluated model was fitted on: training and validation."""
    threshold: float | None
    threshold_costs: dict[str, list[float]] | None = None
    sets: dict[str, SetEvaluation]
    importance: dict[str, float]
    latency: Latency
    artifact_bytes: int
    gates: list[Gate]
    profile: dict | None = None
    """The reference profile of the data the model was fitted on, with its test scores, as
    JSON (`modelcycle.monitoring.profiles.ReferenceProfile`): what drift checks compare with.
    Set by the evaluate phase; kept as JSON because monitoring comes after evaluation."""

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def _thin(*arrays: np.ndarray, n: int = CURVE_POINTS) -> list[list[float]]:
    idx = np.unique(np.linspace(0, len(arrays[0]) - 1, min(n, len(arrays[0]))).round().astype(int))
    return [np.nan_to_num(np.asarray(a, dtype=float)[idx], posinf=1.0, neginf=0.0).tolist() for a in arrays]


def evaluate_set(model: TrainedModel, frame: pd.DataFrame, *, curves: bool = True,
                 proba: np.ndarray | None = None) -> SetEvaluation:
    """Every metric of the task for `model` on `frame`, with the curves the report draws.
    Pass `proba` when it is already computed for `frame`: predicting is the costly part."""
    y = frame[model.target].to_numpy()
    if model.task == "regression":
        pred = model.predict(frame)
        mse = skm.mean_squared_error(y, pred)
        out = SetEvaluation(rows=len(frame), metrics={
            "mse": float(mse), "rmse": float(np.sqrt(mse)),
            "mae": float(skm.mean_absolute_error(y, pred)), "r2": float(skm.r2_score(y, pred)),
        })
        if curves:
            pred_t, resid = _thin(np.sort(pred), (y - pred)[np.argsort(pred)], n=500)
            out.residuals = {"predicted": pred_t, "residual": resid}
        return out
    proba = model.predict_proba(frame) if proba is None else proba
    pred = model.decide(proba)
    classes = np.asarray(model.classes)
    labels = [str(c) for c in classes]
    present = len(np.unique(y)) > 1
    if model.task == "binary_classification":
        pos = classes[1]
        score = proba[:, 1]
        y_bin = (y == pos).astype(int)
        m = {
            "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred, pos_label=pos, zero_division=0),
            "recall": skm.recall_score(y, pred, pos_label=pos, zero_division=0),
            "f1": skm.f1_score(y, pred, pos_label=pos, zero_division=0),
            "roc_auc": skm.roc_auc_score(y_bin, score) if present else float("nan"),
            "pr_auc": skm.average_precision_score(y_bin, score) if present else float("nan"),
            "log_loss": skm.log_loss(y_bin, score, labels=[0, 1]),
            "brier": skm.brier_score_loss(y_bin, score),
        }
    else:
        m = {
            "accuracy": skm.accuracy_score(y, pred),
            "precision": skm.precision_score(y, pred, average="macro", zero_division=0),
            "recall": skm.recall_score(y, pred, average="macro", zero_division=0),
            "f1": skm.f1_score(y, pred, average="macro", zero_division=0),
            "roc_auc": skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes) if present else float("nan"),
            "log_loss": skm.log_loss(y, proba, labels=classes),
        }
    out = SetEvaluation(
        rows=len(frame),
        metrics={k: float(v) for k, v in m.items()},
        confusion_matrix=skm.confusion_matrix(y, pred, labels=classes).tolist(),
        labels=labels,
    )
    if curves and model.task == "binary_classification" and present:
        fpr, tpr, thr = skm.roc_curve(y_bin, score)
        out.roc = dict(zip(["fpr", "tpr", "threshold"], _thin(fpr, tpr, thr)))
        precision, recall, thr = skm.precision_recall_curve(y_bin, score)
        out.pr = dict(zip(["precision", "recall", "threshold"], _thin(precision[:-1], recall[:-1], thr)))
        prob_true, prob_pred = calibration_curve(y_bin, score, n_bins=10, strategy="quantile")
        out.calibration = {"predicted": prob_pred.tolist(), "observed": prob_true.tolist()}
    return out


def choose_threshold(model: TrainedModel, frame: pd.DataFrame, spec: ProjectSpec, *,
                     proba: np.ndarray | None = None) -> tuple[float, dict[str, list[float]] | None]:
    """The decision threshold with the lowest expected cost on `frame` (0.5 without a cost matrix)."""
    cost = spec.goal.cost
    if spec.task != "binary_classification" or cost is None:
        return 0.5, None
    y = (frame[model.target].to_numpy() == model.classes[1]).astype(int)
    score = (model.predict_proba(frame) if proba is None else proba)[:, 1]
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), np.quantile(score, np.linspace(0, 1, 201))]))
    positives = y.sum()
    order = np.argsort(score)
    sorted_score, sorted_y = score[order], y[order]
    below = np.searchsorted(sorted_score, grid, side="left")  # rows predicted negative
    fn = np.concatenate([[0], np.cumsum(sorted_y)])[below]
    fp = (len(y) - below) - (positives - fn)
    expected = (cost.false_positive * fp + cost.false_negative * fn) / max(len(y), 1)
    best = int(np.argmin(expected))
    return float(grid[best]), {"threshold": grid.tolist(), "cost_per_row": expected.tolist()}


def measure_latency(model: TrainedModel, frame: pd.DataFrame, *, calls: int = 100, batch_rows: int = 5000) -> Latency:
    """p50/p95 of one-row predictions, and rows per second for a batch: what serving will see."""
    rows = frame[model.input_columns].head(calls)
    model.predict(rows.iloc[:1])  # warm up
    samples = []
    for i in range(min(calls, len(rows))):
        one = rows.iloc[i : i + 1]
        started = time.perf_counter()
        model.predict(one)
        samples.append((time.perf_counter() - started) * 1000)
    batch = frame[model.input_columns].head(batch_rows)
    started = time.perf_counter()
    model.predict(batch)
    elapsed = time.perf_counter() - started
    return Latency(
        p50_ms=float(np.percentile(samples, 50)),
        p95_ms=float(np.percentile(samples, 95)),
        batch_rows_per_s=float(len(batch) / max(elapsed, 1e-9)),
    )


def importance(model: TrainedModel, frame: pd.DataFrame, spec: ProjectSpec, *, max_rows: int = 3000) -> dict[str, float]:
    """Mean drop of the primary metric when one raw input column is shuffled."""
    sample = frame.sample(min(len(frame), max_rows), random_state=spec.split.seed)
    scoring = search_scoring(spec)
    if model.task == "binary_classification" and sample[model.target].nunique() < 2:
        return {}
    result = permutation_importance(
        model.pipeline, sample[model.input_columns], sample[model.target],
        scoring=scoring, n_repeats=3, random_state=spec.split.seed, n_jobs=1,
    )
    pairs = sorted(zip(model.input_columns, result.importances_mean), key=lambda p: -p[1])
    return {name: float(value) for name, value in pairs}


def _gate(name: str, t: MetricThreshold, value: float | None, *, key: str) -> Gate:
    op, bound = (">=", t.min) if t.min is not None else ("<=", t.max)
    ok = value is not None and not np.isnan(value) and (value >= bound if op == ">=" else value <= bound)
    source = f"{key}.{'min' if op == '>=' else 'max'}" + (f" ({t.note})" if t.note else " in the spec")
    return Gate(name=name, metric=t.metric, op=op, threshold=float(bound), value=value, passed=bool(ok), source=source)


def gates(spec: ProjectSpec, sets: dict[str, SetEvaluation], latency: Latency, artifact_bytes: int) -> list[Gate]:
    """Every check of the spec's goal and budget, on the test set and the out-of-time set."""
    out: list[Gate] = []
    thresholds = [("goal.primary", spec.goal.primary)] + [
        (f"goal.secondary[{i}]", t) for i, t in enumerate(spec.goal.secondary)]
    for set_name in ("test", "out_of_time"):
        if set_name not in sets:
            continue
        for key, t in thresholds:
            out.append(_gate(f"{set_name}.{t.metric}", t, sets[set_name].metrics.get(t.metric), key=key))
    budget = spec.budget
    if budget.max_latency_ms_p95 is not None:
        out.append(Gate(name="budget.latency", metric="p95_ms_per_row", op="<=", threshold=budget.max_latency_ms_p95,
                        value=latency.p95_ms, passed=latency.p95_ms <= budget.max_latency_ms_p95,
                        source="budget.max_latency_ms_p95 in the spec"))
    if budget.max_artifact_mb is not None:
        mb = artifact_bytes / 1e6
        out.append(Gate(name="budget.artifact", metric="artifact_mb", op="<=", threshold=budget.max_artifact_mb,
                        value=mb, passed=mb <= budget.max_artifact_mb, source="budget.max_artifact_mb in the spec"))
    return out


def evaluate_model(model: TrainedModel, spec: ProjectSpec, *, validation: pd.DataFrame, test: pd.DataFrame,
                   out_of_time: pd.DataFrame | None, artifact_bytes: int,
                   threshold_model: TrainedModel | None = None) -> Evaluation:
    """The full evaluation of the selected model: threshold, metrics, importance, budget and gates.

    `threshold_model` is the same candidate fitted without the validation rows, for when
    `model` was refit with them: its predictions on the validation rows choose the decision
    threshold and give the validation figures, since `model`'s would be in-sample. The
    threshold then carries over to `model`, whose test figures show what it does there."""
    held_out = model if threshold_model is None else threshold_model
    validation_proba = held_out.predict_proba(validation)
    threshold, costs = choose_threshold(held_out, validation, spec, proba=validation_proba)
    model.threshold = held_out.threshold = threshold
    sets = {"validation": evaluate_set(held_out, validation, proba=validation_proba), "test": evaluate_set(model, test)}
    if out_of_time is not None and len(out_of_time):
        sets["out_of_time"] = evaluate_set(model, out_of_time)
    latency = measure_latency(model, test)
    return Evaluation(
        algorithm=model.algorithm,
        params=model.params,
        threshold=threshold if model.task == "binary_classification" else None,
        threshold_costs=costs,
        sets=sets,
        importance=importance(model, test, spec),
        latency=latency,
        artifact_bytes=artifact_bytes,
        gates=gates(spec, sets, latency, artifact_bytes),
    )


def select_candidate(spec: ProjectSpec, runs: Sequence[CandidateRun]) -> tuple[int, list[CandidateScore], str]:
    """The winning run by the one-standard-error rule on the cross-validation scores.

    The best candidate has the best mean CV score. Its standard error (the fold scores'
    standard deviation over the square root of the number of folds) is how far apart two
    means can be from the folds' noise alone, so every candidate within one standard error
    of the best is as good as the data can tell. Among those a linear model is preferred
    to a tree ensemble: it is cheaper to serve and steadier when the data drifts. After
    that, the better mean wins. Every candidate was scored on the same sample and the same
    folds, so the means are comparable. The single validation split takes no part: its few
    thousand rows rank candidates more noisily than k folds over the training rows do.

    Returns the winner's index in `runs`, every candidate's score, and the rule as applied."""
    metric = spec.goal.primary.metric
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # goodness: higher is better

    def goodness(i: int) -> float:
        return sign * runs[i].cv_mean if math.isfinite(runs[i].cv_mean) else -math.inf

    scored = [i for i in range(len(runs)) if math.isfinite(goodness(i))]
    if not scored:
        raise ValueError(f"selection: none of the {len(runs)} candidate(s) has a finite cross-validated {metric}")
    best = max(scored, key=goodness)
    se = runs[best].cv_std / math.sqrt(max(runs[best].cv_folds, 1))
    near = [i for i in scored if goodness(i) >= goodness(best) - se]
    winner = max(near, key=lambda i: (runs[i].algorithm in LINEAR_ALGORITHMS, goodness(i)))

    def figure(run: CandidateRun) -> str:
        return f"{run.cv_mean:.4f} ± {run.cv_std:.4f}"

    b, w = runs[best], runs[winner]
    where = f"cross-validated {metric} ({b.cv_folds} folds of {b.search_rows:,} training rows)"
    if winner == best:
        why = f"{b.algorithm} has the best mean {where}: {figure(b)}."
        if others := [runs[i].algorithm for i in near if i != best]:
            why += f" Within one standard error ({se:.4f}) of it: {', '.join(others)}, none of them simpler."
    else:
        why = (f"{b.algorithm} has the best mean {where}: {figure(b)}; {w.algorithm} scores {figure(w)}, within "
               f"one standard error ({se:.4f}) of it, and is a linear model: simpler and cheaper to serve, and as good "
               "as the folds can tell, so it is selected.")
    scores = [
        CandidateScore(algorithm=r.algorithm, params=r.params, metric=metric, cv_mean=r.cv_mean, cv_std=r.cv_std,
                       cv_folds=r.cv_folds, cv_rows=r.search_rows, selected=i == winner)
        for i, r in enumerate(runs)
    ]
    return winner, scores, why


BASELINE_MAX_ROWS = 20_000
"""Rows the baseline cross-validates at most: enough for a stable figure, a few seconds to fit."""


class Baseline(BaseModel):
    """What a model must beat on a data set: a dummy model and a plain linear one, cross-validated
    with the spec's features and primary metric."""

    metric: str
    rows: int
    folds: int
    dummy: str
    dummy_mean: float
    dummy_std: float
    linear: str
    linear_mean: float
    linear_std: float

    @property
    def learns(self) -> bool:
        """Whether the linear model scores better than the dummy."""
        if self.metric in LOWER_IS_BETTER:
            return self.linear_mean < self.dummy_mean
        return self.linear_mean > self.dummy_mean

    @property
    def rule(self) -> str:
        """How `proposed_threshold` placed the bound, in words."""
        if self.learns:
            return "halfway from a dummy to a linear model"
        return "a dummy's score, since a linear model did no better"

    def proposed_threshold(self) -> MetricThreshold:
        """A primary gate halfway from the dummy's score to the linear model's.

        A model below it has learned less than half of what a plain linear model finds, which
        says that something is wrong; a model above it has learned something real. It is a floor
        that a sound model clears with a margin, not a target: the business sets that. The
        bound is rounded towards the dummy, to three decimals. When the linear model does no
        better than the dummy, the bound is the dummy's score."""
        lower = self.metric in LOWER_IS_BETTER
        bound = (self.dummy_mean + self.linear_mean) / 2 if self.learns else self.dummy_mean
        bound = math.ceil(bound * 1000) / 1000 if lower else math.floor(bound * 1000) / 1000
        how = f"{self.folds}-fold CV on {self.rows:,} rows"
        if self.learns:
            why = f"halfway from a dummy ({self.dummy_mean:.3f}) to {self.linear} ({self.linear_mean:.3f}), {how}"
        else:
            why = f"the score of a dummy ({self.dummy_mean:.3f}), {self.linear} did no better ({self.linear_mean:.3f}), {how}"
        # The note names the bound it explains, so that a bound edited later does not borrow its reason.
        note = f"{bound:g} proposed from a baseline: {why}"
        if lower:
            return MetricThreshold(metric=self.metric, max=bound, note=note)
        return MetricThreshold(metric=self.metric, min=bound, note=note)


def measure_baseline(spec: ProjectSpec, frame: pd.DataFrame, *, folds: int = 3,
                     max_rows: int = BASELINE_MAX_ROWS) -> Baseline:
    """Cross-validate a dummy (the class prior, or the mean) and a plain linear model
    (logistic regression, or ridge) on (a sample of) `frame`, with the spec's features and
    its primary metric. Raises ValueError when a fold gives no score."""
    sample = sample_rows(frame, spec, max_rows)
    target = spec.data.target
    scoring = search_scoring(spec)
    if spec.is_classification:
        dummy_name, dummy, linear_name = "dummy (class prior)", DummyClassifier(strategy="prior"), "logistic_regression"
    else:
        dummy_name, dummy, linear_name = "dummy (mean)", DummyRegressor(strategy="mean"), "ridge"
    linear = make_estimator(linear_name, classification=spec.is_classification, params={}, seed=spec.split.seed)
    figures = []
    for name, estimator in ((dummy_name, dummy), (linear_name, linear)):
        pipeline = Pipeline([("features", build_preprocessor(spec)), ("model", estimator)])
        scores = score_sign(scoring) * cross_val_score(pipeline, sample, sample[target], scoring=scoring,
                                                       cv=cv_splitter(spec, folds), n_jobs=1)
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"baseline: {name} has no {spec.goal.primary.metric} on some of the {folds} folds "
                             f"(found {scores.tolist()}); does every class of {target!r} have {folds} rows or more?")
        figures.append((float(scores.mean()), float(scores.std())))
    (dummy_mean, dummy_std), (linear_mean, linear_std) = figures
    return Baseline(metric=spec.goal.primary.metric, rows=len(sample), folds=folds, dummy=dummy_name,
                    dummy_mean=dummy_mean, dummy_std=dummy_std, linear=linear_name, linear_mean=linear_mean,
                    linear_std=linear_std)
