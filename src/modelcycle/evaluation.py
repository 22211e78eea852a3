"""Evaluation: is the model good enough, cheap enough and fast enough to serve?

Candidates are compared on the validation set by the spec's primary metric; the winner
is then measured once on the held-out test set and, when the spec keeps one, on the
out-of-time set, which says how the model ages. For a binary task with a cost matrix the
decision threshold is the one with the lowest expected cost on the validation set, never
on the test set.

Gates compare the figures with the spec: the primary and secondary KPIs on the test set
(and the out-of-time set), the p95 predict latency of one row and the artifact's size
against the budget. A model that fails a gate is registered as `rejected`, with the
reasons. Permutation importance is computed on the raw input columns, which is what a
stakeholder can act on.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.inspection import permutation_importance

from modelcycle.spec import LOWER_IS_BETTER, Gate, MetricThreshold, ProjectSpec
from modelcycle.training import TrainedModel, search_scoring

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
    threshold: float | None
    threshold_costs: dict[str, list[float]] | None = None
    sets: dict[str, SetEvaluation]
    importance: dict[str, float]
    latency: Latency
    artifact_bytes: int
    gates: list[Gate]

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


def _gate(name: str, t: MetricThreshold, value: float | None) -> Gate:
    op, bound = (">=", t.min) if t.min is not None else ("<=", t.max)
    ok = value is not None and not np.isnan(value) and (value >= bound if op == ">=" else value <= bound)
    return Gate(name=name, metric=t.metric, op=op, threshold=float(bound), value=value, passed=bool(ok))


def gates(spec: ProjectSpec, sets: dict[str, SetEvaluation], latency: Latency, artifact_bytes: int) -> list[Gate]:
    """Every check of the spec's goal and budget, on the test set and the out-of-time set."""
    out: list[Gate] = []
    thresholds = [spec.goal.primary, *spec.goal.secondary]
    for set_name in ("test", "out_of_time"):
        if set_name not in sets:
            continue
        for t in thresholds:
            out.append(_gate(f"{set_name}.{t.metric}", t, sets[set_name].metrics.get(t.metric)))
    budget = spec.budget
    if budget.max_latency_ms_p95 is not None:
        out.append(Gate(name="budget.latency", metric="p95_ms_per_row", op="<=", threshold=budget.max_latency_ms_p95,
                        value=latency.p95_ms, passed=latency.p95_ms <= budget.max_latency_ms_p95))
    if budget.max_artifact_mb is not None:
        mb = artifact_bytes / 1e6
        out.append(Gate(name="budget.artifact", metric="artifact_mb", op="<=", threshold=budget.max_artifact_mb,
                        value=mb, passed=mb <= budget.max_artifact_mb))
    return out


def primary_score(spec: ProjectSpec, evaluation: SetEvaluation) -> float:
    """Higher is better, whatever the metric."""
    metric = spec.goal.primary.metric
    value = evaluation.metrics.get(metric, float("nan"))
    return -value if metric in LOWER_IS_BETTER else value


def evaluate_model(model: TrainedModel, spec: ProjectSpec, *, validation: pd.DataFrame, test: pd.DataFrame,
                   out_of_time: pd.DataFrame | None, artifact_bytes: int) -> Evaluation:
    """The full evaluation of the selected model: threshold, metrics, importance, budget and gates."""
    validation_proba = model.predict_proba(validation)
    threshold, costs = choose_threshold(model, validation, spec, proba=validation_proba)
    model.threshold = threshold
    sets = {"validation": evaluate_set(model, validation, proba=validation_proba), "test": evaluate_set(model, test)}
    if out_of_time is not None and len(out_of_time):
        sets["out_of_time"] = evaluate_set(model, out_of_time)
    latency = measure_latency(model, test)
    return Evaluation(
        algorithm=model.algorithm,
        threshold=threshold if model.task == "binary_classification" else None,
        threshold_costs=costs,
        sets=sets,
        importance=importance(model, test, spec),
        latency=latency,
        artifact_bytes=artifact_bytes,
        gates=gates(spec, sets, latency, artifact_bytes),
    )


def leaderboard(spec: ProjectSpec, models: dict[str, TrainedModel], validation: pd.DataFrame) -> list[dict[str, Any]]:
    """Candidates ranked by the primary metric on the validation set, best first."""
    rows = []
    for name, model in models.items():
        ev = evaluate_set(model, validation, curves=False)
        rows.append({"candidate": name, "algorithm": model.algorithm, "score": primary_score(spec, ev), **ev.metrics})
    return sorted(rows, key=lambda r: -np.nan_to_num(r["score"], nan=-np.inf))


